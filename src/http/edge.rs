//! What every request passes through before its route's handler, outermost first: its request
//! id, its trace span, RED metrics, the read-your-writes token, credentials, admission. One
//! service runs them as one future: a stack of middleware layers cloned its whole inner stack
//! at each layer of each request, and that was most of what a cheap answer cost.

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

/// The edge's own state, shared by every route's copy of the service.
pub struct Edge {
    state: AppState,
    guards: Guards,
    ids: RequestIds,
    red: RedMetrics,
}

impl Edge {
    pub fn layer(state: AppState, guards: Guards) -> EdgeLayer {
        EdgeLayer(Arc::new(Edge { state, guards, ids: RequestIds::default(), red: RedMetrics::default() }))
    }

    async fn pass<S>(&self, mut req: Request, route: S) -> Response
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
        let state = &self.state;
        let mut resp = telemetry::trace::request(req, |req| {
            telemetry::http::track(&self.red, req, |req| {
                super::consistency::track(req, |req| {
                    // Outside admission: a caller without valid credentials takes no place in its gates.
                    auth::gate(state, &self.guards, req, |req| {
                        admission::middleware::admit(&state.admission, state.store_slot_ref(), req, |req| async move {
                            match route.oneshot(req).await {
                                Ok(resp) => resp,
                                Err(never) => match never {},
                            }
                        })
                    })
                })
            })
        })
        .await;
        resp.headers_mut().insert(REQUEST_ID, id);
        resp
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
        let (edge, route) = (self.edge.clone(), self.route.clone());
        Box::pin(async move { Ok(edge.pass(req, route).await) })
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
