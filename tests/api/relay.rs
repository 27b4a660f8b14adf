//! The relay against real brokers: NATS JetStream (`VITRINA_TEST_NATS_URL`) and RabbitMQ
//! (`VITRINA_TEST_AMQP_URL`). Every committed event arrives, nothing of a refused write does,
//! and after inbox dedupe each aggregate's sequence only grows.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{one_line, service, spawn_with, Shop, TestApp, AMQP, NATS};
use vitrina::events::config::{SinkConfig, SinkKind};

fn sink(kind: SinkKind, url: &str, stream: &str, subject: Option<&str>) -> SinkConfig {
    SinkConfig { kind, url: url.into(), name: None, stream: Some(stream.into()), subject: subject.map(Into::into), secret: None }
}

/// Some traffic: orders placed and moved on, one refused for want of stock.
async fn business(app: &TestApp, shop: &Shop) {
    for i in 0..5 {
        let r = app.order(shop, &format!("k{i}"), &one_line("MUG", 1)).await;
        assert_eq!(r.status(), 201);
        let o: Value = r.json().await.unwrap();
        let id = o["id"].as_str().unwrap();
        let r = app.post(&format!("/shops/{}/orders/{id}/pay", shop.id)).bearer_auth(&shop.key).send().await.unwrap();
        assert!(r.status().is_success());
    }
    let r = app.order(shop, "too-many", &one_line("MUG", 100)).await;
    assert_eq!(r.status(), 409, "refused: its transaction rolled back and recorded nothing");
}

/// The shop's committed events, from the pull feed, once it holds `want` of them.
async fn committed(app: &TestApp, shop: &Shop, want: usize) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let page = app.get_json_as(&format!("/shops/{}/events?limit=1000", shop.id), &shop.key).await;
        let events = page["events"].as_array().unwrap().clone();
        if events.len() >= want || t0.elapsed() > Duration::from_secs(10) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dedupes by event id through the inbox, and checks each aggregate's sequence only grows.
fn apply_in_order(inbox: &rusqlite::Connection, events: &[Value]) -> HashSet<String> {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut applied = HashSet::new();
    for e in events {
        let id = e["id"].as_str().unwrap();
        let now = chrono::Utc::now();
        if !vitrina::store::inbox::sqlite::first_time(inbox, "test-consumer", id, now).unwrap() {
            continue;
        }
        let (subject, seq) = (e["subject"].as_str().unwrap().to_owned(), e["sequence"].as_i64().unwrap());
        if let Some(prev) = last.insert(subject.clone(), seq) {
            assert!(seq > prev, "{subject}: sequence {seq} after {prev}");
        }
        applied.insert(id.to_owned());
    }
    applied
}

/// How many messages `stream` holds; 0 while it does not exist (or the broker is away).
async fn stream_len(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.map(|s| s.cached_info().state.messages).unwrap_or(0)
}

