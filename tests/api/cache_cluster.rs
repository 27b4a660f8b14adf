//! L2 on a Redis Cluster this harness builds on loopback: three masters joined by
//! `redis-cli --cluster create`, then a reshard under read load so the client meets MOVED and
//! ASK redirections and must follow them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use vitrina::cache::config::RedisUrls;

use crate::helpers::{free_port, spawn_with, ReadLoad, TestApp};

/// Three cluster nodes; killed when dropped, so a failing test leaves no server behind.
struct Cluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(args).stdin(Stdio::null()).output().expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node(dir: &Path, port: u16) -> Child {
    let bus = free_port();
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--cluster-port", &bus.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--dir", dir.to_str().unwrap(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

/// A fresh three-master cluster; fails where Redis is not installed.
async fn cluster() -> Cluster {
    if let Err(e) = Command::new("redis-server").arg("--version").output() {
        panic!("redis-server is required: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes = ports.iter().map(|p| node(dir.path(), *p)).collect();
    let cluster = Cluster { ports, nodes, _dir: dir };
    for p in &cluster.ports {
        let t0 = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", *p)).await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "cluster node {p} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let addrs: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    cli(&args);
    for p in &cluster.ports {
        let t0 = Instant::now();
        while !cli(&["-p", &p.to_string(), "cluster", "info"]).contains("cluster_state:ok") {
            assert!(t0.elapsed() < Duration::from_secs(20), "cluster node {p} never reported ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster
}

async fn source(app: &TestApp, path: &str) -> (StatusCode, String) {
    let r = app.get(path).send().await.unwrap();
    let source = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (r.status(), source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo test -- --include-ignored"]
async fn l2_on_a_cluster_follows_a_reshard_without_a_failed_read() {
    let cluster = cluster().await;
    let urls: Vec<String> = cluster.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    let app = spawn_with(|c| {
        c.seed_on_start = false;
        c.cache.l1 = false;
        c.cache.redis_url = Some(RedisUrls::Many(urls));
        c.cache.namespace = format!("t{}", uuid::Uuid::now_v7().simple());
    })
    .await;
    assert_eq!(app.get_json("/").await["cache"]["redis_cluster"], true);
    let shop = app.create_shop("acme").await;
    let skus: Vec<String> = (0..30).map(|i| format!("SKU-{i}")).collect();
    for sku in &skus {
        app.put_product(&shop, sku, 100).await;
    }
    // Let the writes' own events come back on the bus before filling.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = skus.iter().map(|s| format!("/shops/acme/products/{s}")).collect();
    for p in &paths {
        assert_eq!(source(&app, p).await, (StatusCode::OK, "MISS".to_owned()));
        assert_eq!(source(&app, p).await, (StatusCode::OK, "HIT-L2".to_owned()), "{p} from the cluster");
    }

    let first = cluster.ports[0].to_string();
    let keys_on_first = || cli(&["-p", &first, "dbsize"]).trim().parse::<u64>().unwrap();
    let before = keys_on_first();
    assert!(before > 0, "the first node holds some of the entries");

    // Readers run while every slot of the first node moves to the second.
    let load = ReadLoad::start(&app.client, paths.iter().map(|p| app.url(p)).collect(), 2);
    let id = |p: u16| cli(&["-p", &p.to_string(), "cluster", "myid"]).trim().to_owned();
    let (from, to) = (id(cluster.ports[0]), id(cluster.ports[1]));
    let entry = format!("127.0.0.1:{}", cluster.ports[0]);
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || {
        // `--cluster create` gives the first of three masters slots 0-5460.
        cli(&[
            "--cluster",
            "reshard",
            &entry,
            "--cluster-from",
            &from,
            "--cluster-to",
            &to,
            "--cluster-slots",
            "5461",
            "--cluster-yes",
        ])
    })
    .await
    .unwrap();
    let resharding = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = load.finish().await;

    // The entries moved with their slots: the client follows MOVED to the new owner and hits.
    let mut sources = Vec::new();
    for p in &paths {
        sources.push(source(&app, p).await.1);
    }
    let hits = sources.iter().filter(|s| *s == "HIT-L2").count();
    assert_eq!(hits, paths.len(), "after the reshard: {sources:?}");
    assert_eq!(app.get_json("/").await["cache"]["breaker"], "closed");
    assert_eq!(keys_on_first(), 0, "its {before} keys moved with the slots");
    let owned = cli(&["-p", &first, "cluster", "nodes"]);
    let line = owned.lines().find(|l| l.contains("myself")).unwrap();
    assert!(line.split_whitespace().count() <= 8, "the first node still owns slots: {line}");
    eprintln!("{ok} reads during a {resharding:?} reshard, none failed; all {} entries hit after it", paths.len());
}
