//! Relay into NATS JetStream, side by side with a plain JetStream publish loop of the same
//! payloads, in one run, on one embedded (SQLite) shard and on one PostgreSQL shard.
//!
//! 1. Throughput: a backlog of `vitrina.order.placed` events in the shard's outbox, drained by the
//!    relay (claim, publish with acks, move the cursor) vs the same envelopes published in the
//!    same batch size by a bare loop.
//! 2. End-to-end lag at a steady order rate: order committed → a consumer receives its event,
//!    p50/p99, vs a bare loop publishing at the same rate (publish → receive).
//!
//! `cargo bench --bench relay_nats`; env: VITRINA_BENCH_NATS_URL (default nats://127.0.0.1:4222),
//! VITRINA_BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres; the PostgreSQL
//! part is skipped when it cannot connect), BACKLOG (20000), RATE (orders/s, 500), SECS (10).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::env_num;
use futures::StreamExt;
use vitrina::config::{Config, ShardConfig, StoreKind};
use vitrina::events::config::{SinkConfig, SinkKind};
use vitrina::events::relay::{Relay, RelayStatus};
use vitrina::money::Currency;
use vitrina::orders::{PlaceOrder, PlaceOutcome, WantedLine};
use vitrina::shops::{NewShop, ShopId};
use vitrina::store::Store;

const SKUS: usize = 50;
const DB: &str = "vitrina_bench_relay";

