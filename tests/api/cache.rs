//! The read cache: tiers and HTTP headers, single-flight, invalidation across instances, and
//! Redis failing under load. Redis tests use `VITRINA_TEST_REDIS_URL` or a private
//! `redis-server` started here on a free loopback port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use vitrina::cache::config::{CacheConfig, RedisUrls};
use vitrina::cache::{Cache, Family, Loaded};

use crate::helpers::{free_port, spawn_with, start, ReadLoad, Shop, TestApp};
use crate::helpers::{service, REDIS};

fn namespace() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

fn tune(c: &mut vitrina::config::Config, redis: Option<&str>, l1: bool) {
    c.seed_on_start = false;
    c.cache.l1 = l1;
    c.cache.redis_url = redis.map(|u| RedisUrls::One(u.to_owned()));
    c.cache.namespace = namespace();
}

async fn loads(app: &TestApp) -> u64 {
    app.get_json("/").await["topology"]["cache"]["loads"].as_u64().unwrap()
}

async fn read(app: &TestApp, path: &str) -> (StatusCode, String, Value) {
    let r = app.get(path).send().await.unwrap();
    let source = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (r.status(), source, r.json().await.unwrap_or(Value::Null))
}

/// A write's own event comes back on the bus a little later and bumps the generation once more;
/// wait it out before asserting a hit.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn rename(app: &TestApp, shop: &Shop, sku: &str, name: &str) {
    let body = json!({"name": name, "category": "c", "price": {"amount": 500, "currency": "USD"}});
    let r = app.put(&format!("/shops/{}/products/{sku}", shop.id)).bearer_auth(&shop.key).json(&body).send().await.unwrap();
    assert!(r.status().is_success());
}

