//! Where the current work sits in its W3C trace: the request's context, kept for the task that
//! serves it and handed to the thread that runs its store write, so every event a request causes
//! records the request's `traceparent`. The store reads it; the HTTP middleware (`trace`) sets it.

use std::cell::Cell;
use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

    /// The W3C form without a heap string: what every response's `traceparent` header carries.
    pub fn header_bytes(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // Infallible: the slices are exactly twice the bytes' length.
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        let _ = hex::encode_to_slice(self.span_id, &mut out[36..52]);
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
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

/// Runs `fut` as the work of the request whose context is `tp`.
///
/// Not an `async fn`: that would keep `fut` twice in its state (as the argument and inside the
/// scope), and every request's future passes through here.
pub fn within_request<F: std::future::Future>(tp: TraceParent, fut: F) -> impl std::future::Future<Output = F::Output> {
    REQUEST.scope(tp, fut)
}

/// Runs `f` on this thread as part of the request whose context is `tp`.
pub fn on_this_thread<T>(tp: Option<TraceParent>, f: impl FnOnce() -> T) -> T {
    let before = HANDED_OVER.with(|h| h.replace(tp));
    let out = f();
    HANDED_OVER.with(|h| h.set(before));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_bytes_are_the_w3c_form() {
        for tp in [TraceParent::child_of(None), TraceParent { sampled: false, ..TraceParent::child_of(None) }] {
            assert_eq!(std::str::from_utf8(&tp.header_bytes()).unwrap(), tp.to_string());
        }
    }

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
