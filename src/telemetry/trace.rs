//! Request tracing. Every request has a W3C trace context: continued from its `traceparent`
//! header or started here, returned in the response's `traceparent`, logged as `trace_id` on the
//! request span, and written into every event the request causes (`context`), so a consumer
//! continues the same trace. When spans are exported (`otlp`), the ids are the exported spans'
//! own, and the chain is request → store → outbox; without an exporter the ids are made here.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::context::{within_request, TraceParent};

pub const HEADER: &str = "traceparent";

/// The middleware that opens every request's span: continues the caller's trace, records the
/// route (never the raw path: paths carry names that are personal data), request id and trace
/// id for the logs, and answers with the request's `traceparent`.
pub async fn request(req: Request, next: Next) -> Response {
    let incoming = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().clone();
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        method = %method,
        route = %route,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    if let Some(parent) = incoming {
        let _ = span.set_parent(parent.remote_context());
    }
    let here = TraceParent::of_span(&span).unwrap_or_else(|| TraceParent::child_of(incoming));
    span.record("trace_id", tracing::field::display(here.trace_id_hex()));
    let started = Instant::now();
    let mut resp = within_request(here, next.run(req)).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if resp.status().is_server_error() {
        tracing::warn!(parent: &span, status, ms, "answered with a server error");
    } else {
        tracing::debug!(parent: &span, status, ms, "answered");
    }
    if let Ok(v) = HeaderValue::from_str(&here.to_string()) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}
