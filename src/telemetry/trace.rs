//! Request tracing. Every request has a W3C trace context: continued from its `traceparent`
//! header or started here, returned in the response's `traceparent`, logged as `trace_id` on the
//! request span, and written into every event the request causes, so a consumer continues the
//! same trace. When spans are exported (`otlp`), the ids are the exported spans' own, and the
//! chain is request → store → outbox; without an exporter the ids are made here.

use std::cell::Cell;
use std::fmt;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const HEADER: &str = "traceparent";

/// One position in a trace: the trace, the span that is the parent of whatever comes next, and
/// whether the trace is being recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    // Lower-case only, as the W3C format requires.
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    hex::decode_to_slice(s, out).ok()
}

impl TraceParent {
    /// `version-traceid-parentid-flags`. Version `ff` and all-zero ids are invalid; a later
    /// version may append fields, which are ignored.
    pub fn parse(s: &str) -> Option<TraceParent> {
        let s = s.trim();
        let mut parts = s.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let mut v = [0u8; 1];
        hex_into(version, &mut v)?;
        if v[0] == 0xff || (v[0] == 0 && parts.next().is_some()) {
            return None;
        }
        let mut tp = TraceParent { trace_id: [0; 16], span_id: [0; 8], sampled: false };
        let mut f = [0u8; 1];
        hex_into(trace, &mut tp.trace_id)?;
        hex_into(span, &mut tp.span_id)?;
        hex_into(flags, &mut f)?;
        tp.sampled = f[0] & 1 == 1;
        (tp.trace_id != [0; 16] && tp.span_id != [0; 8]).then_some(tp)
    }

    /// A new span under `parent`'s trace, or the root of a new sampled trace.
    pub fn child_of(parent: Option<TraceParent>) -> TraceParent {
        let mut span_id = [0u8; 8];
        while span_id == [0; 8] {
            span_id = rand::random();
        }
        match parent {
            Some(p) => TraceParent { span_id, ..p },
            None => {
                let mut trace_id = [0u8; 16];
                while trace_id == [0; 16] {
                    trace_id = rand::random();
                }
                TraceParent { trace_id, span_id, sampled: true }
            }
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    fn of_context(sc: &SpanContext) -> Option<TraceParent> {
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            sampled: sc.trace_flags().is_sampled(),
        })
    }

    /// The context of `span` as exported, when a span exporter is installed.
    pub fn of_span(span: &tracing::Span) -> Option<TraceParent> {
        Self::of_context(span.context().span().span_context())
    }

    /// As the parent of spans made here.
    pub fn remote_context(&self) -> opentelemetry::Context {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let sc = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(sc)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.span_id), u8::from(self.sampled))
    }
}

tokio::task_local! {
    /// The request span's context, for the work its task does.
    static REQUEST: TraceParent;
}

thread_local! {
    /// The same, for work a request handed to another thread (the SQLite writer).
    static HANDED_OVER: Cell<Option<TraceParent>> = const { Cell::new(None) };
}

/// Where the current work sits in its trace: the innermost exported span when spans are
/// exported, else the request's own context. What an event records as its `traceparent`.
pub fn current() -> Option<TraceParent> {
    TraceParent::of_span(&tracing::Span::current())
        .or_else(|| REQUEST.try_with(|t| *t).ok())
        .or_else(|| HANDED_OVER.with(Cell::get))
}

/// [`current`] in the W3C form, as an event records it.
pub fn current_header() -> Option<String> {
    current().map(|t| t.to_string())
}

/// Runs `f` on this thread as part of the request whose context is `tp`.
pub fn on_this_thread<T>(tp: Option<TraceParent>, f: impl FnOnce() -> T) -> T {
    let before = HANDED_OVER.with(|h| h.replace(tp));
    let out = f();
    HANDED_OVER.with(|h| h.set(before));
    out
}

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
    let mut resp = REQUEST.scope(here, next.run(req)).instrument(span.clone()).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_and_prints_the_w3c_form() {
        let tp = TraceParent::parse(SAMPLE).unwrap();
        assert!(tp.sampled);
        assert_eq!(tp.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.to_string(), SAMPLE);
        let unsampled = TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!unsampled.sampled);
        // A later version may carry more fields; version 00 may not.
        assert!(TraceParent::parse(&format!("01-{}-extra", &SAMPLE[3..])).is_some());
        assert!(TraceParent::parse(&format!("{SAMPLE}-extra")).is_none());
    }

    #[test]
    fn refuses_what_the_format_forbids() {
        for bad in [
            "garbage",
            "00-xyz-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let parent = TraceParent::parse(SAMPLE).unwrap();
        let child = TraceParent::child_of(Some(parent));
        assert_eq!((child.trace_id, child.sampled), (parent.trace_id, parent.sampled));
        assert_ne!(child.span_id, parent.span_id);
        let root = TraceParent::child_of(None);
        assert!(root.sampled && root.trace_id != parent.trace_id);
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }

    #[test]
    fn work_on_another_thread_sees_the_context_handed_to_it() {
        let tp = TraceParent::parse(SAMPLE).unwrap();
        assert_eq!(current(), None);
        assert_eq!(on_this_thread(Some(tp), current), Some(tp));
        assert_eq!(current(), None, "restored afterwards");
    }
}