/// Waits until `stream` holds at least `n` messages.
async fn wait_stream(js: &async_nats::jetstream::Context, stream: &str, n: u64, what: &str) {
    let t0 = Instant::now();
    loop {
        let have = stream_len(js, stream).await;
        if have >= n {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{what}: {have} of {n} messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event id in `stream`, none of them twice.
async fn stream_ids(js: &async_nats::jetstream::Context, stream: &str) -> HashSet<String> {
    let s = js.get_stream(stream).await.unwrap();
    let mut ids = HashSet::new();
    for seq in 1..=s.cached_info().state.last_sequence {
        let e: Value = serde_json::from_slice(&s.get_raw_message(seq).await.unwrap().payload).unwrap();
        assert!(ids.insert(e["id"].as_str().unwrap().to_owned()), "no event twice in the stream");
    }
    ids
}

/// Connects, retrying for a while: the broker may be starting.
async fn connect(url: &str) -> async_nats::jetstream::Context {
    let t0 = Instant::now();
    loop {
        if let Ok(c) = async_nats::connect(url).await {
            return async_nats::jetstream::new(c);
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no NATS server at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The app's configuration for a `vitrina relay` process beside it, written into `dir`.
fn relay_config(app: &TestApp, dir: &std::path::Path, tune: impl FnOnce(&mut vitrina::config::Config)) -> std::path::PathBuf {
    let mut cfg = app.state.config.clone();
    cfg.data_dir = dir.to_owned();
    cfg.events.relay = true;
    cfg.events.poll_ms = 10;
    tune(&mut cfg);
    let file = dir.join("relay.toml");
    std::fs::write(&file, toml::to_string(&cfg).unwrap()).unwrap();
    file
}

fn start_relay(config: &std::path::Path) -> KillOnDrop {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vitrina"))
        .args(["relay", "--config", config.to_str().unwrap()])
        .env("VITRINA_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start vitrina relay");
    KillOnDrop(child)
}

fn inbox() -> rusqlite::Connection {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    vitrina::store::inbox::sqlite::create_table(&c).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS JetStream at VITRINA_TEST_NATS_URL (default nats://127.0.0.1:4222): cargo test -- --include-ignored"]
async fn every_committed_event_reaches_jetstream_once_and_in_order_per_aggregate() {
    let url = service("VITRINA_TEST_NATS_URL", NATS);
    let tag = format!("t{}", uuid::Uuid::now_v7().simple());
    let stream = tag.to_uppercase();
    let (u, st, sub) = (url.clone(), stream.clone(), format!("{tag}.events"));
    let app = spawn_with(move |c| {
        c.seed_on_start = false;
        c.events.poll_ms = 10;
        c.events.sinks = vec![sink(SinkKind::Nats, &u, &st, Some(&sub))];
    })
    .await;
    let shop = app.shop_with_stock("acme", "MUG", 10).await;
    business(&app, &shop).await;
    let events = committed(&app, &shop, 13).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(events.len(), 1 + 1 + 1 + 10, "shop, product, stock, 5 placed + 5 paid: {kinds:?}");
    let expected: HashSet<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();

    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The relay's sink makes the stream when it first connects, which on a loaded machine can
    // come after the events above were committed.
    let t0 = Instant::now();
    let js_stream = loop {
        match js.get_stream(&stream).await {
            Ok(s) => break s,
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(10), "the relay never made stream {stream}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        js_stream.create_consumer(async_nats::jetstream::consumer::pull::Config::default()).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < expected.len() {
        let left = Duration::from_secs(30).saturating_sub(t0.elapsed());
        let Ok(Some(Ok(m))) = tokio::time::timeout(left, messages.next()).await else {
            panic!("only {} of {} events arrived", got.len(), expected.len())
        };
        assert_eq!(m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned()), {
            let e: Value = serde_json::from_slice(&m.payload).unwrap();
            e["id"].as_str().map(str::to_owned)
        });
        got.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
        m.ack().await.unwrap();
    }
    let applied = apply_in_order(&inbox(), &got);
    assert_eq!(applied, expected, "exactly the committed events");
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ at VITRINA_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f): cargo test -- --include-ignored"]
async fn every_committed_event_reaches_a_rabbitmq_quorum_queue_persistent() {
    use lapin::options::{BasicGetOptions, QueueDeleteOptions};
    let url = service("VITRINA_TEST_AMQP_URL", AMQP);
    let queue = format!("vitrina.test.{}", uuid::Uuid::now_v7().simple());
    let (u, q) = (url.clone(), queue.clone());
    let app = spawn_with(move |c| {
        c.seed_on_start = false;
        c.events.poll_ms = 10;
        c.events.sinks = vec![sink(SinkKind::Amqp, &u, &q, None)];
    })
    .await;
    let shop = app.shop_with_stock("acme", "MUG", 10).await;
    business(&app, &shop).await;
    let expected: HashSet<String> =
        committed(&app, &shop, 13).await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();

    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < expected.len() {
        assert!(t0.elapsed() < Duration::from_secs(30), "only {} of {} events arrived", got.len(), expected.len());
        match channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await {
            Ok(Some(m)) => {
                assert_eq!(m.delivery.properties.delivery_mode(), &Some(2), "persistent");
                got.push(serde_json::from_slice::<Value>(&m.delivery.data).unwrap());
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let applied = apply_in_order(&inbox(), &got);
    assert_eq!(applied, expected, "exactly the committed events");
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

/// 64 writers commit out of position order (each sleeps before COMMIT, one in eight rolls
/// back) while the relay publishes to JetStream: what arrives is exactly what committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL and NATS JetStream (VITRINA_TEST_NATS_URL): the PostgreSQL pass runs it (.ci/run)"]
async fn the_relay_never_skips_a_late_commit_on_postgresql() {
    // Not on the embedded store: one writer commits in position order by construction.
    crate::backend::require(crate::backend::Backend::Postgres);
    let url = service("VITRINA_TEST_NATS_URL", NATS);
    let tag = format!("t{}", uuid::Uuid::now_v7().simple());
    let stream = tag.to_uppercase();
    let (u, st, sub) = (url.clone(), stream.clone(), format!("{tag}.events"));
    let app = spawn_with(move |c| {
        c.seed_on_start = false;
        c.events.poll_ms = 5;
        c.events.batch = 7;
        c.events.sinks = vec![sink(SinkKind::Nats, &u, &st, Some(&sub))];
    })
    .await;
    let pg = app.state.config.postgres.shards[0].primary.clone();
    let mut expected = HashSet::new();
    for w in crate::backend::late_committers(&pg, "vitrina.test.late") {
        expected.extend(w.await.unwrap());
    }
    let js = connect(&url).await;
    wait_stream(&js, &stream, expected.len() as u64, "the committed events").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stream_ids(&js, &stream).await, expected, "exactly the committed events, none skipped, none rolled back");
    js.delete_stream(&stream).await.unwrap();
}

/// A `vitrina relay` process killed with SIGKILL mid-stream: a standby process takes the lead,
/// reclaims what the dead one held once its lease runs out, and JetStream ends up with every
/// committed event exactly once (its `Nats-Msg-Id` dedupe absorbs what was published twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL and NATS JetStream (VITRINA_TEST_NATS_URL): the PostgreSQL pass runs it (.ci/run)"]
async fn a_relay_killed_while_publishing_is_replaced_and_nothing_is_lost_on_postgresql() {
    // Not on the embedded store: a relay process beside the server needs a shared PostgreSQL.
    crate::backend::require(crate::backend::Backend::Postgres);
    let url = service("VITRINA_TEST_NATS_URL", NATS);
    let app = spawn_with(|c| {
        c.seed_on_start = false;
        c.events.relay = false;
    })
    .await;
    let tag = format!("t{}", uuid::Uuid::now_v7().simple());
    let stream = tag.to_uppercase();
    let dir = tempfile::tempdir().unwrap();
    let config = relay_config(&app, dir.path(), |c| {
        c.events.batch = 8;
        c.events.lease_ms = 1500;
        c.events.sinks = vec![sink(SinkKind::Nats, &url, &stream, Some(&format!("{tag}.events")))];
    });
    let first = start_relay(&config);
    let shop = app.shop_with_stock("acme", "MUG", 1).await;
    let writer = {
        let (client, base, key) = (app.client.clone(), app.base.clone(), shop.key.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let r = client
                    .put(format!("{base}/shops/acme/stock/MUG"))
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"on_hand": i}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let js = connect(&url).await;
    wait_stream(&js, &stream, 40, "the first relay's publishes").await;
    drop(first);
    let killed_at = Instant::now();
    let at_kill = stream_len(&js, &stream).await;
    let second = start_relay(&config);
    wait_stream(&js, &stream, at_kill + 1, "the standby's publishes").await;
    let took_over = killed_at.elapsed();
    writer.await.unwrap();
    let expected: HashSet<String> =
        committed(&app, &shop, 303).await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    wait_stream(&js, &stream, expected.len() as u64, "every event after the takeover").await;
    drop(second);
    assert_eq!(stream_ids(&js, &stream).await, expected, "every committed event, none lost");
    eprintln!("the standby published {took_over:?} after the kill (lease 1.5 s)");
    // Lease 1.5 s + poll 10 ms, plus the new process's start and connections.
    assert!(took_over < Duration::from_millis(1500 + 10 + 3000), "took over after {took_over:?}");
    js.delete_stream(&stream).await.unwrap();
}

/// Killed while a batch is in flight (a slow receiver keeps it there): the standby waits out the
/// dead relay's lease, then publishes the whole batch again; the receiver's inbox absorbs what
/// was delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: the PostgreSQL pass runs it (.ci/run)"]
async fn a_batch_held_by_a_killed_relay_is_reclaimed_after_its_lease_on_postgresql() {
    // Not on the embedded store: a relay process beside the server needs a shared PostgreSQL.
    crate::backend::require(crate::backend::Backend::Postgres);
    let receiver = crate::webhooks::Receiver::start(0).await;
    receiver.delay.store(100, std::sync::atomic::Ordering::SeqCst);
    let app = spawn_with(|c| {
        c.seed_on_start = false;
        c.events.relay = false;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = relay_config(&app, dir.path(), |c| {
        c.events.batch = 20;
        c.events.lease_ms = 2000;
        c.events.sinks = vec![SinkConfig {
            kind: SinkKind::Webhook,
            url: receiver.url.clone(),
            name: Some("crm".into()),
            stream: None,
            subject: None,
            secret: Some("crm-signing-secret".into()),
        }];
    });
    let shop = app.shop_with_stock("acme", "MUG", 1).await;
    for i in 0..30 {
        app.set_stock(&shop, "MUG", i).await;
    }
    let first = start_relay(&config);
    // Inside the first batch: some of it delivered, the rest still to go.
    receiver.wait_for("the first relay's first deliveries", |s| s.len() >= 3).await;
    drop(first);
    let killed_at = Instant::now();
    let before = receiver.received().len();
    let _second = start_relay(&config);
    receiver.wait_for("the standby's deliveries", |s| s.len() > before).await;
    let took_over = killed_at.elapsed();
    eprintln!("the standby delivered {took_over:?} after the kill (lease 2 s)");
    let expected: HashSet<String> =
        committed(&app, &shop, 33).await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let seen = receiver
        .wait_for("every event", |s| s.iter().map(|r| r.event_id.clone()).collect::<HashSet<_>>().len() >= expected.len())
        .await;
    let inbox = inbox();
    let events: Vec<Value> = seen.iter().map(|r| serde_json::from_str(&r.body).unwrap()).collect();
    assert_eq!(apply_in_order(&inbox, &events), expected, "every committed event, in order per aggregate");
    assert!(seen.len() > expected.len(), "the batch in flight was delivered again: {} for {}", seen.len(), expected.len());
    assert!(took_over >= Duration::from_millis(1000), "the standby waited for the lease: {took_over:?}");
    assert!(took_over < Duration::from_millis(2000 + 10 + 3000), "reclaimed within lease + poll: {took_over:?}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A JetStream server of the test's own on a free loopback port, storing in `dir`.
fn nats_server(port: u16, dir: &std::path::Path) -> KillOnDrop {
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    KillOnDrop(child.unwrap_or_else(|e| panic!("nats-server is required: {e}")))
}

/// The sink breaker's state as `/metrics` shows it (0 closed, 1 half-open, 2 open).
async fn sink_breaker(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.get("/metrics").send().await.unwrap().text().await.unwrap();
    let series = format!("vitrina_breaker_state{{dependency=\"sink\",name=\"{name}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

async fn wait_sink_breaker(app: &TestApp, name: &str, state: f64, what: &str) {
    let t0 = Instant::now();
    while sink_breaker(app, name).await != Some(state) {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}: breaker is {:?}", sink_breaker(app, name).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The broker killed with SIGKILL while events keep committing: the sink's breaker opens, the
/// relay retries until a restarted broker (same storage) is back, the breaker closes, and the
/// stream ends with every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: cargo test -- --include-ignored"]
async fn a_broker_killed_and_restarted_loses_nothing() {
    let port = crate::helpers::free_port();
    let store = tempfile::tempdir().unwrap();
    let broker = nats_server(port, store.path());
    let url = format!("nats://127.0.0.1:{port}");
    let js = connect(&url).await;
    let u = url.clone();
    let app = spawn_with(move |c| {
        c.seed_on_start = false;
        c.events.poll_ms = 10;
        c.events.retry_base_ms = 50;
        c.events.retry_cap_ms = 300;
        let mut nats = sink(SinkKind::Nats, &u, "CRASH", Some("crash.events"));
        // A name of its own: the breaker's gauge is shared by every app in the test process.
        nats.name = Some("crash-nats".into());
        c.events.sinks = vec![nats];
        c.breakers.sinks = vitrina::breaker::BreakerConfig { consecutive_failures: 2, open_ms: 300, ..Default::default() };
    })
    .await;
    let shop = app.shop_with_stock("acme", "MUG", 1).await;
    wait_stream(&js, "CRASH", 3, "publishes before the crash").await;
    drop(js);
    drop(broker);
    for i in 0..20 {
        app.set_stock(&shop, "MUG", i).await;
    }
    wait_sink_breaker(&app, "crash-nats", 2.0, "the broker is gone").await;
    let _broker = nats_server(port, store.path());
    let expected: HashSet<String> =
        committed(&app, &shop, 23).await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let js = connect(&url).await;
    wait_stream(&js, "CRASH", expected.len() as u64, "every event after the restart").await;
    assert_eq!(stream_ids(&js, "CRASH").await, expected, "every committed event, none lost");
    wait_sink_breaker(&app, "crash-nats", 0.0, "a probe found the broker back").await;
}
