//! A failover drill on a real local topology started by `vitrina cluster`: two shards, each a
//! PostgreSQL primary with one streaming replica, in their own processes on loopback ports.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use vitrina::config::{Config, Overrides};
use vitrina::routing::{ring::DEFAULT_VNODES, Ring};

use crate::backend::{backend, Backend};
use crate::helpers::{one_line, start, ADMIN};

fn cluster(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vitrina")).arg("cluster").args(args).arg("--dir").arg(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "vitrina cluster {args:?}: {text}");
    text
}

/// Stops every node however the test ends.
struct Teardown<'a>(&'a Path);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_vitrina")).args(["cluster", "down", "--purge", "--dir"]).arg(self.0).output();
    }
}

/// A base port whose 2 × 10 block is free, looked for across 20000-59999: after a load test
/// the ephemeral range can be crowded with closing connections for a minute.
fn free_base_port() -> u16 {
    (0..2_000u32)
        .map(|i| (20_000 + ((std::process::id() % 100) * 100 + i * 20) % 40_000) as u16)
        .find(|base| (0..20).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()))
        .expect("a free block of ports")
}

async fn exec(port: u16, sql: &str) {
    let url = format!("postgres://vitrina@127.0.0.1:{port}/vitrina");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = task.await;
}

async fn count(port: u16, sql: &str, id: &str) -> i64 {
    let url = format!("postgres://vitrina@127.0.0.1:{port}/vitrina");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    let n: i64 = client.query_one(sql, &[&id]).await.unwrap().get(0);
    drop(client);
    let _ = task.await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill_on_a_local_cluster() {
    if backend() != Backend::Sqlite {
        eprintln!("skipped on {:?}: the cluster drill runs once, in the default pass", backend());
        return;
    }
    if let Err(e) = vitrina_cluster::node::Binaries::locate() {
        assert_ne!(std::env::var("VITRINA_REQUIRE_SERVICES").as_deref(), Ok("1"), "PostgreSQL binaries are required: {e}");
        eprintln!("skipped: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let _teardown = Teardown(dir.path());
    cluster(dir.path(), &["up", "--shards", "2", "--replicas", "1", "--base-port", &base.to_string()]);
    let status = cluster(dir.path(), &["status"]);
    assert_eq!(status.matches("streaming").count(), 4, "two primaries with one follower, two streaming replicas:\n{status}");

    let overrides = Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.path().join("app")) };
    let mut config = Config::from_layers(Some(&dir.path().join("vitrina.toml")), &[], &overrides).unwrap();
    config.admin_token = Some(ADMIN.into());
    let app = start(config).await;

    let root = app.get_json("/").await;
    assert_eq!(root["mongo_topology_type"], "Sharded");
    for shard in root["topology"]["store"]["shards"].as_array().unwrap() {
        let roles: Vec<&str> = shard["nodes"].as_array().unwrap().iter().map(|n| n["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["primary", "replica"], "{shard}");
        assert!(shard["nodes"].as_array().unwrap().iter().all(|n| n["reachable"] == true));
    }

    let ring = Ring::new(&["shard1".to_owned(), "shard2".to_owned()], DEFAULT_VNODES);
    let on = |k: usize| (0..).map(|i| format!("drill-{i}")).find(|id| ring.owner_index(id) == k).unwrap();
    let one = app.shop_with_stock(&on(0), "A", 10).await;
    let two = app.shop_with_stock(&on(1), "A", 10).await;
    let order: Value = app.order(&two, "k1", &one_line("A", 1)).await.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();

    // Rows land on their shard's primary and reach its replica.
    let (p1, r1, p2, r2) = (base, base + 1, base + 10, base + 11);
    assert_eq!(count(p1, "SELECT count(*) FROM shops WHERE id = $1", &one.id).await, 1);
    assert_eq!(count(p2, "SELECT count(*) FROM shops WHERE id = $1", &one.id).await, 0);
    assert_eq!(count(p2, "SELECT count(*) FROM orders WHERE id = $1", &order_id).await, 1);
    let t0 = Instant::now();
    while count(r2, "SELECT count(*) FROM orders WHERE id = $1", &order_id).await == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the replica caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(r1, "SELECT count(*) FROM shops WHERE id = $1", &one.id).await, 1);

    // A replica past the lag budget is not read: pause its replay, change a product behind
    // vitrina's back on the primary, and the read still sees the change.
    exec(r1, "SELECT pg_wal_replay_pause()").await;
    exec(p1, &format!("UPDATE products SET name = 'fresh' WHERE shop = '{}' AND sku = 'A'", one.id)).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let p = app.get_json(&format!("/shops/{}/products/A", one.id)).await;
    assert_eq!(p["name"], "fresh", "a lagging replica is skipped");

    // Read-your-writes: freeze shard 2's replica (its measured lag is still fresh and small),
    // write through vitrina, and the writes are read back at once, twice in a row. A second
    // instance with a generous lag budget reads the frozen replica, unless the client brings
    // the token its write answered with.
    let mut other_config = app.state.config.clone();
    other_config.listen = "127.0.0.1:0".into();
    other_config.postgres.replica_lag_budget_ms = 600_000;
    let other = start(other_config).await;
    exec(r2, "SELECT pg_wal_replay_pause()").await;
    let path = format!("/shops/{}/products/A", two.id);
    let mut body = serde_json::json!({"name": "renamed", "category": "c", "price": {"amount": 500, "currency": "USD"}});
    assert_eq!(app.put(&path).bearer_auth(&two.key).json(&body).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.get_json(&path).await["name"], "renamed");
    body["name"] = "renamed again".into();
    let put = app.put(&path).bearer_auth(&two.key).json(&body).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let token = put.headers()["vitrina-written-at"].to_str().unwrap().to_owned();
    assert_eq!(app.get_json(&path).await["name"], "renamed again");
    tokio::time::sleep(Duration::from_millis(600)).await; // the other instance probes its replicas
    assert_eq!(other.get_json(&path).await["name"], "Product A", "without the token: the frozen replica");
    let fresh: Value = other.get(&path).header("vitrina-read-after", &token).send().await.unwrap().json().await.unwrap();
    assert_eq!(fresh["name"], "renamed again", "with the token: fresh");
    other.stop().await.unwrap();
    exec(r2, "SELECT pg_wal_replay_resume()").await;
    exec(r1, "SELECT pg_wal_replay_resume()").await;

    // Shard 2's primary dies: its writes fail fast, shard 1 is unaffected, reads go on.
    cluster(dir.path(), &["kill", "shard2-1"]);
    let t0 = Instant::now();
    let r = app.order(&two, "k2", &one_line("A", 1)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t0.elapsed() < Duration::from_secs(3), "failed within the connect timeout, took {:?}", t0.elapsed());
    assert_eq!(app.order(&one, "k2", &one_line("A", 1)).await.status(), StatusCode::CREATED);
    // Past the read-your-writes window of the last write to this shop, catalog reads are
    // served by the replica while the primary is down.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let product = app.get(&format!("/shops/{}/products/A", two.id)).send().await.unwrap();
    assert_eq!(product.status(), StatusCode::OK, "catalog reads continue from the replica");
    let metrics = app.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("vitrina_reads_total") && l.contains("node=\"replica\"") && l.contains("shard=\"shard2\"")));

    // The replica is promoted: writes resume without restarting vitrina.
    cluster(dir.path(), &["promote", "shard2-2"]);
    let t0 = Instant::now();
    loop {
        let r = app.order(&two, "k2", &one_line("A", 1)).await;
        if r.status() == StatusCode::CREATED {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "writes resume after the promotion, last {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.stock(&two, "A").await, (10, 2, 8));

    // A replica dies: its shard's reads go to the primary, and GET / says the replica is down.
    cluster(dir.path(), &["kill", "shard1-2"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(app.get(&format!("/shops/{}/products/A", one.id)).send().await.unwrap().status(), StatusCode::OK);
    let root = app.get_json("/").await;
    let shard1 = root["topology"]["store"]["shards"].as_array().unwrap().iter().find(|s| s["name"] == "shard1").unwrap().clone();
    let replica = shard1["nodes"].as_array().unwrap().iter().find(|n| n["role"] == "replica").unwrap().clone();
    assert_eq!(replica["reachable"], false, "{shard1}");
    app.stop().await.unwrap();
}
