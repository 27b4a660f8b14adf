//! Webhooks against a real local HTTP receiver: signed deliveries retried until they land once,
//! dead deliveries and their replay, and the configured webhook sink's dead letters.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{one_line, problem, spawn_with, Shop, TestApp};
use vitrina::breaker::BreakerConfig;
use vitrina::events::config::{SinkConfig, SinkKind};
use vitrina::events::sinks::webhook;

#[derive(Clone, Debug)]
pub struct Received {
    pub status: u16,
    pub signature: String,
    pub event_id: String,
    pub body: String,
}

/// A receiver that fails its first `fail` requests (forever when negative) with 500 or `code`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Received>>>,
    pub fail: Arc<AtomicI64>,
    pub code: Arc<AtomicI64>,
    /// Milliseconds to wait before answering.
    pub delay: Arc<AtomicI64>,
}

impl Receiver {
    pub async fn start(fail: i64) -> Receiver {
        let seen: Arc<Mutex<Vec<Received>>> = Default::default();
        let fail = Arc::new(AtomicI64::new(fail));
        let code = Arc::new(AtomicI64::new(500));
        let delay = Arc::new(AtomicI64::new(0));
        let (s, f, c, d) = (seen.clone(), fail.clone(), code.clone(), delay.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (s, f, c, d) = (s.clone(), f.clone(), c.clone(), d.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst) as u64)).await;
                    let left = f.load(Ordering::SeqCst);
                    let status = if left == 0 {
                        200
                    } else {
                        if left > 0 {
                            f.fetch_sub(1, Ordering::SeqCst);
                        }
                        c.load(Ordering::SeqCst) as u16
                    };
                    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    s.lock().unwrap().push(Received {
                        status,
                        signature: h(webhook::SIGNATURE_HEADER),
                        event_id: h(webhook::EVENT_ID_HEADER),
                        body,
                    });
                    AxumStatus::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, seen, fail, code, delay }
    }

    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let t0 = Instant::now();
        loop {
            let seen = self.received();
            if done(&seen) {
                return seen;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{what}: receiver saw {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Fast retries, so a test sees several attempts in well under a second.
pub fn quick_retries(c: &mut vitrina::config::Config) {
    c.seed_on_start = false;
    c.events.poll_ms = 10;
    c.events.webhooks.retry_base_ms = 20;
    c.events.webhooks.retry_cap_ms = 100;
    c.events.retry_base_ms = 20;
    c.events.retry_cap_ms = 100;
}

async fn subscribe(app: &TestApp, shop: &Shop, url: &str, events: Value) -> Value {
    let r = app
        .post(&format!("/shops/{}/webhooks", shop.id))
        .bearer_auth(&shop.key)
        .json(&json!({"url": url, "events": events, "secret": "0123456789abcdef-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn deliveries(app: &TestApp, shop: &Shop, hook: &str, status: &str) -> Vec<Value> {
    let path = format!("/shops/{}/webhooks/{hook}/deliveries?status={status}", shop.id);
    app.get_json_as(&path, &shop.key).await["deliveries"].as_array().unwrap().clone()
}

async fn wait_deliveries(app: &TestApp, shop: &Shop, hook: &str, status: &str, n: usize) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let d = deliveries(app, shop, hook, status).await;
        if d.len() >= n {
            return d;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "waiting for {n} {status} deliveries, have {d:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_each_event_retried_until_it_lands_once_signed() {
    let receiver = Receiver::start(2).await;
    let app = spawn_with(quick_retries).await;
    let shop = app.shop_with_stock("acme", "MUG", 5).await;
    let hook = subscribe(&app, &shop, &receiver.url, json!(["vitrina.order.placed"])).await;
    let hook_id = hook["id"].as_str().unwrap();
    assert_eq!(hook["events"], json!(["vitrina.order.placed"]));
    assert_eq!(hook["secret"], "0123456789abcdef-secret");
    let listed = app.get_json_as("/shops/acme/webhooks", &shop.key).await;
    assert_eq!(listed["webhooks"][0]["id"], hook["id"]);
    assert!(listed["webhooks"][0].get("secret").is_none(), "the secret is shown once, at creation: {listed}");

    let placed: Value = app.order(&shop, "k1", &one_line("MUG", 1)).await.json().await.unwrap();
    let seen = receiver.wait_for("the order reaches the receiver", |s| s.iter().any(|r| r.status == 200)).await;
    assert_eq!(seen.iter().map(|r| r.status).collect::<Vec<_>>(), vec![500, 500, 200], "retried after each 500");
    assert!(seen.iter().all(|r| r.event_id == seen[0].event_id), "the same event each time");
    let event: Value = serde_json::from_str(&seen[2].body).unwrap();
    assert_eq!(event["type"], "vitrina.order.placed");
    assert_eq!(event["data"]["id"], placed["id"]);
    let now = chrono::Utc::now().timestamp();
    assert!(webhook::verify("0123456789abcdef-secret", &seen[2].signature, seen[2].body.as_bytes(), now, 300));
    assert!(!webhook::verify("another-secret-value", &seen[2].signature, seen[2].body.as_bytes(), now, 300));

    let delivered = wait_deliveries(&app, &shop, hook_id, "delivered", 1).await;
    assert_eq!((delivered[0]["attempts"].as_i64(), delivered[0]["last_status"].as_i64()), (Some(3), Some(200)));
    // Events of other types were not sent; nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 3);

    let r = app.delete(&format!("/shops/acme/webhooks/{hook_id}")).bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.delete(&format!("/shops/acme/webhooks/{hook_id}")).bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_ends_in_dead_letters_and_replay_delivers_in_order() {
    let receiver = Receiver::start(-1).await;
    let app = spawn_with(|c| {
        quick_retries(c);
        c.events.webhooks.max_attempts = 3;
        // Every attempt reaches the receiver here; the endpoint breaker has a test of its own.
        c.breakers.webhooks.consecutive_failures = 1_000;
        c.breakers.webhooks.min_calls = 1_000;
    })
    .await;
    let shop = app.create_shop("acme").await;
    // The shop's creation is older than the subscription: not sent.
    app.clock.advance(chrono::Duration::seconds(1));
    let hook = subscribe(&app, &shop, &receiver.url, json!(["*"])).await;
    let hook_id = hook["id"].as_str().unwrap();
    app.put_product(&shop, "MUG", 500).await;
    app.put_product(&shop, "MUG", 600).await;

    let dead = wait_deliveries(&app, &shop, hook_id, "dead", 2).await;
    assert!(dead.iter().all(|d| d["attempts"] == 3 && d["last_status"] == 500), "{dead:?}");
    let kinds: Vec<(String, u16)> = receiver
        .received()
        .iter()
        .map(|r| (serde_json::from_str::<Value>(&r.body).unwrap()["type"].as_str().unwrap().to_owned(), r.status))
        .collect();
    assert_eq!(receiver.received().len(), 6, "three attempts each, then no more: {kinds:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 6);

    receiver.fail.store(0, Ordering::SeqCst);
    let r = app.post(&format!("/shops/acme/webhooks/{hook_id}/replay")).bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap()["replayed"], 2);
    let seen = receiver.wait_for("the replay", |s| s.iter().filter(|r| r.status == 200).count() == 2).await;
    let versions: Vec<i64> = seen
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["data"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2], "one aggregate's events arrive in order");
    assert!(deliveries(&app, &shop, hook_id, "dead").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_sink_dead_letters_refused_events_and_replays_them() {
    let receiver = Receiver::start(-1).await;
    receiver.code.store(400, Ordering::SeqCst);
    let url = receiver.url.clone();
    let app = spawn_with(move |c| {
        quick_retries(c);
        c.events.max_attempts = 2;
        c.events.sinks = vec![SinkConfig {
            kind: SinkKind::Webhook,
            url,
            name: Some("crm".into()),
            stream: None,
            subject: None,
            secret: Some("crm-signing-secret".into()),
        }];
    })
    .await;
    let shop = app.create_shop("acme").await;
    let t0 = Instant::now();
    let letters = loop {
        let v = app.get_json_as("/shops/acme/events/dead-letters", &shop.key).await;
        let letters = v["dead_letters"].as_array().unwrap().clone();
        if letters.iter().any(|l| l["type"] == "vitrina.shop.created") {
            break letters;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no dead letter: {v}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let letter = letters.iter().find(|l| l["type"] == "vitrina.shop.created").unwrap();
    assert_eq!((letter["sink"].as_str(), letter["attempts"].as_i64()), (Some("crm"), Some(2)));
    assert_eq!(letter["event"]["subject"], "acme");

    receiver.fail.store(0, Ordering::SeqCst);
    let r = app.post("/shops/acme/events/dead-letters/replay?sink=crm").bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = letter["event_id"].as_str().unwrap().to_owned();
    receiver.wait_for("the replayed dead letter", |s| s.iter().any(|r| r.status == 200 && r.event_id == id)).await;
    let t0 = Instant::now();
    while !app.get_json_as("/shops/acme/events/dead-letters", &shop.key).await["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["event_id"] != id.as_str())
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "the replayed dead letter stays listed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let report = app.get_json("/").await;
    let crm = report["topology"]["relay"].as_object().unwrap().values().next().unwrap()["sinks"].clone();
    assert!(crm.as_array().unwrap().iter().any(|s| s["sink"] == "crm"), "relay state per shard in GET /: {report}");
}

#[tokio::test]
async fn bad_subscriptions_are_refused() {
    let app = spawn_with(|_| {}).await;
    let shop = app.create_shop("acme").await;
    for body in [
        json!({"url": "ftp://example.com/x", "events": ["*"]}),
        json!({"url": "not a url", "events": ["*"]}),
        json!({"url": "https://example.com/x", "events": []}),
        json!({"url": "https://example.com/x", "events": ["vitrina.no.such"]}),
        json!({"url": "https://example.com/x", "events": ["*"], "secret": "short"}),
        json!({"url": "https://example.com/x", "events": ["*"], "surprise": 1}),
    ] {
        let r = app.post("/shops/acme/webhooks").bearer_auth(&shop.key).json(&body).send().await.unwrap();
        let (status, p) = problem(r).await;
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST, "{body} -> {status} {p}");
    }
    assert!(app.get_json_as("/shops/acme/webhooks", &shop.key).await["webhooks"].as_array().unwrap().is_empty());
    let other = app.create_shop("other").await;
    let r = app.get("/shops/acme/webhooks").bearer_auth(&other.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A generated secret when none is given.
    let r = app
        .post("/shops/acme/webhooks")
        .bearer_auth(&shop.key)
        .json(&json!({"url": "https://example.com/x", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    let hook: Value = r.json().await.unwrap();
    assert!(hook["secret"].as_str().unwrap().starts_with("whsec_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_failing_is_spared_by_its_breaker_until_a_probe_finds_it_back() {
    let receiver = Receiver::start(-1).await;
    let open_ms = 1_500;
    let app = spawn_with(|c| {
        quick_retries(c);
        c.events.webhooks.max_attempts = 1_000;
        c.breakers.webhooks = BreakerConfig { consecutive_failures: 3, open_ms, ..BreakerConfig::default() };
    })
    .await;
    let shop = app.create_shop("acme").await;
    app.clock.advance(chrono::Duration::seconds(1));
    let hook = subscribe(&app, &shop, &receiver.url, json!(["*"])).await;
    let hook_id = hook["id"].as_str().unwrap();
    app.put_product(&shop, "MUG", 500).await;

    // Three failures in a row open the endpoint's breaker: the delivery is still retried on its
    // schedule, but nothing is sent until the breaker lets a probe through.
    receiver.wait_for("three failed attempts", |s| s.len() >= 3).await;
    let t0 = Instant::now();
    let spared = loop {
        let d = deliveries(&app, &shop, hook_id, "pending").await;
        if d.first().is_some_and(|d| d["last_error"].as_str().unwrap_or_default().contains("breaker open")) {
            break d[0].clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no attempt was spared: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(spared["attempts"].as_i64().unwrap() >= 4, "{spared:?}");
    assert_eq!(receiver.received().len(), 3, "not sent while open");

    // The receiver recovers; once the breaker's time is up, a probe delivers the event.
    receiver.fail.store(0, Ordering::SeqCst);
    let delivered = wait_deliveries(&app, &shop, hook_id, "delivered", 1).await;
    assert_eq!(delivered[0]["last_status"], 200);
    let statuses: Vec<u16> = receiver.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.len() <= 5, "at most a probe per opening reached the failing receiver: {statuses:?}");
}

/// With no subscription on the shard the fan-out moves its cursor to the feed's head without
/// reading events or queueing deliveries; once a shop subscribes, it fans out again, and the
/// subscription gets what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_out_passes_events_by_while_no_shop_subscribes() {
    use vitrina::store::outbox::FanOut;
    let app = crate::helpers::spawn_with(|c| {
        c.seed_on_start = false;
        c.events.relay = false;
    })
    .await;
    let shop = app.shop_with_stock("quiet", "MUG", 1).await;
    let outbox = app.state.store().outboxes().pop().unwrap();
    let now = chrono::Utc::now;
    let t0 = std::time::Instant::now();
    let head = loop {
        // Once the shop's events are below every transaction running elsewhere.
        if let Some(head) = outbox.head().await.unwrap() {
            break head;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the shop's events reach the feed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(outbox.pass_by("webhooks", "me", now()).await.unwrap(), FanOut::Passed), "no subscription");
    let state = &outbox.sink_states(&["webhooks".into()], now()).await.unwrap()[0];
    let passed = state.cursor.clone().expect("the cursor moved");
    assert!(passed == head || outbox.read(Some(&head), 100).await.unwrap().iter().any(|e| e.position == passed), "to the head");
    assert_eq!(state.delivered, 0, "nothing fanned out");
    assert!(matches!(outbox.pass_by("webhooks", "them", now()).await.unwrap(), FanOut::Passed), "no lease is held");

    subscribe(&app, &shop, "http://127.0.0.1:9/hook", json!(["vitrina.stock.changed"])).await;
    assert!(matches!(outbox.pass_by("webhooks", "me", now()).await.unwrap(), FanOut::Needed), "a subscriber: fan out");
    app.set_stock(&shop, "MUG", 5).await;
    let t0 = std::time::Instant::now();
    let claimed = loop {
        if let Some(c) = outbox.claim("webhooks", "me", Duration::from_secs(30), 100, now()).await.unwrap() {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the new event reaches the feed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(claimed.events.iter().all(|e| e.position != passed), "what was passed by is not read again");
    assert!(claimed.events.iter().any(|e| e.kind == "vitrina.stock.changed"), "what follows is fanned out");
}

#[tokio::test]
async fn a_shop_cannot_point_a_webhook_into_the_servers_network() {
    let app = spawn_with(|c| c.events.webhooks.allowed_ranges.clear()).await;
    let shop = app.shop_with_stock("ssrf", "A", 1).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://[::1]:9/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ] {
        let r = app
            .post("/shops/ssrf/webhooks")
            .bearer_auth(&shop.key)
            .json(&json!({"url": url, "events": ["*"]}))
            .send()
            .await
            .unwrap();
        let (status, body) = problem(r).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["errors"][0]["field"], "url", "{url}: {body}");
    }
    // A public name is accepted (it is checked again by the resolver at each delivery).
    let r = app
        .post("/shops/ssrf/webhooks")
        .bearer_auth(&shop.key)
        .json(&json!({"url": "https://receiver.example.com/hook", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // An operator may allow a range: then the same loopback target is accepted.
    let allowed = spawn_with(|c| c.events.webhooks.allowed_ranges = vec!["127.0.0.0/8".into()]).await;
    let shop = allowed.shop_with_stock("ssrf", "A", 1).await;
    let r = allowed
        .post("/shops/ssrf/webhooks")
        .bearer_auth(&shop.key)
        .json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
