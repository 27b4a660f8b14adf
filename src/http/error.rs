//! The HTTP error of the shop API, mapped once to RFC 9457 `application/problem+json` with a
//! stable machine `code`. The seed API has its own FastAPI-shaped error in `collections`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;
use crate::validate::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(String),
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("insufficient stock")]
    InsufficientStock(Vec<String>),
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body did not arrive within the body-read timeout.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    #[error("unsupported media type: expected {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("{0}")]
    Unavailable(String),
    /// A shop or client over its quota: refused before any work, come back after `retry_after` s.
    #[error("{detail}")]
    TooManyRequests { code: &'static str, detail: String, retry_after: u64 },
    /// The instance or a shard is at capacity: refused before any work.
    #[error("{detail}")]
    Overloaded { code: &'static str, detail: String, retry_after: u64 },
    #[error("internal error")]
    Internal(String),
}

/// RFC 9457 problem details, plus `code` and optional specifics.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable reason, e.g. `insufficient_stock`.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// SKUs that could not be served, for `insufficient_stock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skus: Option<Vec<String>>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest { code, detail: detail.into() }
    }
    pub fn too_large(limit: usize) -> Self {
        ApiError::PayloadTooLarge(format!("request body larger than {limit} bytes"))
    }
    pub fn field(field: &str, message: &str) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::InsufficientStock(_) => (StatusCode::CONFLICT, "insufficient_stock"),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::UnsupportedMediaType { .. } => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            ApiError::Overloaded { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code) = self.parts();
        let detail = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            ApiError::InsufficientStock(skus) => format!("not enough stock for: {}", skus.join(", ")),
            other => other.to_string(),
        };
        let detail = bounded(detail);
        Problem {
            kind: format!("urn:vitrina:problem:{}", code.replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            errors: match self {
                ApiError::Validation(e) => Some(e.clone()),
                _ => None,
            },
            skus: match self {
                ApiError::InsufficientStock(s) => Some(s.clone()),
                _ => None,
            },
        }
    }
}

/// Details echo what the caller sent (an id, a name): a 10 kB id is not sent back whole.
const DETAIL_MAX: usize = 512;

fn bounded(mut detail: String) -> String {
    if detail.len() > DETAIL_MAX {
        let mut end = DETAIL_MAX;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let problem = self.problem();
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after, .. } | ApiError::Overloaded { retry_after, .. } => Some(*retry_after),
            ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a body that came too slowly is not worth waiting for on this connection.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => ApiError::NotFound(format!("{entity} {id}")),
            StoreError::Conflict { code, detail } => ApiError::Conflict { code, detail },
            StoreError::InsufficientStock { skus, .. } => ApiError::InsufficientStock(skus),
            StoreError::Invalid { code, detail } => ApiError::Unprocessable { code, detail },
            StoreError::Unavailable(m) | StoreError::Unreachable(m) => ApiError::Unavailable(m),
            StoreError::Backend(m) => ApiError::Internal(m),
            // Only reaches here if the router could not follow the move: the client may retry.
            StoreError::Moved { shard } => ApiError::Unavailable(format!("the shop moved to shard {shard}; retry")),
        }
    }
}

impl From<crate::cache::CacheError> for ApiError {
    fn from(e: crate::cache::CacheError) -> Self {
        match e {
            crate::cache::CacheError::Store(e) => e.into(),
            overloaded @ crate::cache::CacheError::Overloaded => ApiError::Unavailable(overloaded.to_string()),
        }
    }
}

impl From<Vec<FieldError>> for ApiError {
    fn from(e: Vec<FieldError>) -> Self {
        ApiError::Validation(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
