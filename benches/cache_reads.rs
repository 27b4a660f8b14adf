//! The read cache, measured against references in the same run.
//!
//! 1. Throughput of a cached product GET through vitrina (L1; then L2 only, on Redis; then no
//!    cache) side by side with a bare axum endpoint answering the same JSON bytes.
//! 2. The database's transaction rate (`pg_stat_database`) during a read load on PostgreSQL,
//!    with and without the cache, next to the rate of an idle instance.
//! 3. The seed list `GET /helloDoc/users`: the first call, then the later ones.
//!
//! `cargo bench --bench cache_reads`; env: ONLY (comma-separated: seed, throughput, database),
//! DB_RUNS (comma-separated: none, l1, l2, idle), SECS (throughput runs, 10), LOAD_SECS (database
//! runs, 30), CONCURRENCY (16), VITRINA_BENCH_PG_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres; part 2 is skipped when it cannot connect),
//! VITRINA_BENCH_REDIS_URL (default redis://127.0.0.1:6379; the L2 run is skipped without it).

mod common;

use std::time::{Duration, Instant};

use axum::routing::get;
use common::{bench_shop, env_num, instance_config, run_for};
use vitrina::app::Application;
use vitrina::cache::config::RedisUrls;
use vitrina::config::{Config, ShardConfig, StoreKind};

const PRODUCTS: usize = 100;
const DB: &str = "vitrina_bench_cache";
const STATS_FLUSH: Duration = Duration::from_secs(11);

