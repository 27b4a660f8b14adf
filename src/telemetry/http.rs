//! The HTTP side of telemetry: RED metrics per route, `GET /metrics`, and the answers every
//! request may get from the edge (a deadline, an unknown route) in the API's format.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

/// RED metrics per route template (never the raw path, which would explode cardinality), with
/// each series' handle resolved once: registering by labels hashed and allocated them per request.
#[derive(Default)]
pub struct RedMetrics(RwLock<HashMap<Box<str>, Vec<RouteSeries>>>);

/// One route and method's series.
struct RouteSeries {
    method: Method,
    duration: Histogram,
    /// Few statuses per route; a scan beats hashing.
    requests: Vec<(u16, Counter)>,
}

impl RedMetrics {
    /// Counts a request answered `status` after `secs`.
    pub fn record(&self, method: &Method, route: &str, status: u16, secs: f64) {
        {
            let routes = self.0.read().unwrap_or_else(|p| p.into_inner());
            if let Some(series) = routes.get(route).and_then(|s| s.iter().find(|s| s.method == *method)) {
                if let Some((_, counter)) = series.requests.iter().find(|(code, _)| *code == status) {
                    counter.increment(1);
                    series.duration.record(secs);
                    return;
                }
            }
        }
        let mut routes = self.0.write().unwrap_or_else(|p| p.into_inner());
        let per_method = routes.entry(route.into()).or_default();
        let at = match per_method.iter().position(|s| s.method == *method) {
            Some(at) => at,
            None => {
                let duration = metrics::histogram!("vitrina_http_request_duration_seconds",
                    "method" => method.as_str().to_owned(), "route" => route.to_owned());
                per_method.push(RouteSeries { method: method.clone(), duration, requests: Vec::new() });
                per_method.len() - 1
            }
        };
        let series = &mut per_method[at];
        let counter = match series.requests.iter().find(|(code, _)| *code == status) {
            Some((_, counter)) => counter.clone(),
            None => {
                let counter = metrics::counter!("vitrina_http_requests_total",
                    "method" => method.as_str().to_owned(), "route" => route.to_owned(), "status" => status.to_string());
                series.requests.push((status, counter.clone()));
                counter
            }
        };
        counter.increment(1);
        series.duration.record(secs);
    }
}

/// A request's RED timing (`http::edge`), recorded when it is answered.
pub struct Timing {
    method: Method,
    route: Option<MatchedPath>,
    started: Instant,
}

impl Timing {
    pub fn start(req: &Request) -> Timing {
        Timing { method: req.method().clone(), route: req.extensions().get::<MatchedPath>().cloned(), started: Instant::now() }
    }

    pub fn record(self, red: &RedMetrics, resp: &Response) {
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        red.record(&self.method, route, resp.status().as_u16(), self.started.elapsed().as_secs_f64());
    }
}

/// Request ids made without the system's random source: one random prefix per process and a
/// counter (a UUID per request took a `getrandom` call on every request). Unique across a
/// fleet as long as two processes do not draw the same 64-bit prefix.
pub struct RequestIds {
    prefix: [u8; 16],
    next: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut prefix = [0u8; 16];
        let _ = hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut prefix);
        RequestIds { prefix, next: Default::default() }
    }
}

impl RequestIds {
    pub fn next(&self) -> axum::http::HeaderValue {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [b'-'; 33];
        id[..16].copy_from_slice(&self.prefix);
        let _ = hex::encode_to_slice(n.to_be_bytes(), &mut id[17..]);
        axum::http::HeaderValue::from_bytes(&id).expect("hex digits and a dash are a header value")
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

/// A 404 for unknown routes, in the API's problem format.
pub async fn not_found() -> Response {
    crate::http::error::ApiError::NotFound("route".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::RequestIds;

    #[test]
    fn request_ids_differ_and_carry_the_process_prefix() {
        let ids = RequestIds::default();
        let id = |ids: &RequestIds| ids.next().to_str().unwrap().to_owned();
        let (a, b) = (id(&ids), id(&ids));
        assert_ne!(a, b);
        assert_eq!((a.len(), &a[..17]), (33, &b[..17]));
    }
}
