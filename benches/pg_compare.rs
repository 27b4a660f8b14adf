//! Product reads and order placement through vitrina against one PostgreSQL shard, side by
//! side in one run with pgbench running the same SQL (prepared) on the same server.
//!
//! `cargo bench --bench pg_compare` (env: VITRINA_BENCH_PG_URL, default
//! postgres://postgres@127.0.0.1:5432/postgres; SECONDS per phase, default 10; CLIENTS, default 16).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_shop, instance_config};
use serde_json::json;
use vitrina::app::Application;
use vitrina::config::{Config, ShardConfig, StoreKind};

const DB: &str = "vitrina_bench";
const PRODUCTS: usize = 100;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn db_url(admin_url: &str) -> String {
    let (base, _) = admin_url.rsplit_once('/').expect("URL with a database");
    format!("{base}/{DB}")
}

async fn admin(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    let t = tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
    drop(c);
    let _ = t.await;
}

/// Runs `requests` from `clients` concurrent tasks for `secs`; returns completed per second.
async fn drive<F, Fut>(clients: usize, secs: u64, request: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (request, stop, done, seq) = (request.clone(), stop.clone(), done.clone(), seq.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    request(seq.fetch_add(1, Ordering::Relaxed)).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / elapsed
}

fn pgbench(url: &str, script: &str, clients: usize, secs: u64) -> f64 {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(script.as_bytes()).unwrap();
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", "2", "-T", &secs.to_string(), "-f"])
        .arg(file.path())
        .arg(url)
        .output()
        .expect("pgbench in PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .expect("pgbench reports tps")
}

/// pgbench's version of one product read: the statement `get_product` prepares
/// (`store/postgres/catalog.rs`).
const READ_SCRIPT: &str = "\\set n random(1, 100)
SELECT shop, sku, name, category, price_amount, currency, attributes, version, updated_at FROM products WHERE shop = 'bench' AND sku = 'SKU-' || :n;
";

/// pgbench's version of one order: the statements `store::transactions::orders::place` runs on
/// PostgreSQL, in its order and in one transaction, from the home check to the outbox row. The
/// placed order is answered as built, not read back.
const ORDER_SCRIPT: &str = "\\set n random(1, 100)
\\set k random(1, 1000000000000)
BEGIN;
SELECT pg_advisory_xact_lock_shared(hashtextextended('fence/' || 'bench', 0));
SELECT moved_to FROM shops WHERE id = 'bench';
SELECT pg_try_advisory_xact_lock(hashtextextended('bench' || '/' || 'pgb-' || :client_id || '-' || :k, 0));
SELECT request_hash, status_code, response FROM idempotency_keys WHERE shop = 'bench' AND key = 'pgb-' || :client_id || '-' || :k;
SELECT sku, name, price_amount, currency FROM products WHERE shop = 'bench' AND sku = ANY(ARRAY['SKU-' || :n]);
UPDATE stock SET reserved = reserved + 1, updated_at = now() WHERE shop = 'bench' AND sku = 'SKU-' || :n AND on_hand - reserved >= 1;
INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at) VALUES ('pgb-' || :client_id || '-' || :k, 'bench', 'c-1', 'placed', 999, 'USD', now(), now(), now());
INSERT INTO order_lines (order_id, line_no, sku, name, qty, unit_price, line_total) SELECT 'pgb-' || :client_id || '-' || :k, n::int - 1, sku, name, qty, unit_price, line_total FROM unnest(ARRAY['SKU-' || :n], ARRAY['Widget'], ARRAY[1::bigint], ARRAY[999::bigint], ARRAY[999::bigint]) WITH ORDINALITY AS l (sku, name, qty, unit_price, line_total, n);
INSERT INTO order_history (order_id, seq, status, at, reason) VALUES ('pgb-' || :client_id || '-' || :k, 1, 'placed', now(), NULL);
INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at) VALUES ('bench', 'pgb-' || :client_id || '-' || :k, '\\x00', 201, '{}', now());
INSERT INTO aggregate_sequences (aggregate, seq) VALUES ('bench/orders/pgb-' || :client_id || '-' || :k, 1) ON CONFLICT (aggregate) DO UPDATE SET seq = aggregate_sequences.seq + 1 RETURNING seq;
INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at) VALUES (md5(random()::text), 'bench', 'bench/orders/pgb-' || :client_id || '-' || :k, 'vitrina.order.placed', 1, '{}', now());
COMMIT;
";

fn main() {
    let admin_url = env_or("VITRINA_BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    let secs: u64 = env_or("SECONDS", "10").parse().unwrap();
    let clients: usize = env_or("CLIENTS", "16").parse().unwrap();
    let url = db_url(&admin_url);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        admin(&admin_url, &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await;
        admin(&admin_url, &format!("CREATE DATABASE {DB}")).await;

        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { store: StoreKind::Postgres, ..instance_config(dir.path()) };
        config.postgres.pool_size = clients;
        config.postgres.shards = vec![ShardConfig { name: "shard1".into(), primary: url.clone(), replicas: Vec::new() }];
        let app = Application::build(config).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
        let key = bench_shop(&client, &base, PRODUCTS).await;

        println!("one PostgreSQL shard, {clients} concurrent clients, {secs} s per phase");
        println!("{:<16} {:>12} {:>12} {:>8}", "operation", "vitrina/s", "pgbench/s", "ratio");
        let ours = {
            let (client, base) = (client.clone(), base.clone());
            drive(clients, secs, move |i| {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    let r =
                        client.get(format!("{base}/shops/bench/products/SKU-{}", i % PRODUCTS as u64 + 1)).send().await.unwrap();
                    assert_eq!(r.status(), reqwest::StatusCode::OK);
                }
            })
            .await
        };
        let theirs = tokio::task::spawn_blocking({
            let url = url.clone();
            move || pgbench(&url, READ_SCRIPT, clients, secs)
        })
        .await
        .unwrap();
        println!("{:<16} {:>12.0} {:>12.0} {:>7.2}x", "product read", ours, theirs, ours / theirs);

        let ours = {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            drive(clients, secs, move |i| {
                let (client, base, key) = (client.clone(), base.clone(), key.clone());
                async move {
                    let body =
                        json!({"customer_id": "c-1", "lines": [{"sku": format!("SKU-{}", i % PRODUCTS as u64 + 1), "qty": 1}]});
                    let r = client
                        .post(format!("{base}/shops/bench/orders"))
                        .bearer_auth(&key)
                        .header("idempotency-key", format!("v-{i}"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
                }
            })
            .await
        };
        let theirs = tokio::task::spawn_blocking({
            let url = url.clone();
            move || pgbench(&url, ORDER_SCRIPT, clients, secs)
        })
        .await
        .unwrap();
        println!("{:<16} {:>12.0} {:>12.0} {:>7.2}x", "order placement", ours, theirs, ours / theirs);

        let _ = stop.send(());
        server.await.unwrap().unwrap();
        admin(&admin_url, &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await;
    });
}