fn pg_admin_url() -> String {
    std::env::var("VITRINA_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("VITRINA_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tiers {
    L1,
    L2,
    None,
}

fn config(dir: &std::path::Path, tiers: Tiers) -> Config {
    let mut c = instance_config(dir);
    c.cache.l1 = tiers == Tiers::L1;
    c.cache.redis_url = (tiers == Tiers::L2).then(|| RedisUrls::One(redis_url()));
    c.cache.namespace = format!("bench{}", uuid::Uuid::now_v7().simple());
    c
}

struct Running {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve(config: Config) -> Running {
    let app = Application::build(config).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running { base, stop, server }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

fn client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap()
}

/// Requests per second of GETs over `urls`, round robin, `concurrency` at once.
async fn rate(client: &reqwest::Client, urls: Vec<String>, concurrency: usize, secs: f64) -> f64 {
    let (client, urls) = (client.clone(), std::sync::Arc::new(urls));
    let t0 = Instant::now();
    let (done, failed) = run_for(concurrency, secs, move |i| {
        let (client, urls) = (client.clone(), urls.clone());
        async move {
            match client.get(&urls[i % urls.len()]).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    assert_eq!(failed, 0, "{failed} of {done} requests failed");
    done as f64 / t0.elapsed().as_secs_f64()
}

fn product_urls(base: &str) -> Vec<String> {
    (1..=PRODUCTS).map(|i| format!("{base}/shops/bench/products/SKU-{i}")).collect()
}

/// The product reads plus a catalog page.
fn read_urls(base: &str) -> Vec<String> {
    let mut urls = product_urls(base);
    urls.push(format!("{base}/shops/bench/products?limit=20"));
    urls
}

fn on_postgres(dir: &std::path::Path, tiers: Tiers) -> Config {
    let mut c = config(dir, tiers);
    let admin = pg_admin_url();
    let (host, _) = admin.rsplit_once('/').unwrap();
    c.store = StoreKind::Postgres;
    c.postgres.shards = vec![ShardConfig { name: "shard1".into(), primary: format!("{host}/{DB}"), replicas: Vec::new() }];
    c
}

/// A bare axum server answering every GET with `body` as JSON.
async fn reference(body: bytes::Bytes) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/p/{sku}",
        get(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, task)
}

async fn throughput(secs: f64, concurrency: usize) {
    println!("## Product GET throughput, {concurrency} connections, {secs} s each\n");
    let client = client(concurrency);
    let mut tiers = vec![Tiers::L1, Tiers::None];
    if redis::Client::open(redis_url()).and_then(|c| c.get_connection().map(|_| ())).is_ok() {
        tiers.insert(1, Tiers::L2);
    } else {
        println!("(no Redis at {}: the L2 run is skipped)\n", redis_url());
    }
    let dir = tempfile::tempdir().unwrap();
    let body = {
        let app = serve(config(dir.path(), Tiers::None)).await;
        bench_shop(&client, &app.base, PRODUCTS).await;
        let body = client.get(format!("{}/shops/bench/products/SKU-1", app.base)).send().await.unwrap().bytes().await.unwrap();
        app.stop().await;
        body
    };
    let (ref_base, ref_task) = reference(body.clone()).await;
    let ref_urls: Vec<String> = (1..=PRODUCTS).map(|i| format!("{ref_base}/p/SKU-{i}")).collect();
    rate(&client, ref_urls.clone(), concurrency, 1.0).await;
    let bare = rate(&client, ref_urls.clone(), concurrency, secs).await;
    println!("| server | req/s | vs bare axum |\n|---|---|---|");
    println!("| bare axum, same {} B body | {bare:.0} | 1.00x |", body.len());
    for t in tiers {
        let app = serve(config(dir.path(), t)).await;
        let urls = product_urls(&app.base);
        rate(&client, urls.clone(), concurrency, 1.0).await; // fill the cache, warm connections
        let r = rate(&client, urls, concurrency, secs).await;
        let label = match t {
            Tiers::L1 => "vitrina, L1 hit",
            Tiers::L2 => "vitrina, L2 hit (Redis, no L1)",
            Tiers::None => "vitrina, no cache (SQLite read)",
        };
        println!("| {label} | {r:.0} | {:.2}x |", r / bare);
        app.stop().await;
    }
    // The reference once more, after: drift of the machine over the run.
    let again = rate(&client, ref_urls, concurrency, secs).await;
    println!("| bare axum again | {again:.0} | {:.2}x |\n", again / bare);
    ref_task.abort();
}

async fn pg(sql: &str) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(&pg_admin_url(), tokio_postgres::NoTls).await?;
    let t = tokio::spawn(conn);
    let rows = c.query(sql, &[]).await;
    drop(c);
    let _ = t.await;
    rows
}

/// Transactions the bench database has committed or rolled back so far.
async fn transactions() -> i64 {
    let rows =
        pg(&format!("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = '{DB}'")).await.unwrap();
    rows[0].get(0)
}

/// Database transactions per second, requests per second and the cache's store loads over
/// `secs` of read load (or of nothing, when `load` is false), on a fresh instance over data a
/// first one wrote.
async fn database_rate(tiers: Tiers, secs: f64, concurrency: usize, load: bool) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let client = client(concurrency);
    let app = serve(on_postgres(dir.path(), tiers)).await;
    bench_shop(&client, &app.base, PRODUCTS).await;
    rate(&client, read_urls(&app.base), concurrency, 1.0).await;
    app.stop().await;
    // Counted from a stopped instance to a stopped one; an idle backend reports its figures
    // within 10 s (PostgreSQL 15), so wait that out on both sides.
    tokio::time::sleep(STATS_FLUSH).await;
    let before = transactions().await;
    let app = serve(on_postgres(dir.path(), tiers)).await;
    let urls = read_urls(&app.base);
    let t0 = Instant::now();
    let requests = match load {
        true => rate(&client, urls, concurrency, secs).await * secs,
        false => {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            0.0
        }
    };
    let elapsed = t0.elapsed().as_secs_f64();
    let report: serde_json::Value = client.get(format!("{}/", app.base)).send().await.unwrap().json().await.unwrap();
    let loads = report["cache"]["loads"].as_u64().unwrap_or(0);
    let metrics = client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    let sum = |wanted: &dyn Fn(&str) -> bool| -> f64 {
        metrics.lines().filter(|l| wanted(l)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    let failed = sum(&|l| l.starts_with("vitrina_redis_seconds_count{") && !l.contains("result=\"ok\""));
    let skipped =
        sum(&|l| l.starts_with("vitrina_cache_requests_total{") && l.contains("tier=\"l2\"") && l.contains("result=\"error\""));
    if failed + skipped > 0.0 {
        println!("(so far in this process: {failed} Redis calls failed or timed out; {skipped} L2 lookups gave up)");
    }
    app.stop().await;
    tokio::time::sleep(STATS_FLUSH).await;
    let after = transactions().await;
    ((after - before) as f64 / elapsed, requests / elapsed, loads)
}

async fn database_load(secs: f64, concurrency: usize) {
    if pg("SELECT 1").await.is_err() {
        println!("(no PostgreSQL at {}: the database rate is skipped)\n", pg_admin_url());
        return;
    }
    println!("## PostgreSQL transactions per second during {secs} s of reads ({PRODUCTS} products + a catalog page)\n");
    println!("| instance | requests/s | db transactions/s | per request | cache loads |\n|---|---|---|---|---|");
    let mut runs = vec![(Tiers::None, true), (Tiers::L1, true)];
    if redis::Client::open(redis_url()).and_then(|c| c.get_connection().map(|_| ())).is_ok() {
        runs.push((Tiers::L2, true));
    }
    runs.push((Tiers::None, false));
    // DB_RUNS=l2,idle and the like picks some of them.
    let picked = std::env::var("DB_RUNS").unwrap_or_default();
    let name = |t: Tiers, load: bool| if load { format!("{t:?}").to_lowercase() } else { "idle".into() };
    runs.retain(|(t, load)| picked.is_empty() || picked.split(',').any(|p| p == name(*t, *load)));
    for (tiers, load) in runs {
        pg(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await.unwrap();
        pg(&format!("CREATE DATABASE {DB}")).await.unwrap();
        let (tx, rps, loads) = database_rate(tiers, secs, concurrency, load).await;
        let label = match (tiers, load) {
            (_, false) => "idle (bus tail, relay status)".to_owned(),
            (Tiers::None, _) => "no cache".to_owned(),
            (Tiers::L1, _) => "L1".to_owned(),
            (Tiers::L2, _) => "L2 only (Redis)".to_owned(),
        };
        let per = if rps > 0.0 { format!("{:.3}", tx / rps) } else { "-".into() };
        println!("| {label} | {rps:.0} | {tx:.0} | {per} | {loads} |");
    }
    pg(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).await.unwrap();
    println!();
}

async fn seed_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Tiers::L1);
    c.seed_on_start = true;
    let app = serve(c).await;
    let client = client(1);
    let url = format!("{}/helloDoc/users", app.base);
    let timed = || async {
        let t0 = Instant::now();
        let r = client.get(&url).send().await.unwrap();
        let cache = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let n = r.json::<serde_json::Value>().await.unwrap()["users"].as_array().unwrap().len();
        (t0.elapsed(), cache, n)
    };
    let (first, cache, n) = timed().await;
    let mut later = Vec::new();
    for _ in 0..200 {
        later.push(timed().await.0);
    }
    later.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("## Seed list GET /helloDoc/users ({n} users)\n");
    println!("| call | latency |\n|---|---|");
    println!("| first ({cache}) | {:.2} ms |", ms(first));
    println!("| later, p50 / p99 / max of 200 | {:.2} / {:.2} / {:.2} ms |\n", ms(later[100]), ms(later[197]), ms(later[199]));
    app.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_num("SECS", 10) as f64;
    let load_secs = env_num("LOAD_SECS", 30) as f64;
    let concurrency = env_num("CONCURRENCY", 16) as usize;
    let only = std::env::var("ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
    if part("seed") {
        seed_list().await;
    }
    if part("throughput") {
        throughput(secs, concurrency).await;
    }
    if part("database") {
        database_load(load_secs, concurrency).await;
    }
}
