//! Request tracing. Every request has a W3C trace context: continued from its `traceparent`
//! header or started here, returned in the response's `traceparent`, logged as `trace_id` on the
//! request span, and written into every event the request causes (`context`), so a consumer
//! continues the same trace. When spans are exported (`otlp`), the ids are the exported spans'
//! own, and the chain is request → store → outbox; without an exporter the ids are made here.

use std::future::Future;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::context::{within_request, TraceParent};

pub const HEADER: &str = "traceparent";

/// A request's span (`http::edge`): continues the caller's trace, records the route (never the
/// raw path: paths carry names that are personal data), request id and trace id for the logs,
/// and answers with the request's `traceparent`.
pub struct RequestSpan {
    span: Span,
    here: TraceParent,
    recorded: bool,
    started: Instant,
}

impl RequestSpan {
    pub fn open(req: &Request) -> RequestSpan {
        let incoming = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
        let method = req.method();
        // Fields filled only when something records the span: formatting them is most of what an
        // unrecorded request would otherwise pay here.
        let span = tracing::info_span!(
            "request",
            otel.name = tracing::field::Empty,
            otel.kind = "server",
            method = %method,
            route = tracing::field::Empty,
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let recorded = !span.is_disabled();
        if recorded {
            let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
            let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            span.record("otel.name", tracing::field::display(format_args!("{method} {route}")));
            span.record("route", route);
            span.record("request_id", request_id);
            if let Some(parent) = incoming {
                let _ = span.set_parent(parent.remote_context());
            }
        }
        let here = TraceParent::of_span(&span).unwrap_or_else(|| TraceParent::child_of(incoming));
        if recorded {
            span.record("trace_id", tracing::field::display(here.trace_id_hex()));
        }
        RequestSpan { span, here, recorded, started: Instant::now() }
    }

    /// Runs the request's work inside its span and trace context.
    pub fn within<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        within_request(self.here, work).instrument(self.span.clone())
    }

    /// Records the answer, logs a server error, and stamps the response's `traceparent`.
    pub fn close(self, resp: &mut Response) {
        let status = resp.status().as_u16();
        if self.recorded {
            self.span.record("status", status);
        }
        if resp.status().is_server_error() {
            let ms = self.started.elapsed().as_secs_f64() * 1000.0;
            tracing::warn!(parent: &self.span, status, ms, "answered with a server error");
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            let ms = self.started.elapsed().as_secs_f64() * 1000.0;
            tracing::debug!(parent: &self.span, status, ms, "answered");
        }
        if let Ok(v) = HeaderValue::from_bytes(&self.here.header_bytes()) {
            resp.headers_mut().insert(HEADER, v);
        }
    }
}
