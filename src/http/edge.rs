//! What every request passes through before its route's handler, in order: its request id, its
//! trace span, RED metrics, the read-your-writes token, credentials, admission. One service runs
//! them as one flat future: a stack of middleware layers cloned its whole inner stack at each
//! layer of each request, and nested futures were copied into each other level by level: the
//! largest part of what vitrina added to a cheap answer (docs/benchmarks.md, "The request path").

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service, ServiceExt};

use super::auth::{self, Guards};
use super::error::ApiError;
use super::extract::BodyDeadline;
use crate::state::AppState;
use crate::telemetry::http::{RedMetrics, RequestIds};
use crate::{admission, telemetry};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The unit (seed 001's deployment of a region) that served the request, on every answer.
pub const UNIT: HeaderName = HeaderName::from_static("vitrina-unit");

/// The unit's header value (checked to be a token at configuration time).
pub fn unit_value(config: &crate::config::Config) -> anyhow::Result<axum::http::HeaderValue> {
    Ok(axum::http::HeaderValue::from_str(&config.unit.id)?)
}

/// The edge's own state, shared by every route's copy of the service.
pub struct Edge {
    /// `vitrina-unit`, on every answer.
    unit: axum::http::HeaderValue,
    state: AppState,
    guards: Guards,
    ids: RequestIds,
    red: RedMetrics,
}

impl Edge {
    pub fn layer(state: AppState, guards: Guards) -> EdgeLayer {
        let unit = unit_value(&state.config).expect("unit.id is checked to be a header token");
        EdgeLayer(Arc::new(Edge { unit, state, guards, ids: RequestIds::default(), red: RedMetrics::default() }))
    }

    async fn pass<S>(self: Arc<Self>, mut req: Request, route: S) -> Result<Response, Infallible>
    where
        S: Service<Request, Response = Response, Error = Infallible>,
    {
        // A caller's own request id is kept; otherwise one is made.
        let id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = telemetry::trace::RequestSpan::open(&req);
        let timing = telemetry::http::Timing::start(&req);
        let token = super::consistency::Token::of(&req);
        let state = &self.state;
        let mut resp = span
            .within(token.serving(async {
                // Outside admission: a caller without valid credentials takes no place in its gates.
                let req = match auth::gate(state, &self.guards, req).await {
                    Ok(req) => req,
                    Err(refused) => return refused,
                };
                let admitted = match admission::middleware::admit(&state.admission, state.store_slot_ref(), &req).await {
                    Ok(admitted) => admitted,
                    Err(refused) => return refused,
                };
                let Ok(mut resp) = route.oneshot(req).await;
                admitted.answer(&mut resp);
                resp
            }))
            .await;
        token.stamp(&mut resp);
        timing.record(&self.red, &resp);
        span.close(&mut resp);
        resp.headers_mut().insert(REQUEST_ID, id);
        resp.headers_mut().insert(UNIT, self.unit.clone());
        Ok(resp)
    }
}

#[derive(Clone)]
pub struct EdgeLayer(Arc<Edge>);

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, route: S) -> EdgeService<S> {
        EdgeService { edge: self.0.clone(), route }
    }
}

/// The edge in front of one route.
#[derive(Clone)]
pub struct EdgeService<S> {
    edge: Arc<Edge>,
    route: S,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the route's, checked by `oneshot` when the request reaches it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(self.edge.clone().pass(req, self.route.clone()))
    }
}

/// How long a bounded route's request may take, and its body may take to arrive.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub request: Duration,
    pub body: Duration,
}

/// Bounds a request's time with an answer in the API's format, and stamps its `BodyDeadline`.
/// A write already handed to the store may still commit after the 503; the order's
/// idempotency key makes the retry safe.
pub async fn bounded(State(bounds): State<Bounds>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(BodyDeadline::after(bounds.body));
    match tokio::time::timeout(bounds.request, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Unavailable(format!("request took longer than {} s", bounds.request.as_secs())).into_response(),
    }
}
