//! Admission control: a full shard or shop gate and an empty token bucket refuse at once with
//! `Retry-After`, while other shards, shops and clients keep being served.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use vitrina::shops::ShopId;

use crate::helpers::{problem, spawn_with, Shop, TestApp};
use crate::sharding::sharded_with;

/// A feed whose body never finishes: its write holds its places in the gates until dropped.
async fn hold_write(app: &TestApp, shop: &Shop) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /shops/{}/feed HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/x-ndjson\r\ncontent-length: 100000\r\n\r\n{{\"type\":",
        shop.id, shop.key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Waits until the gates of `shard` hold `n` writes.
async fn wait_inside(app: &TestApp, shard: &str, n: usize) {
    let t0 = Instant::now();
    while app.state.admission.report().shard_writes_inside.get(shard).copied().unwrap_or(0) != n {
        assert!(t0.elapsed() < Duration::from_secs(10), "shard {shard} never held {n} writes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn put(app: &TestApp, shop: &Shop, sku: &str) -> reqwest::Response {
    app.put(&format!("/shops/{}/products/{sku}", shop.id))
        .bearer_auth(&shop.key)
        .json(&serde_json::json!({"name": "Mug", "category": "c", "price": {"amount": 100, "currency": "USD"}}))
        .send()
        .await
        .unwrap()
}

fn shard_of(app: &TestApp, shop: &Shop) -> String {
    app.state.store().shard_of(&ShopId::parse(&shop.id).unwrap())
}

#[tokio::test]
async fn a_saturated_shard_sheds_with_503_while_another_shard_serves() {
    let app = sharded_with(2, |c| {
        c.admission.shard_writes = 1;
        c.admission.shard_queue = 0;
    })
    .await;
    let mut shops = Vec::new();
    for i in 0..12 {
        shops.push(app.create_shop(&format!("s{i}")).await);
    }
    let first = shard_of(&app, &shops[0]);
    let (same, other): (Vec<&Shop>, Vec<&Shop>) = shops[1..].iter().partition(|s| shard_of(&app, s) == first);
    let (busy, neighbour, elsewhere) = (&shops[0], same[0], other[0]);

    let holder = hold_write(&app, busy).await;
    wait_inside(&app, &first, 1).await;
    let r = put(&app, neighbour, "A").await;
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (status, p) = problem(r).await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded")));
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(put(&app, elsewhere, "A").await.status().is_success(), "the other shard serves");
    assert_eq!(app.get(&format!("/shops/{}/products", neighbour.id)).send().await.unwrap().status(), StatusCode::OK);

    drop(holder);
    wait_inside(&app, &first, 0).await;
    assert!(put(&app, neighbour, "A").await.status().is_success(), "served again once the shard has room");
}

#[tokio::test]
async fn a_shop_over_its_write_quota_gets_429_while_other_shops_are_served() {
    let app = spawn_with(|c| {
        c.admission.shop_writes = 1;
        c.admission.shop_queue = 0;
    })
    .await;
    let (busy, calm) = (app.create_shop("busy").await, app.create_shop("calm").await);
    let shard = shard_of(&app, &busy);
    let holder = hold_write(&app, &busy).await;
    wait_inside(&app, &shard, 1).await;

    let r = put(&app, &busy, "A").await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, p) = problem(r).await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")));
    assert!(put(&app, &calm, "A").await.status().is_success());
    assert_eq!(app.get("/shops/busy/products").send().await.unwrap().status(), StatusCode::OK, "reads are not writes");

    drop(holder);
    wait_inside(&app, &shard, 0).await;
    assert!(put(&app, &busy, "A").await.status().is_success());
}

#[tokio::test]
async fn token_buckets_per_shop_and_per_client_refuse_with_ratelimit_headers() {
    // One token per 100 s: nothing refills while the test runs, however slow the machine.
    let app = spawn_with(|c| {
        c.admission.shop_rps = 0.01;
        c.admission.shop_burst = 3;
    })
    .await;
    let hot = app.create_shop("hot").await;
    app.create_shop("other").await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = app.get("/shops/hot/products").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        remaining.push(r.headers()["ratelimit-remaining"].to_str().unwrap().to_owned());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = app.get("/shops/hot/products").send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "100");
    let (status, p) = problem(r).await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")));
    assert_eq!(put(&app, &hot, "A").await.status(), StatusCode::TOO_MANY_REQUESTS, "writes share the shop's bucket");
    assert_eq!(app.get("/shops/other/products").send().await.unwrap().status(), StatusCode::OK);

    let app = spawn_with(|c| {
        c.admission.client_rps = 0.01;
        c.admission.client_burst = 2;
    })
    .await;
    assert_eq!(app.get("/helloDoc/count").send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.get("/helloDoc/count").send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.get("/helloDoc/count").send().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.get("/health/ready").send().await.unwrap().status(), StatusCode::OK, "probes pass");
}

/// A shop that keeps its gate full: after a quarter second of heavy refusals the gate asks for a
/// longer `Retry-After` and stops queueing; once calm it queues again and asks for 1 s.
#[tokio::test]
async fn a_sustained_overload_lengthens_retry_after_and_turns_the_queue_off_until_it_calms() {
    const WAIT: Duration = Duration::from_secs(2);
    let app = spawn_with(|c| {
        c.admission.shop_writes = 1;
        c.admission.shop_queue = 2;
        c.admission.queue_wait_ms = WAIT.as_millis() as u64;
    })
    .await;
    let busy = app.create_shop("busy").await;
    let shard = shard_of(&app, &busy);
    let (client, url, key) = (app.client.clone(), app.url(&format!("/shops/{}/products/A", busy.id)), busy.key.clone());
    // One write: its status, its Retry-After, when it was sent and how long it took.
    let put = move || {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        async move {
            let sent = Instant::now();
            let body = serde_json::json!({"name": "Mug", "category": "c", "price": {"amount": 100, "currency": "USD"}});
            let r = client.put(url).bearer_auth(key).json(&body).send().await.unwrap();
            let retry: u64 = r.headers().get("retry-after").map_or(0, |v| v.to_str().unwrap().parse().unwrap());
            (r.status(), retry, sent, sent.elapsed())
        }
    };
    let holder = hold_write(&app, &busy).await;
    wait_inside(&app, &shard, 1).await;

    // Rounds of five writes every 50 ms, far more than the three (one place inside, two in the
    // queue) refused per quarter second that make a window heavy. A refusal that asks for 3 s or
    // more was drawn from at least 4 s, two heavy windows: the overload is judged sustained (and
    // stays so through one light window, should this test stall), so nothing waits in the queue.
    let (mut rounds, t0) = (tokio::task::JoinSet::new(), Instant::now());
    let (mut longest, mut sustained_since) = (0, None::<Instant>);
    let check = |(status, retry, sent, took): (StatusCode, u64, Instant, Duration), since: Option<Instant>| {
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        if since.is_some_and(|t| sent > t) {
            assert!(took < WAIT / 2, "sent under a sustained overload, yet queued for {took:?}");
        }
        retry
    };
    while sustained_since.is_none_or(|t| t.elapsed() < WAIT + Duration::from_millis(500)) {
        assert!(t0.elapsed() < Duration::from_secs(10), "Retry-After never grew past 2 s");
        for _ in 0..5 {
            rounds.spawn(put());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Some(done) = rounds.try_join_next() {
            longest = longest.max(check(done.unwrap(), sustained_since));
        }
        if longest >= 3 && sustained_since.is_none() {
            sustained_since = Some(Instant::now());
        }
    }
    while let Some(done) = rounds.join_next().await {
        longest = longest.max(check(done.unwrap(), sustained_since));
    }
    assert!((3..=30).contains(&longest), "longer, never past retry_after_max_secs: {longest}");

    drop(holder);
    wait_inside(&app, &shard, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _holder = hold_write(&app, &busy).await;
    wait_inside(&app, &shard, 1).await;
    let (status, retry, _, took) = put().await;
    assert_eq!((status, retry), (StatusCode::TOO_MANY_REQUESTS, 1), "calm again: the base");
    assert!(took >= WAIT, "queued again, refused only after the wait: {took:?}");
}

#[tokio::test]
async fn an_adaptive_shard_gate_holds_its_fewest_places_for_its_baseline_then_grows() {
    let app = spawn_with(|c| {
        c.admission.shard_queue = 0;
        c.admission.shard_writes = 16;
        c.admission.adaptive.enabled = true;
        c.admission.adaptive.min_places = 2;
        c.admission.adaptive.baseline_samples = 4;
        c.admission.adaptive.window_ms = 20;
        c.admission.adaptive.window_samples = 4;
    })
    .await;
    let shop = app.create_shop("adapts").await;
    let shard = shard_of(&app, &shop);
    let limit = || app.state.admission.report().shard_writes_limit.get(&shard).copied();

    let holders = [hold_write(&app, &shop).await, hold_write(&app, &shop).await];
    wait_inside(&app, &shard, 2).await;
    assert_eq!(limit(), Some(2), "a new shard gate measures its baseline at its fewest places");
    let (status, p) = problem(put(&app, &shop, "A").await).await;
    assert_eq!((status, p["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded")));
    drop(holders);
    wait_inside(&app, &shard, 0).await;

    // Writes one at a time never wait for each other: well inside the target, so it opens up.
    let t0 = Instant::now();
    while limit() < Some(16) {
        assert!(t0.elapsed() < Duration::from_secs(20), "stuck at {:?} places", limit());
        assert!(put(&app, &shop, "A").await.status().is_success());
    }
    let metrics = app.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("vitrina_admission_limit{{gate=\"shard\",key=\"{shard}\"}} 16")), "{metrics}");
    assert!(metrics.contains("vitrina_admission_inside_seconds_bucket{gate=\"shard\",le=\"0.0001\"}"));
}
