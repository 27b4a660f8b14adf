//! Tracing: a request's W3C trace context is continued, returned, and written into the events
//! it causes; the spans it exports form the chain request → store → outbox.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use vitrina::telemetry::context::TraceParent;

use crate::events::feed_at_least;
use crate::helpers::{one_line, spawn, Shop, TestApp};

const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Spans of every app in this test process from the moment this is first called, exported to
/// memory through the same layer the binary exports to OTLP with.
fn exported() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
            let subscriber = tracing_subscriber::registry().with(vitrina::telemetry::otlp::layer(&provider));
            tracing::subscriber::set_global_default(subscriber).expect("no other test installs a global subscriber");
            (exporter, provider)
        })
        .0
}

async fn order_with(app: &TestApp, shop: &Shop, key: &str, traceparent: Option<&str>) -> reqwest::Response {
    let mut req = app
        .post(&format!("/shops/{}/orders", shop.id))
        .bearer_auth(&shop.key)
        .header("Idempotency-Key", key)
        .json(&one_line("MUG", 1));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 201);
    r
}

fn returned(r: &reqwest::Response) -> TraceParent {
    let header = r.headers().get("traceparent").expect("a traceparent on every answer").to_str().unwrap();
    TraceParent::parse(header).unwrap_or_else(|| panic!("not a W3C traceparent: {header}"))
}

/// The `traceparent` of each `vitrina.order.placed` event, in feed order.
async fn placed_events(app: &TestApp, shop: &Shop, want: usize) -> Vec<TraceParent> {
    let t0 = Instant::now();
    loop {
        let page = feed_at_least(app, shop, None, 100, want).await;
        let placed: Vec<TraceParent> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "vitrina.order.placed")
            .map(|e| TraceParent::parse(e["traceparent"].as_str().expect("every event has a traceparent")).unwrap())
            .collect();
        if placed.len() >= want || t0.elapsed() > Duration::from_secs(10) {
            return placed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_requests_trace_is_continued_answered_and_carried_by_its_events() {
    // The exporting subscriber is process-wide and installed by the first test that wants it;
    // installed in the middle of a request here, it made that request's later spans the roots
    // of a new trace. In place from the start, every request here is traced one way.
    exported();
    let app = spawn().await;
    let shop = app.shop_with_stock("traced", "MUG", 10).await;
    let sent = TraceParent::parse(SENT).unwrap();

    let continued = returned(&order_with(&app, &shop, "k1", Some(SENT)).await);
    assert_eq!(continued.trace_id, sent.trace_id, "the caller's trace goes on");
    assert_ne!(continued.span_id, sent.span_id, "under a span of our own");
    assert!(continued.sampled);

    // No context, or one that is not W3C: a trace starts here.
    let started = returned(&order_with(&app, &shop, "k2", None).await);
    let garbled = returned(&order_with(&app, &shop, "k3", Some("00-not-a-trace-01")).await);
    assert!(started.trace_id != sent.trace_id && garbled.trace_id != sent.trace_id && started.trace_id != garbled.trace_id);

    let events = placed_events(&app, &shop, 3).await;
    let traces: Vec<[u8; 16]> = events.iter().map(|e| e.trace_id).collect();
    assert_eq!(traces, vec![sent.trace_id, started.trace_id, garbled.trace_id], "each event is in its request's trace");
    app.stop().await.unwrap();
}

fn span_named<'a>(spans: &'a [SpanData], trace: &TraceParent, name: &str, parent: SpanId) -> Option<&'a SpanData> {
    spans.iter().find(|s| {
        s.span_context.trace_id().to_bytes() == trace.trace_id && s.name.starts_with(name) && s.parent_span_id == parent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_chain_the_request_its_store_call_and_the_event_it_wrote() {
    let exporter = exported();
    let app = spawn().await;
    let shop = app.shop_with_stock("spans", "MUG", 10).await;
    // A trace of this test's own: every app in the process exports into the same memory.
    let sent = TraceParent::child_of(None);
    let answered = returned(&order_with(&app, &shop, "k1", Some(&sent.to_string())).await);
    let event = placed_events(&app, &shop, 1).await[0];

    // The request span ends just after its answer is written; wait for the whole chain.
    let t0 = Instant::now();
    let (request, store, outbox) = loop {
        let spans = exporter.get_finished_spans().unwrap();
        let request = span_named(&spans, &sent, "POST /shops/{shop}/orders", SpanId::from_bytes(sent.span_id));
        let store = request.and_then(|r| span_named(&spans, &sent, "store place_order", r.span_context.span_id()));
        let outbox = store.and_then(|s| span_named(&spans, &sent, "outbox vitrina.order.placed", s.span_context.span_id()));
        if let (Some(r), Some(s), Some(o)) = (request, store, outbox) {
            break (r.clone(), s.clone(), o.clone());
        }
        let names: Vec<String> = spans
            .iter()
            .filter(|s| s.span_context.trace_id().to_bytes() == sent.trace_id)
            .map(|s| format!("{} (parent {})", s.name, s.parent_span_id))
            .collect();
        assert!(t0.elapsed() < Duration::from_secs(10), "no request → store → outbox chain among {names:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(request.span_context.span_id().to_bytes(), answered.span_id, "the answer names the request's span");
    let attribute =
        |s: &SpanData, key: &str| s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string());
    assert_eq!(
        attribute(&store, "shard").as_deref(),
        Some(app.state.store().shard_of(&vitrina::shops::ShopId::parse("spans").unwrap()).as_str())
    );
    assert_eq!(attribute(&request, "route").as_deref(), Some("/shops/{shop}/orders"));
    // A consumer of the event continues under the span that wrote it.
    assert_eq!((event.trace_id, event.span_id), (sent.trace_id, outbox.span_context.span_id().to_bytes()));
    app.stop().await.unwrap();
}
