//! Drills on a real local fleet started by `vitrina cluster up`: etcd, PostgreSQL shards run by
//! Patroni, Redis Cluster, vitrina instances behind HAProxy, each in its own processes on
//! loopback ports. They run once, in the default pass.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use vitrina::config::{Config, Overrides};
use vitrina::routing::{ring::DEFAULT_VNODES, Ring};

use crate::backend::Backend;
use crate::fleet::{unexpected, Answer, Fleet, OrderLoad};
use crate::helpers::{one_line, start, ReadLoad, Shop, ADMIN};

/// A shop id that the two-shard ring places on shard `k` (0-based).
fn on_shard(k: usize, prefix: &str) -> String {
    let ring = Ring::new(&["shard1".to_owned(), "shard2".to_owned()], DEFAULT_VNODES);
    (0..).map(|i| format!("{prefix}-{i}")).find(|id| ring.owner_index(id) == k).unwrap()
}

fn node_port(fleet: &Fleet, name: &str) -> u16 {
    let nodes = fleet.file["layout"]["postgres"].as_array().unwrap();
    nodes.iter().find(|n| n["name"] == name).unwrap()["port"].as_u64().unwrap() as u16
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

/// Pauses a replica's replay and waits until it has paused: `pg_wal_replay_pause()` only asks,
/// and WAL that arrives before the pause takes effect is still replayed.
async fn pause_replay(port: u16) {
    exec(port, "SELECT pg_wal_replay_pause()").await;
    let t0 = Instant::now();
    let url = format!("postgres://vitrina@127.0.0.1:{port}/vitrina");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    while client.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await.unwrap().get::<_, String>(0) != "paused" {
        assert!(t0.elapsed() < Duration::from_secs(10), "replay on :{port} paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    let _ = task.await;
}

/// Sends a signal by pid with the system's `kill`.
fn signal(pid: i32, sig: &str) -> i32 {
    std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().code().unwrap_or(-1)
}

/// Kills `shard`'s leader under `load` and waits until `shop` (index `which` in the load) is
/// written again; returns the write outage (first refusal to first success) and the old leader.
async fn fail_over(fleet: &Fleet, load: &OrderLoad, shard: &str, which: usize, log: &mut Vec<Answer>) -> (Duration, String) {
    let leader = fleet.leader(shard).expect("a leader");
    log.extend(load.take());
    fleet.cli(&["kill", &leader]);
    let killed = Instant::now();
    let (mut refused, mut resumed) = (None::<Instant>, None::<Instant>);
    let mut last = Vec::new();
    while resumed.is_none() {
        if killed.elapsed() > Duration::from_secs(45) {
            let logs = fleet.logs();
            panic!("writes to {shard} resume without a human step; last answers {last:?}\nstatus {}\n{logs}", fleet.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for a in load.take() {
            if a.shop == which && a.status != 201 && refused.is_none() {
                refused = Some(a.at);
            }
            if a.shop == which && a.status == 201 && refused.is_some() && resumed.is_none() {
                resumed = Some(a.at);
            }
            if a.shop == which {
                last.push(a.status);
            }
            log.push(a);
        }
        last.drain(..last.len().saturating_sub(10));
    }
    let outage = resumed.unwrap() - refused.unwrap();
    // Patroni's view in etcd follows the promotion by up to a loop (2 s): writes can resume first.
    let is_new = |s: &Value| s["postgres"][shard].as_object().unwrap().iter().any(|(n, v)| v["role"] == "leader" && *n != leader);
    fleet.wait_status("Patroni shows the new leader", Duration::from_secs(10), is_new).await;
    (outage, leader)
}

/// Every acknowledged order of `shop` is in the store, and `reserved` counts exactly the
/// orders the store holds. Returns how many acknowledged orders are missing.
async fn audit(fleet: &Fleet, shop: &Shop, which: usize, log: &[Answer]) -> usize {
    let held: HashSet<String> = fleet.order_ids(shop).await.into_iter().collect();
    let acked: Vec<&String> = log.iter().filter(|a| a.shop == which).filter_map(|a| a.order.as_ref()).collect();
    assert!(!acked.is_empty());
    let lost: Vec<&&String> = acked.iter().filter(|id| !held.contains(**id)).collect();
    if !lost.is_empty() {
        eprintln!("{} acknowledged orders of {} not held, e.g. {:?}", lost.len(), shop.id, &lost[..lost.len().min(5)]);
    }
    let lost = lost.len();
    assert_eq!(fleet.reserved(shop, "A").await, held.len() as i64, "reserved equals the orders held");
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the fleet engines (patroni, etcd, haproxy, redis-server, prometheus, alertmanager, exporters; .ci/services.sh installs them): cargo test -- --include-ignored"]
async fn the_fleet_rides_out_a_rolling_restart_crashes_and_a_failover() {
    // Once, in the default pass (the PostgreSQL pass leaves `cluster::` out): the fleet's
    // shards are PostgreSQL whichever store the suite runs on.
    crate::backend::require(Backend::Sqlite);
    let args = ["--shards", "2", "--replicas", "1", "--instances", "2", "--redis-cluster", "--monitoring"];
    let fleet = Fleet::up(21_000, &args).await;
    assert_eq!(fleet.file["instances"].as_array().unwrap().len(), 2);
    assert_eq!(fleet.file["redis"].as_array().unwrap().len(), 6);
    let scraped = "Prometheus scrapes every instance, Patroni and exporter";
    fleet.wait_for(scraped, Duration::from_secs(60), || fleet.targets_not_up(), |down| down.is_empty()).await;
    let one = fleet.shop(&on_shard(0, "fleet"), "A", 1_000_000).await;
    let two = fleet.shop(&on_shard(1, "fleet"), "A", 1_000_000).await;
    let product_urls =
        vec![fleet.url(&format!("/shops/{}/products/A", one.id)), fleet.url(&format!("/shops/{}/products/A", two.id))];
    let load = OrderLoad::start(&fleet, &[(&one, "A"), (&two, "A")], 4, Duration::from_millis(20));
    let mut log = Vec::new();
    // `Some(true|false)` as etcd answered, `None` when it did not answer the status in time.
    let registered = |s: &Value, name: &str| s["registered"].as_array().map(|a| a.iter().any(|n| n == name));

    // A rolling restart under load: nothing fails.
    let reads = ReadLoad::start(&fleet.client, product_urls.clone(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = fleet.cli(&["restart", "--rolling"]);
    let during = load.take();
    assert!(unexpected(&during).is_empty(), "rolling restart: {:?}", unexpected(&during));
    assert!(during.iter().filter(|a| a.status == 201).count() > 50, "orders went on: {out}");
    reads.finish().await;
    log.extend(during);

    // One instance SIGTERMed (as an orchestrator stops it): it withdraws, drains and exits, and
    // nothing fails.
    let pid: i32 = std::fs::read_to_string(fleet.dir.path().join("run/app2.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(signal(pid, "TERM"), 0);
    fleet.wait_status("app2 withdraws from the registry", Duration::from_secs(4), |s| registered(s, "app2") == Some(false)).await;
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "app2 exits once drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = load.take();
    assert!(unexpected(&stopped).is_empty(), "a SIGTERMed instance: {:?}", unexpected(&stopped));
    fleet.cli(&["start", "app2"]);
    fleet.wait_status("app2 registers itself again", Duration::from_secs(10), |s| registered(s, "app2") == Some(true)).await;
    log.extend(stopped);

    // One instance SIGKILLed: only what it held fails, and after the health checks nothing.
    fleet.cli(&["kill", "app1"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = load.take();
    assert!(unexpected(&killed).len() <= 4, "at most one request in flight per buyer: {:?}", unexpected(&killed));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = load.take();
    assert!(unexpected(&after).is_empty() && !after.is_empty(), "after the checks: {:?}", unexpected(&after));
    assert_eq!(fleet.status()["instances"]["app1"], "down");
    fleet
        .wait_status("app1's lease expires in the registry", Duration::from_secs(10), |s| registered(s, "app1") == Some(false))
        .await;
    fleet.cli(&["start", "app1"]);
    fleet.wait_status("app1 registers itself again", Duration::from_secs(10), |s| registered(s, "app1") == Some(true)).await;
    log.extend(killed.into_iter().chain(after).filter(|a| a.order.is_some()));

    // A Redis master killed: reads go on, its replica becomes master.
    let reads = ReadLoad::start(&fleet.client, product_urls.clone(), 2);
    let status = fleet.status();
    let master = status["redis"].as_object().unwrap().iter().find(|(_, r)| *r == "master").unwrap().0.clone();
    fleet.cli(&["kill", &master]);
    fleet
        .wait_status("a replica takes over the Redis master", Duration::from_secs(20), |s| {
            let roles = s["redis"].as_object().unwrap();
            roles[&master] == "down" && roles.values().filter(|r| *r == "master").count() == 3
        })
        .await;
    reads.finish().await;
    // Invalidations go on: a rename through the gateway reaches every instance's cache.
    let path = format!("/shops/{}/products/A", one.id);
    let renamed = serde_json::json!({"name": "after the master", "category": "c", "price": {"amount": 500, "currency": "USD"}});
    let put = fleet.client.put(fleet.url(&path)).bearer_auth(&one.key).json(&renamed).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    for instance in fleet.file["instances"].as_array().unwrap() {
        let url = format!("{}{path}", instance["url"].as_str().unwrap());
        let t0 = Instant::now();
        loop {
            let seen: Value = fleet.client.get(&url).send().await.unwrap().json().await.unwrap();
            if seen["name"] == "after the master" {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{} serves the rename: {seen}", instance["name"]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let paged = "Alertmanager routes RedisMasterLost to the on-call receiver";
    fleet
        .wait_for(paged, Duration::from_secs(60), || fleet.alerts(), |a| a.iter().any(|a| a == "RedisMasterLost - oncall"))
        .await;

    // Shard 2's leader dies: its writes get 503 with Retry-After, then resume by themselves;
    // shard 1 never stops; the old leader comes back as a replica.
    let (outage, old) = fail_over(&fleet, &load, "shard2", 1, &mut log).await;
    eprintln!("shard2 write outage: {outage:?}");
    fleet.cli(&["start", &old]);
    fleet
        .wait_status("the old leader rejoins as a replica", Duration::from_secs(60), |s| {
            s["postgres"]["shard2"][&old]["role"] == "replica"
        })
        .await;
    log.extend(load.finish().await);
    assert!(unexpected(&log).is_empty(), "{:?}", unexpected(&log));
    let shard1_during: Vec<&Answer> = log.iter().filter(|a| a.shop == 0 && a.status != 201).collect();
    assert!(shard1_during.is_empty(), "shard 1 is not touched by shard 2's failover: {shard1_during:?}");

    tokio::time::sleep(Duration::from_secs(2)).await; // past the replicas' lag budget
    assert_eq!(audit(&fleet, &one, 0, &log).await, 0);
    // Asynchronous replication: an acknowledged commit the replica had not received is lost
    // with the leader; the synchronous drill below shows none is.
    let lost = audit(&fleet, &two, 1, &log).await;
    eprintln!("asynchronous failover: {lost} acknowledged orders lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the fleet engines (patroni, etcd, haproxy, redis-server, prometheus, alertmanager, exporters; .ci/services.sh installs them): cargo test -- --include-ignored"]
async fn a_synchronous_standby_loses_no_acknowledged_order_in_a_failover() {
    // Once, in the default pass (the PostgreSQL pass leaves `cluster::` out): the fleet's
    // shards are PostgreSQL whichever store the suite runs on.
    crate::backend::require(Backend::Sqlite);
    let fleet = Fleet::up(29_000, &["--shards", "1", "--replicas", "2", "--instances", "1", "--synchronous"]).await;
    let shop = fleet.shop("sync-shop", "A", 1_000_000).await;
    let load = OrderLoad::start(&fleet, &[(&shop, "A")], 4, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut log = Vec::new();
    let (outage, old) = fail_over(&fleet, &load, "shard1", 0, &mut log).await;
    eprintln!("synchronous failover write outage: {outage:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    log.extend(load.finish().await);
    assert!(unexpected(&log).is_empty(), "{:?}", unexpected(&log));
    fleet.cli(&["start", &old]);
    fleet
        .wait_status("the old leader rejoins as a replica", Duration::from_secs(60), |s| {
            s["postgres"]["shard1"][&old]["role"] == "replica"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit(&fleet, &shop, 0, &log).await, 0, "no acknowledged order lost");

    // A manual switchover through Patroni; in synchronous mode only the synchronous standby
    // may take over (Patroni refuses another candidate). Writes follow the new leader.
    let sync_standby = |s: &Value| {
        s["postgres"]["shard1"].as_object().unwrap().iter().find(|(_, n)| n["sync_standby"] == true).map(|(name, _)| name.clone())
    };
    fleet.wait_status("a synchronous standby", Duration::from_secs(30), |s| sync_standby(s).is_some()).await;
    let candidate = sync_standby(&fleet.status()).unwrap();
    fleet.cli(&["promote", &candidate]);
    assert_eq!(fleet.leader("shard1"), Some(candidate));
    let body = serde_json::json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}]});
    let t0 = Instant::now();
    loop {
        let r = fleet.client.post(fleet.url(&format!("/shops/{}/orders", shop.id))).bearer_auth(&shop.key);
        let r = r.header("Idempotency-Key", "after-switchover").json(&body).send().await.unwrap();
        if r.status() == StatusCode::CREATED {
            break;
        }
        assert!(r.status() == StatusCode::SERVICE_UNAVAILABLE && t0.elapsed() < Duration::from_secs(15), "{}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// vitrina's own replica handling on a Patroni shard: rows reach the replica, a lagging replica
/// is skipped, read-your-writes holds across instances, a dead leader fails its shard's writes
/// fast and reads go on, and writes resume once Patroni has promoted the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the fleet engines (patroni, etcd, haproxy, redis-server, prometheus, alertmanager, exporters; .ci/services.sh installs them): cargo test -- --include-ignored"]
async fn replica_reads_on_patroni_shards() {
    // Once, in the default pass (the PostgreSQL pass leaves `cluster::` out): the fleet's
    // shards are PostgreSQL whichever store the suite runs on.
    crate::backend::require(Backend::Sqlite);
    let fleet = Fleet::up(25_000, &["--shards", "2", "--replicas", "1", "--instances", "1"]).await;
    let overrides = Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(fleet.dir.path().join("app")) };
    let naming = [("VITRINA_DISCOVERY__NAME", "drill"), ("VITRINA_DISCOVERY__ADVERTISE", "http://127.0.0.1:9")];
    let naming: Vec<(String, String)> = naming.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut config = Config::from_layers(Some(&fleet.dir.path().join("vitrina.toml")), &naming, &overrides).unwrap();
    // In-process instances beside the fleet's, not behind its gateway: they do not register.
    config.discovery.etcd.clear();
    config.admin_token = Some(ADMIN.into());
    let app = start(config).await;
    assert_eq!(app.get_json("/").await["mongo_topology_type"], "Sharded");

    let one = app.shop_with_stock(&on_shard(0, "drill"), "A", 10).await;
    let two = app.shop_with_stock(&on_shard(1, "drill"), "A", 10).await;
    let order: Value = app.order(&two, "k1", &one_line("A", 1)).await.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();

    // Rows land on their shard's leader and reach its replica.
    let (l1, l2) = (fleet.leader("shard1").unwrap(), fleet.leader("shard2").unwrap());
    let other = |l: &str| if l.ends_with("-1") { l.replace("-1", "-2") } else { l.replace("-2", "-1") };
    let (p1, r1, p2, r2) =
        (node_port(&fleet, &l1), node_port(&fleet, &other(&l1)), node_port(&fleet, &l2), node_port(&fleet, &other(&l2)));
    assert_eq!(count(p1, "SELECT count(*) FROM shops WHERE id = $1", &one.id).await, 1);
    assert_eq!(count(p2, "SELECT count(*) FROM shops WHERE id = $1", &one.id).await, 0);
    assert_eq!(count(p2, "SELECT count(*) FROM orders WHERE id = $1", &order_id).await, 1);
    let t0 = Instant::now();
    while count(r2, "SELECT count(*) FROM orders WHERE id = $1", &order_id).await == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the replica caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A replica past the lag budget is not read: pause its replay, change a product behind
    // vitrina's back on the leader, and the read still sees the change.
    pause_replay(r1).await;
    exec(p1, &format!("UPDATE products SET name = 'fresh' WHERE shop = '{}' AND sku = 'A'", one.id)).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(app.get_json(&format!("/shops/{}/products/A", one.id)).await["name"], "fresh", "a lagging replica is skipped");

    // Read-your-writes across instances: freeze shard 2's replica, write through one instance;
    // another with a generous lag budget reads the frozen replica unless the client brings the
    // token its write answered with.
    let mut other_config = app.state.config.clone();
    other_config.listen = "127.0.0.1:0".into();
    other_config.postgres.replica_lag_budget_ms = 600_000;
    let other_app = start(other_config).await;
    pause_replay(r2).await;
    let path = format!("/shops/{}/products/A", two.id);
    let body = serde_json::json!({"name": "renamed", "category": "c", "price": {"amount": 500, "currency": "USD"}});
    let put = app.put(&path).bearer_auth(&two.key).json(&body).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let token = put.headers()["vitrina-written-at"].to_str().unwrap().to_owned();
    assert_eq!(app.get_json(&path).await["name"], "renamed");
    // The other instance has probed the frozen replica (slow on a loaded machine).
    let t0 = Instant::now();
    loop {
        let root = other_app.get_json("/").await;
        let nodes: Vec<Value> = root["topology"]["store"]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["nodes"].as_array().unwrap().clone())
            .collect();
        let frozen = nodes.iter().find(|n| n["role"] == "replica" && n["address"].as_str().unwrap().contains(&format!(":{r2}")));
        if frozen.is_some_and(|n| n["reachable"] == true) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the other instance reaches the frozen replica: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(other_app.get_json(&path).await["name"], "Product A", "without the token: the frozen replica");
    let fresh: Value = other_app.get(&path).header("vitrina-read-after", &token).send().await.unwrap().json().await.unwrap();
    assert_eq!(fresh["name"], "renamed", "with the token: fresh");
    other_app.stop().await.unwrap();
    exec(r2, "SELECT pg_wal_replay_resume()").await;
    exec(r1, "SELECT pg_wal_replay_resume()").await;

    // Shard 2's leader dies: its writes fail fast, shard 1 is unaffected, reads go on, and
    // writes resume once Patroni has promoted the replica, without restarting vitrina.
    fleet.cli(&["kill", &l2]);
    let t0 = Instant::now();
    let r = app.order(&two, "k2", &one_line("A", 1)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t0.elapsed() < Duration::from_secs(3), "failed within the connect timeout, took {:?}", t0.elapsed());
    assert_eq!(app.order(&one, "k2", &one_line("A", 1)).await.status(), StatusCode::CREATED);
    // The refused write opened no read-your-writes window: its shop's pages stay on the replica.
    let r = app.get(&path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "catalog reads continue from the replica right after a refused write");
    // A read of the primary's data falls back to the replica and says it may be stale; the
    // fallbacks count against the primary, so its breaker opens and later reads skip it.
    let order_path = format!("/shops/{}/orders/{order_id}", two.id);
    for i in 0..8 {
        let r = app.get(&order_path).bearer_auth(&two.key).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "read {i} of an order on the dead primary's shard");
        assert_eq!(r.headers().get("vitrina-stale").map(|v| v.to_str().unwrap()), Some("1"), "read {i} says it may be stale");
    }
    let root = app.get_json("/").await;
    let shard2 = root["topology"]["store"]["shards"].as_array().unwrap().iter().find(|s| s["name"] == "shard2").unwrap().clone();
    assert_eq!(shard2["breaker"], "open", "the replica's answers do not close the primary's breaker: {shard2}");
    let r = app.get(&order_path).bearer_auth(&two.key).send().await.unwrap();
    assert_eq!((r.status(), r.headers().contains_key("vitrina-stale")), (StatusCode::OK, true), "served with the breaker open");
    let t0 = Instant::now();
    loop {
        let r = app.order(&two, "k2", &one_line("A", 1)).await;
        if r.status() == StatusCode::CREATED {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "writes resume after Patroni's failover, last {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.stock(&two, "A").await, (10, 2, 8));
    app.stop().await.unwrap();
}