fn nats_url() -> String {
    std::env::var("VITRINA_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn pg_admin_url() -> String {
    std::env::var("VITRINA_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn pg_admin(sql: &str) -> Result<(), tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(&pg_admin_url(), tokio_postgres::NoTls).await?;
    let t = tokio::spawn(conn);
    let r = c.batch_execute(sql).await;
    drop(c);
    let _ = t.await;
    r
}

/// A fresh store of the given kind with a shop selling `SKUS` products with plenty of stock.
/// The returned guard removes the data when dropped (the PostgreSQL database is dropped by
/// [`close`]).
async fn fresh_store(backend: Backend, stream: &str) -> (Config, Arc<Store>, ShopId, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config { data_dir: dir.path().to_owned(), seed_on_start: false, ..Config::default() };
    if backend == Backend::Postgres {
        pg_admin(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await.unwrap();
        pg_admin(&format!("CREATE DATABASE {DB}")).await.unwrap();
        let (base, _) = pg_admin_url().rsplit_once('/').map(|(b, d)| (b.to_owned(), d.to_owned())).unwrap();
        c.store = StoreKind::Postgres;
        c.postgres.shards = vec![ShardConfig { name: "shard1".into(), primary: format!("{base}/{DB}"), replicas: Vec::new() }];
    }
    c.events.poll_ms = 5;
    c.events.batch = 256;
    c.events.sinks = vec![SinkConfig {
        kind: SinkKind::Nats,
        url: nats_url(),
        name: None,
        stream: Some(stream.into()),
        subject: Some(format!("{}.events", stream.to_lowercase())),
        secret: None,
    }];
    let store = vitrina::store::Store::open(&c).await.unwrap();
    let shop = ShopId::parse("bench").unwrap();
    let usd = Currency::parse("USD").unwrap();
    store
        .create_shop(NewShop {
            id: shop.clone(),
            name: "Bench".into(),
            currency: usd,
            api_key_hash: [0; 32],
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    for i in 0..SKUS {
        let input = vitrina::catalog::ProductInput {
            sku: format!("SKU-{i}"),
            name: "Widget".into(),
            category: "c".into(),
            price: vitrina::money::Money { amount: 999, currency: usd },
            attributes: serde_json::json!({}),
        };
        let (sku, now) = (format!("SKU-{i}"), Utc::now());
        store.on_shop(&shop, "upsert_product", |s| s.upsert_product(&shop, input.clone(), now)).await.unwrap();
        store.on_shop(&shop, "set_stock", |s| s.set_stock(&shop, &sku, 1_000_000_000, now)).await.unwrap();
    }
    (c, store, shop, dir)
}

async fn close(backend: Backend, store: Arc<Store>) {
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
    if backend == Backend::Postgres {
        let _ = pg_admin(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await;
    }
}

/// One order of two lines; its `vitrina.order.placed` event is what the relay carries.
async fn place(store: &Store, shop: &ShopId, i: u64) {
    let now = Utc::now();
    let order = PlaceOrder {
        id: uuid::Uuid::now_v7().to_string(),
        customer_id: format!("c-{}", i % 1000),
        currency: Currency::parse("USD").unwrap(),
        lines: vec![
            WantedLine { sku: format!("SKU-{}", i as usize % SKUS), qty: 1 },
            WantedLine { sku: format!("SKU-{}", (i as usize + 7) % SKUS), qty: 2 },
        ],
        idempotency_key: format!("k-{i}"),
        fingerprint: [0; 32],
        now,
        expires_at: now + chrono::Duration::minutes(15),
    };
    assert!(matches!(
        store.on_shop(shop, "place_order", |s| s.place_order(shop, order.clone())).await.unwrap(),
        PlaceOutcome::Created(_)
    ));
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

/// Events/s: the relay draining a backlog of orders, then a bare loop publishing the same
/// envelopes. Returns the rates and one order envelope for the lag reference.
async fn throughput(js: &async_nats::jetstream::Context, backend: Backend) -> (f64, f64, serde_json::Value) {
    let backlog = env_num("BACKLOG", 20_000);
    let tag = format!("B{}", uuid::Uuid::now_v7().simple());
    let (cfg, store, shop, _dir) = fresh_store(backend, &tag).await;
    let writers: Vec<_> = (0..32u64)
        .map(|w| {
            let (store, shop) = (store.clone(), shop.clone());
            tokio::spawn(async move {
                for i in (w..backlog).step_by(32) {
                    place(store.as_ref(), &shop, i).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let outbox = store.clone().outboxes().pop().unwrap();
    let mut events = Vec::new();
    while events.len() < backlog as usize + 1 + 2 * SKUS {
        let after = events.last().map(|e: &vitrina::store::outbox::OutboxEvent| e.position.clone());
        let page = outbox.read(after.as_deref(), 10_000).await.unwrap();
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        events.extend(page);
    }
    let total = events.len() as u64;
    let sample: serde_json::Value =
        serde_json::from_str(&events.iter().rev().find(|e| e.kind == "vitrina.order.placed").unwrap().envelope).unwrap();

    let relay = Arc::new(Relay::new(&cfg.events, &cfg.breakers, Arc::new(RelayStatus::default())).unwrap());
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
    close(backend, store).await;

    let reference = format!("R{}", uuid::Uuid::now_v7().simple());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: reference.clone(),
        subjects: vec![format!("{}.>", reference.to_lowercase())],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let subject = format!("{}.events.bench.order.placed", reference.to_lowercase());
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
    (relay_rate, plain_rate, sample)
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
    lags
}

/// (p50, p99) in ms: orders placed at a steady rate through the relay, then a bare loop
/// publishing an order envelope at the same rate.
async fn lag(js: &async_nats::jetstream::Context, backend: Backend, sample: &serde_json::Value) -> ((f64, f64), (f64, f64)) {
    let (rate, secs) = (env_num("RATE", 500), env_num("SECS", 10));
    let n = (rate * secs) as usize;
    let tag = format!("L{}", uuid::Uuid::now_v7().simple());
    let (cfg, store, shop, _dir) = fresh_store(backend, &tag).await;
    let relay = Arc::new(Relay::new(&cfg.events, &cfg.breakers, Arc::new(RelayStatus::default())).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(relay.run(store.clone().outboxes(), stop_rx));
    // The set-up's events (shop, products, stock) come first; only the orders are timed.
    let setup = 1 + 2 * SKUS;
    let collector = tokio::spawn(collect_lags(js.clone(), tag.clone(), setup + n));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut orders = Vec::with_capacity(n);
    for i in 0..n as u64 {
        tick.tick().await;
        let (store, shop) = (store.clone(), shop.clone());
        orders.push(tokio::spawn(async move { place(store.as_ref(), &shop, i).await }));
    }
    for o in orders {
        o.await.unwrap();
    }
    let mut relay_lags = collector.await.unwrap();
    let _ = stop_tx.send(true);
    running.await.unwrap();
    js.delete_stream(&tag).await.unwrap();
    close(backend, store).await;
    relay_lags.drain(..setup.min(relay_lags.len()));
    relay_lags.sort_by(|a, b| a.partial_cmp(b).unwrap());

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
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut body = sample.clone();
    for i in 0..n {
        tick.tick().await;
        body["id"] = i.to_string().into();
        body["time"] = Utc::now().to_rfc3339().into();
        js.publish(subject.clone(), body.to_string().into()).await.unwrap().await.unwrap();
    }
    let mut plain_lags = collector.await.unwrap();
    plain_lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    js.delete_stream(&reference).await.unwrap();
    let p = |l: &[f64]| (percentile(l, 0.5), percentile(l, 0.99));
    (p(&relay_lags), p(&plain_lags))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("NATS for the benchmark"));
        let mut backends = vec![(Backend::Sqlite, "SQLite")];
        match pg_admin("SELECT 1").await {
            Ok(()) => backends.push((Backend::Postgres, "PostgreSQL")),
            Err(e) => println!("PostgreSQL part skipped: {e}"),
        }
        let (rate, secs) = (env_num("RATE", 500), env_num("SECS", 10));
        for (backend, name) in backends {
            let (relay, plain, sample) = throughput(&js, backend).await;
            println!("{name}, one shard: throughput, events/s into JetStream (order.placed backlog, batch 256):");
            println!("  relay {relay:.0}   plain publish loop {plain:.0}   ratio {:.2}x", relay / plain);
            let ((r50, r99), (p50, p99)) = lag(&js, backend, &sample).await;
            println!("{name}, one shard: end-to-end lag at {rate} orders/s for {secs} s, ms (order commit -> consumer vs publish -> consumer):");
            println!(
                "  relay p50 {r50:.1} p99 {r99:.1}   plain p50 {p50:.1} p99 {p99:.1}   ratio p50 {:.1}x p99 {:.1}x",
                r50 / p50,
                r99 / p99
            );
        }
    });
}
