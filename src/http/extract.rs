//! Request extractors whose refusals speak the API's error format instead of axum's plain text.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::http::error::ApiError;

/// `Json<T>` whose refusals are problem documents: 400 malformed, 415 wrong type, 413 too
/// large, 422 well-formed but wrong shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let deadline = BodyDeadline::of(&req);
        match BodyDeadline::bound(deadline, axum::Json::<T>::from_request(req, state)).await? {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// When the body of a request must have arrived: the body-read timeout after its handler began.
/// A body that trickles in is answered 408 instead of holding a handler (and its admission
/// places) until the request deadline.
#[derive(Clone, Copy)]
pub struct BodyDeadline {
    at: Instant,
    limit: Duration,
}

impl BodyDeadline {
    /// The deadline of a body whose reading may begin now.
    pub fn after(limit: Duration) -> BodyDeadline {
        BodyDeadline { at: Instant::now() + limit, limit }
    }

    fn of(req: &Request) -> Option<BodyDeadline> {
        req.extensions().get::<BodyDeadline>().copied()
    }

    /// `read` (of a request's body) within `deadline`, when the request has one.
    async fn bound<T>(deadline: Option<BodyDeadline>, read: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
        match deadline {
            Some(d) => tokio::time::timeout_at(d.at, read).await.map_err(|_| ApiError::BodyTimeout(d.limit.as_secs())),
            None => Ok(read.await),
        }
    }
}

/// The raw body, read within the request's `BodyDeadline` and under its size limit.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<bytes::Bytes, ApiError> {
    let deadline = BodyDeadline::of(&req);
    BodyDeadline::bound(deadline, bytes::Bytes::from_request(req, state)).await?.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(e.body_text()),
        _ => ApiError::bad_request("unreadable_body", e.body_text()),
    })
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => ApiError::Unprocessable { code: "invalid_body", detail: e.body_text() },
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType { expected: "application/json" },
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(other.body_text()),
        other => ApiError::bad_request("unreadable_body", other.body_text()),
    }
}

/// `Query<T>` refusing bad parameters with a 400 problem.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::bad_request("invalid_query", e.body_text())),
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}
