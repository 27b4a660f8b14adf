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
