//! Relay into NATS JetStream, side by side with a plain JetStream publish loop of the same
//! payloads, in one run. `VITRINA_BENCH_NATS_URL` (default nats://127.0.0.1:4222).
//!
//! 1. Throughput: a backlog of events in the embedded store's outbox, drained by the relay
//!    (claim, publish with acks, move the cursor) vs the same envelopes published in the same
//!    batch size by a bare loop.
//! 2. End-to-end lag at a steady write rate: commit → a consumer receives it, p50/p99, vs a bare
//!    loop publishing at the same rate (publish → receive).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use vitrina::config::Config;
use vitrina::events::config::{SinkConfig, SinkKind};
use vitrina::events::relay::{Relay, RelayStatus};
use vitrina::shops::{NewShop, ShopId};

const BACKLOG: usize = 20_000;
const RATE: u64 = 1000;
const STEADY_SECS: u64 = 5;

fn nats_url() -> String {
    std::env::var("VITRINA_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn config(dir: &std::path::Path, stream: &str) -> Config {
    let mut c = Config { data_dir: dir.to_owned(), seed_on_start: false, ..Config::default() };
    c.events.poll_ms = 5;
    c.events.sinks = vec![SinkConfig {
        kind: SinkKind::Nats,
        url: nats_url(),
        name: None,
        stream: Some(stream.into()),
        subject: Some(format!("{}.events", stream.to_lowercase())),
        secret: None,
    }];
    c
}

async fn stream_len(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn create_shop(store: &dyn vitrina::store::Store) -> ShopId {
    let id = ShopId::parse("bench").unwrap();
    store
        .create_shop(NewShop {
            id: id.clone(),
            name: "Bench".into(),
            currency: vitrina::money::Currency::parse("USD").unwrap(),
            api_key_hash: [0; 32],
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    for i in 0..500 {
        let input = vitrina::catalog::ProductInput {
            sku: format!("SKU-{i}"),
            name: "Widget".into(),
            category: "c".into(),
            price: vitrina::money::Money { amount: 999, currency: vitrina::money::Currency::parse("USD").unwrap() },
            attributes: serde_json::json!({}),
        };
        store.upsert_product(&id, input, Utc::now()).await.unwrap();
    }
    id
}

/// Events/s: the relay draining a backlog, then a bare loop publishing the same envelopes.
async fn throughput(js: &async_nats::jetstream::Context) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("B{}", uuid::Uuid::now_v7().simple());
    let mut cfg = config(dir.path(), &tag);
    let store = vitrina::store::open(&cfg).await.unwrap();
    let shop = create_shop(store.as_ref()).await;
    let writes: Vec<_> = (0..64)
        .map(|w| {
            let (store, shop) = (store.clone(), shop.clone());
            tokio::spawn(async move {
                for i in (w..BACKLOG - 501).step_by(64) {
                    store.set_stock(&shop, &format!("SKU-{}", i % 500), i as i64, Utc::now()).await.unwrap();
                }
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    let outbox = store.clone().outboxes().pop().unwrap();
    let events = outbox.read(None, BACKLOG * 2).await.unwrap();
    let total = events.len() as u64;

    cfg.events.batch = 256;
    let relay = Arc::new(Relay::new(&cfg.events, Arc::new(RelayStatus::default())).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let running = tokio::spawn(relay.run(store.clone().outboxes(), stop_rx));
    while stream_len(js, &tag).await < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relay_rate = total as f64 / t0.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    running.await.unwrap();
    js.delete_stream(&tag).await.unwrap();

    let reference = format!("R{}", uuid::Uuid::now_v7().simple());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: reference.clone(),
        subjects: vec![format!("{}.>", reference.to_lowercase())],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let subject = format!("{}.events.bench.stock.changed", reference.to_lowercase());
    let t0 = Instant::now();
    for batch in events.chunks(256) {
        let mut acks = Vec::with_capacity(batch.len());
        for e in batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.id.as_str());
            acks.push(js.publish_with_headers(subject.clone(), headers, e.envelope.clone().into()).await.unwrap());
        }
        for a in acks {
            a.await.unwrap();
        }
    }
    let plain_rate = total as f64 / t0.elapsed().as_secs_f64();
    js.delete_stream(&reference).await.unwrap();
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
    (relay_rate, plain_rate)
}

/// Receive-time minus the event's `time`, for every message on `stream` until `n` arrived.
async fn collect_lags(js: async_nats::jetstream::Context, stream: String, n: usize) -> Vec<f64> {
    let stream = loop {
        if let Ok(s) = js.get_stream(&stream).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut lags = Vec::with_capacity(n);
    while lags.len() < n {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await else { break };
        let e: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let t = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
        lags.push((Utc::now() - t.with_timezone(&Utc)).num_microseconds().unwrap() as f64 / 1000.0);
    }
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lags
}

/// (p50, p99) in ms: writes at a steady rate through the relay, then a bare publish loop.
async fn lag(js: &async_nats::jetstream::Context) -> ((f64, f64), (f64, f64)) {
    let n = (RATE * STEADY_SECS) as usize;
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("L{}", uuid::Uuid::now_v7().simple());
    let cfg = config(dir.path(), &tag);
    let store = vitrina::store::open(&cfg).await.unwrap();
    let shop = create_shop(store.as_ref()).await;
    let relay = Arc::new(Relay::new(&cfg.events, Arc::new(RelayStatus::default())).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(relay.run(store.clone().outboxes(), stop_rx));
    let collector = tokio::spawn(collect_lags(js.clone(), tag.clone(), n + 1));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut writes = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let (store, shop) = (store.clone(), shop.clone());
        writes.push(tokio::spawn(async move {
            store.set_stock(&shop, &format!("SKU-{}", i % 500), i as i64, Utc::now()).await.unwrap();
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    let relay_lags = collector.await.unwrap();
    let _ = stop_tx.send(true);
    running.await.unwrap();
    js.delete_stream(&tag).await.unwrap();
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();

    let reference = format!("Q{}", uuid::Uuid::now_v7().simple());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: reference.clone(),
        subjects: vec![format!("{}.>", reference.to_lowercase())],
        ..Default::default()
    })
    .await
    .unwrap();
    let collector = tokio::spawn(collect_lags(js.clone(), reference.clone(), n));
    let subject = format!("{}.events", reference.to_lowercase());
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for i in 0..n {
        tick.tick().await;
        let body =
            serde_json::json!({"id": i.to_string(), "time": Utc::now().to_rfc3339(), "data": {"sku": "SKU-1", "on_hand": i}});
        js.publish(subject.clone(), body.to_string().into()).await.unwrap().await.unwrap();
    }
    let plain_lags = collector.await.unwrap();
    js.delete_stream(&reference).await.unwrap();
    let p = |l: &[f64]| (percentile(l, 0.5), percentile(l, 0.99));
    (p(&relay_lags), p(&plain_lags))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("NATS for the benchmark"));
        let (relay, plain) = throughput(&js).await;
        println!("throughput, events/s into JetStream (one shard, SQLite, batch 256):");
        println!("  relay {relay:.0}   plain publish loop {plain:.0}   ratio {:.2}x", relay / plain);
        let ((r50, r99), (p50, p99)) = lag(&js).await;
        println!("end-to-end lag at {RATE} events/s for {STEADY_SECS} s, ms (commit -> consumer vs publish -> consumer):");
        println!(
            "  relay p50 {r50:.1} p99 {r99:.1}   plain p50 {p50:.1} p99 {p99:.1}   ratio p50 {:.1}x p99 {:.1}x",
            r50 / p50,
            r99 / p99
        );
    });
}