#[tokio::test]
#[ignore = "needs Redis at VITRINA_TEST_REDIS_URL (default redis://127.0.0.1:6379): cargo test -- --include-ignored"]
async fn reads_come_from_l1_then_l2_with_http_validators_and_a_write_shows_at_once() {
    let url = service("VITRINA_TEST_REDIS_URL", REDIS);
    for l1 in [true, false] {
        let app = spawn_with(|c| tune(c, Some(&url), l1)).await;
        let shop = app.shop_with_stock("acme", "A", 5).await;
        settle().await;
        let path = "/shops/acme/products/A";
        let hit = if l1 { "HIT-L1" } else { "HIT-L2" };

        let first = app.get(path).send().await.unwrap();
        assert_eq!(first.headers()["x-cache"], "MISS");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        let max_age = first.headers()["cache-control"].to_str().unwrap().to_owned();
        assert!(max_age.starts_with("public, max-age="), "{max_age}");
        let second = app.get(path).send().await.unwrap();
        assert_eq!((second.headers()["x-cache"].to_str().unwrap(), second.headers()["etag"].to_str().unwrap()), (hit, &*etag));
        let not_modified = app.get(path).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

        // A write is seen by the very next read, and the old validator no longer matches.
        rename(&app, &shop, "A", "renamed").await;
        let (status, source, body) = read(&app, path).await;
        assert_eq!((status, source.as_str(), body["name"].as_str()), (StatusCode::OK, "MISS", Some("renamed")));
        let changed = app.get(path).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(changed.status(), StatusCode::OK);

        // Pages too; and a product that did not exist appears as soon as it is written.
        settle().await;
        let (_, source, _) = read(&app, "/shops/acme/products?limit=10").await;
        assert_eq!(source, "MISS");
        let (_, source, page) = read(&app, "/shops/acme/products?limit=10").await;
        assert_eq!((source.as_str(), page["items"].as_array().unwrap().len()), (hit, 1));
        assert_eq!(read(&app, "/shops/acme/products/B").await.0, StatusCode::NOT_FOUND);
        assert_eq!(read(&app, "/shops/acme/products/B").await.0, StatusCode::NOT_FOUND);
        rename(&app, &shop, "B", "new").await;
        assert_eq!(read(&app, "/shops/acme/products/B").await.2["name"], "new");
        let (_, source, page) = read(&app, "/shops/acme/products?limit=10").await;
        assert_eq!((source.as_str(), page["items"].as_array().unwrap().len()), ("MISS", 2));

        let root = app.get_json("/").await;
        assert_eq!(root["cache_enabled"], true);
        assert_eq!(root["cache"]["breaker"], "closed");
        let tiers = root["cache"]["tiers"].as_array().unwrap().clone();
        assert_eq!(tiers.contains(&json!("l1-memory")), l1);
        assert!(tiers.contains(&json!("l2-redis")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_store_read() {
    let app = spawn_with(|c| tune(c, None, true)).await;
    app.shop_with_stock("acme", "A", 5).await;
    settle().await;
    // Warm the shop record so only the product is loaded below.
    app.get("/shops/acme/products?limit=1").send().await.unwrap();
    let before = loads(&app).await;
    let reads: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/shops/acme/products/A"));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(loads(&app).await - before, 1, "50 concurrent misses, one store read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis at VITRINA_TEST_REDIS_URL (default redis://127.0.0.1:6379): cargo test -- --include-ignored"]
async fn instances_sharing_redis_load_a_missing_key_once() {
    let url = service("VITRINA_TEST_REDIS_URL", REDIS);
    let cfg = CacheConfig { l1: false, redis_url: Some(RedisUrls::One(url)), namespace: namespace(), ..CacheConfig::default() };
    let instances: Vec<Arc<Cache>> = (0..3).map(|_| Arc::new(Cache::new(&cfg).unwrap())).collect();
    let loads = Arc::new(AtomicU64::new(0));
    let reads: Vec<_> = (0..30)
        .map(|i| {
            let (cache, loads) = (instances[i % 3].clone(), loads.clone());
            tokio::spawn(async move {
                let load = async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(Loaded::Keep(bytes::Bytes::from_static(b"{\"v\":1}")))
                };
                cache.get_or_load(Family::Product, "shop:acme", "A", load).await.unwrap().unwrap().body
            })
        })
        .collect();
    for r in reads {
        assert_eq!(&r.await.unwrap()[..], b"{\"v\":1}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "three instances, thirty misses, one load");
}

/// Write on one instance, read on another: stale for at most the propagation time, then never
/// again. With Redis the message travels by pub/sub; without, by the outbox events on the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL and Redis (VITRINA_TEST_REDIS_URL): the PostgreSQL pass runs it (.ci/run)"]
async fn a_write_on_one_instance_is_seen_on_another_on_postgresql() {
    crate::backend::require(crate::backend::Backend::Postgres);
    let url = service("VITRINA_TEST_REDIS_URL", REDIS);
    for redis in [Some(url.as_str()), None] {
        let a = spawn_with(|c| tune(c, redis, true)).await;
        let mut config = a.state.config.clone();
        config.listen = "127.0.0.1:0".into();
        let b = start(config).await;
        let shop = a.shop_with_stock("acme", "A", 5).await;
        let path = "/shops/acme/products/A";
        for round in 0..5 {
            settle().await;
            // B holds the product in its L1.
            read(&b, path).await;
            assert!(read(&b, path).await.1.starts_with("HIT"));
            let name = format!("name {round}");
            rename(&a, &shop, "A", &name).await;
            let t0 = Instant::now();
            while read(&b, path).await.2["name"] != name.as_str() {
                assert!(t0.elapsed() < Duration::from_secs(2), "B still stale after {:?} (redis: {redis:?})", t0.elapsed());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            eprintln!("redis {:?}: B saw the write after {:?}", redis.is_some(), t0.elapsed());
            for _ in 0..5 {
                assert_eq!(read(&b, path).await.2["name"], name.as_str(), "never stale again");
            }
        }
        b.stop().await.unwrap();
    }
}

fn redis_server(port: u16, extra: &[&str]) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server in PATH")
}

async fn wait_for_port(port: u16) {
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "redis-server on {port} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis dies with SIGKILL during a read load: no read fails, the breaker opens, and closes
/// again once Redis is back, which then serves hits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo test -- --include-ignored"]
async fn redis_killed_during_a_read_load_fails_no_read() {
    let port = free_port();
    let mut server = redis_server(port, &[]);
    wait_for_port(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_with(|c| {
        tune(c, Some(&url), false);
        c.cache.breaker.open_ms = 300;
        c.cache.breaker.consecutive_failures = 3;
    })
    .await;
    app.shop_with_stock("acme", "A", 5).await;
    let load = ReadLoad::start(&app.client, vec![app.url("/shops/acme/products/A")], 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = app.get_json("/").await["cache"]["breaker"].as_str().unwrap().to_owned();
    let mut server = redis_server(port, &[]);
    wait_for_port(port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok = load.finish().await;
    assert_ne!(during, "closed", "the breaker opened while Redis was down");
    // Back: the breaker closes and L2 serves again.
    let t0 = Instant::now();
    loop {
        let (_, source, _) = read(&app, "/shops/acme/products/A").await;
        if source == "HIT-L2" && app.get_json("/").await["cache"]["breaker"] == "closed" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "L2 did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{ok} reads, none failed; breaker during the outage: {during}");
    server.kill().unwrap();
    let _ = server.wait();
}
