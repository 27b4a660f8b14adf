//! The HTTP side of telemetry: RED metrics per route, `GET /metrics`, and the answers every
//! request may get from the edge (a deadline, an unknown route) in the API's format.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

/// RED metrics per route template (never the raw path, which would explode cardinality).
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let secs = started.elapsed().as_secs_f64();
    metrics::counter!("vitrina_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("vitrina_http_request_duration_seconds", "method" => method, "route" => route).record(secs);
    resp
}

/// Request ids made without the system's random source: one random prefix per process and a
/// counter (a UUID per request took a `getrandom` call on every request). Unique across a
/// fleet as long as two processes do not draw the same 64-bit prefix.
#[derive(Clone)]
pub struct RequestIds {
    prefix: [u8; 16],
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut prefix = [0u8; 16];
        let _ = hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut prefix);
        RequestIds { prefix, next: Default::default() }
    }
}

impl tower_http::request_id::MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<tower_http::request_id::RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [b'-'; 33];
        id[..16].copy_from_slice(&self.prefix);
        let _ = hex::encode_to_slice(n.to_be_bytes(), &mut id[17..]);
        axum::http::HeaderValue::from_bytes(&id).ok().map(tower_http::request_id::RequestId::new)
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics_text))
}

/// Prometheus metrics in text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// Bounds a request's time with an answer in the API's format. A write already handed to the
/// store may still commit after the 503; the order's idempotency key makes the retry safe.
pub async fn deadline(State(limit): State<std::time::Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            crate::http::error::ApiError::Unavailable(format!("request took longer than {} s", limit.as_secs())).into_response()
        }
    }
}

/// A 404 for unknown routes, in the API's problem format.
pub async fn not_found() -> Response {
    crate::http::error::ApiError::NotFound("route".into()).into_response()
}

#[cfg(test)]
mod tests {
    use tower_http::request_id::MakeRequestId;

    use super::RequestIds;

    #[test]
    fn request_ids_differ_and_carry_the_process_prefix() {
        let mut ids = RequestIds::default();
        let req = axum::http::Request::new(());
        let id = |ids: &mut RequestIds| ids.make_request_id(&req).unwrap().header_value().to_str().unwrap().to_owned();
        let (a, b) = (id(&mut ids), id(&mut ids));
        assert_ne!(a, b);
        assert_eq!((a.len(), &a[..17]), (33, &b[..17]));
    }
}
