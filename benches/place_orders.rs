//! Order placement throughput on the embedded store, side by side with a plain rusqlite loop
//! running the same SQL one transaction per order, at synchronous=FULL and NORMAL; plus the
//! cold start time to ready of the release binary.
//!
//! `cargo bench --bench place_orders` (env: ORDERS, CONCURRENCY, STARTS to resize).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_shop, env_num, instance_config, run_n, ADMIN};
use rusqlite::{params, Connection};
use serde_json::json;
use vitrina::app::Application;
use vitrina::config::{Config, Synchronous};

fn config(dir: &Path, sync: Synchronous) -> Config {
    let mut c = instance_config(dir);
    c.sqlite.synchronous = sync;
    c
}

/// This measures the store under `concurrency` callers; admission would refuse past its places
/// (what it does under overload is `benches/sale_day.sh`'s to measure), so it lets them all in.
fn http_config(dir: &Path, sync: Synchronous, concurrency: usize) -> Config {
    let mut c = config(dir, sync);
    c.admission.shop_writes = c.admission.shop_writes.max(concurrency);
    c.admission.shard_writes = c.admission.shard_writes.max(concurrency);
    c
}

/// Orders per second through the whole HTTP stack, `concurrency` clients at once.
async fn through_http(sync: Synchronous, orders: usize, concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let app = Application::build(http_config(dir.path(), sync, concurrency)).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let key = bench_shop(&client, &base, 1).await;

    let body = json!({"customer_id": "c-1", "lines": [{"sku": "SKU-1", "qty": 1}]});
    let url = format!("{base}/shops/bench/orders");
    let run = |n: usize, prefix: &'static str| {
        let (client, url, key, body) = (client.clone(), url.clone(), key.clone(), body.clone());
        run_n(concurrency, n, move |i| {
            let (client, url, key, body) = (client.clone(), url.clone(), key.clone(), body.clone());
            async move {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("idempotency-key", format!("{prefix}-{i}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), reqwest::StatusCode::CREATED);
            }
        })
    };
    run(orders / 10, "warm").await;
    let t0 = Instant::now();
    run(orders, "run").await;
    let rate = orders as f64 / t0.elapsed().as_secs_f64();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    rate
}

/// Orders per second through the store seam alone (no HTTP), `concurrency` tasks at once:
/// separates the group commit's effect from the cost of the HTTP stack.
async fn through_store(sync: Synchronous, orders: usize, concurrency: usize) -> f64 {
    use vitrina::catalog::{PriceBody, ProductBody};
    use vitrina::money::Currency;
    use vitrina::orders::{PlaceOrder, PlaceOutcome, WantedLine};
    use vitrina::shops::{hash_secret, NewShop, ShopId};
    use vitrina::store::Shard;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Shard> = Arc::new(
        vitrina::store::sqlite::SqliteStore::open(&dir.path().join("s.db"), &config(dir.path(), sync).sqlite, "bench", 64)
            .unwrap(),
    );
    let usd = Currency::parse("USD").unwrap();
    let shop = ShopId::parse("bench").unwrap();
    let now = chrono::Utc::now();
    store
        .create_shop(NewShop {
            id: shop.clone(),
            name: "Bench".into(),
            currency: usd,
            api_key_hash: hash_secret("k"),
            created_at: now,
        })
        .await
        .unwrap();
    let product = ProductBody {
        name: "Widget".into(),
        category: "c".into(),
        price: PriceBody { amount: 999, currency: "USD".into() },
        attributes: None,
    };
    store.upsert_product(&shop, product.validate("SKU-1", usd).unwrap(), now).await.unwrap();
    store.set_stock(&shop, "SKU-1", 1_000_000_000, now).await.unwrap();

    let run = |n: usize, prefix: &'static str| {
        let (store, shop) = (store.clone(), shop.clone());
        run_n(concurrency, n, move |i| {
            let (store, shop) = (store.clone(), shop.clone());
            async move {
                let now = chrono::Utc::now();
                let order = PlaceOrder {
                    id: uuid::Uuid::now_v7().to_string(),
                    customer_id: "c-1".into(),
                    currency: usd,
                    lines: vec![WantedLine { sku: "SKU-1".into(), qty: 1 }],
                    idempotency_key: format!("{prefix}-{i}"),
                    fingerprint: [0; 32],
                    now,
                    expires_at: now,
                };
                assert!(matches!(store.place_order(&shop, order).await.unwrap(), PlaceOutcome::Created(_)));
            }
        })
    };
    run(orders / 10, "warm").await;
    let t0 = Instant::now();
    run(orders, "run").await;
    let rate = orders as f64 / t0.elapsed().as_secs_f64();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.close()).await.unwrap();
    rate
}

/// The same SQL as the store's placement, one transaction (one fsync) per order, one thread.
fn plain_rusqlite(sync: Synchronous, orders: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.db");
    // The schema comes from vitrina's own migrations so both sides run on identical tables.
    vitrina::store::sqlite::SqliteStore::open(&path, &config(dir.path(), sync).sqlite, "bench", 64).unwrap();
    let c = Connection::open(&path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", sync.pragma()).unwrap();
    c.pragma_update(None, "foreign_keys", "ON").unwrap();
    let now = "2026-11-21T00:00:00.000000Z";
    c.execute(
        "INSERT INTO shops (id, name, currency, api_key_hash, created_at) VALUES ('bench', 'Bench', 'USD', x'00', ?1)",
        [now],
    )
    .unwrap();
    c.execute("INSERT INTO products VALUES ('bench', 'SKU-1', 'Widget', 'c', 999, 'USD', '{}', 1, ?1)", [now]).unwrap();
    c.execute("INSERT INTO stock VALUES ('bench', 'SKU-1', 1000000000, 0, ?1)", [now]).unwrap();

    let place = |i: usize| {
        let id = uuid::Uuid::now_v7().to_string();
        let key = format!("k-{i}");
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        let seen: Option<i64> = c
            .prepare_cached("SELECT status_code FROM idempotency_keys WHERE shop = ?1 AND key = ?2")
            .unwrap()
            .query_row(params!["bench", key], |r| r.get(0))
            .ok();
        assert!(seen.is_none());
        let (name, price): (String, i64) = c
            .prepare_cached("SELECT name, price_amount FROM products WHERE shop = ?1 AND sku = ?2")
            .unwrap()
            .query_row(params!["bench", "SKU-1"], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        let taken = c
            .prepare_cached("UPDATE stock SET reserved = reserved + ?3, updated_at = ?4 WHERE shop = ?1 AND sku = ?2 AND on_hand - reserved >= ?3")
            .unwrap()
            .execute(params!["bench", "SKU-1", 1, now])
            .unwrap();
        assert_eq!(taken, 1);
        c.prepare_cached("INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at) VALUES (?1, ?2, ?3, 'placed', ?4, 'USD', ?5, ?5, ?5)")
            .unwrap()
            .execute(params![id, "bench", "c-1", price, now])
            .unwrap();
        c.prepare_cached("INSERT INTO order_lines VALUES (?1, 0, ?2, ?3, 1, ?4, ?4)")
            .unwrap()
            .execute(params![id, "SKU-1", name, price])
            .unwrap();
        c.prepare_cached("INSERT INTO order_history VALUES (?1, 1, 'placed', ?2, NULL)")
            .unwrap()
            .execute(params![id, now])
            .unwrap();
        let response = json!({"id": id, "shop": "bench", "customer_id": "c-1", "status": "placed",
            "lines": [{"sku": "SKU-1", "name": name, "qty": 1, "unit_price": {"amount": price, "currency": "USD"}, "line_total": {"amount": price, "currency": "USD"}}],
            "total": {"amount": price, "currency": "USD"}, "history": [{"status": "placed", "at": now}],
            "created_at": now, "updated_at": now, "expires_at": now})
        .to_string();
        c.prepare_cached("INSERT INTO idempotency_keys VALUES (?1, ?2, x'00', 201, ?3, ?4)")
            .unwrap()
            .execute(params!["bench", key, response, now])
            .unwrap();
        let moved: Option<String> =
            c.prepare_cached("SELECT moved_to FROM shops WHERE id = ?1").unwrap().query_row(["bench"], |r| r.get(0)).unwrap();
        assert!(moved.is_none());
        let aggregate = format!("bench/orders/{id}");
        let seq: i64 = c
            .prepare_cached(
                "INSERT INTO aggregate_sequences (aggregate, seq) VALUES (?1, 1)
                 ON CONFLICT (aggregate) DO UPDATE SET seq = seq + 1 RETURNING seq",
            )
            .unwrap()
            .query_row([&aggregate], |r| r.get(0))
            .unwrap();
        let event_id = uuid::Uuid::now_v7().to_string();
        let envelope = json!({"specversion": "1.0", "id": event_id, "source": "/shops/bench", "type": "vitrina.order.placed",
            "subject": aggregate, "time": now, "sequence": seq, "data": response})
        .to_string();
        c.prepare_cached(
            "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .unwrap()
        .execute(params![event_id, "bench", aggregate, "vitrina.order.placed", seq, envelope, now])
        .unwrap();
        c.execute_batch("COMMIT").unwrap();
    };
    for i in 0..orders / 10 {
        place(i);
    }
    let t0 = Instant::now();
    for i in 0..orders {
        place(orders + i);
    }
    orders as f64 / t0.elapsed().as_secs_f64()
}

/// Wall time from spawning the release binary to `/health/ready` answering 200.
fn cold_start(dir: &Path) -> Duration {
    let exe = env!("CARGO_BIN_EXE_vitrina");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t0 = Instant::now();
    let mut child = std::process::Command::new(exe)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("VITRINA_ADMIN_TOKEN", ADMIN)
        .env("VITRINA_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /health/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() && &buf[9..12] == b"200" {
                break t0.elapsed();
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "did not become ready");
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = child.kill();
    let _ = child.wait();
    ready
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let orders = env_num("ORDERS", 3000) as usize;
    let concurrency = env_num("CONCURRENCY", 64) as usize;
    let starts = env_num("STARTS", 5) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    println!("order placement, {orders} orders; vitrina with {concurrency} concurrent callers; plain loop: one thread, one transaction per order");
    println!(
        "{:<8} {:>12} {:>14} {:>12} {:>12} {:>13}",
        "sync", "plain loop/s", "vitrina HTTP/s", "HTTP ratio", "store seam/s", "store ratio"
    );
    for sync in [Synchronous::Full, Synchronous::Normal] {
        let plain = plain_rusqlite(sync, orders);
        let http = rt.block_on(through_http(sync, orders, concurrency));
        let store = rt.block_on(through_store(sync, orders, concurrency));
        println!(
            "{:<8} {:>12.0} {:>14.0} {:>11.2}x {:>12.0} {:>12.2}x",
            sync.pragma(),
            plain,
            http,
            http / plain,
            store,
            store / plain
        );
    }

    let fresh: Vec<Duration> = (0..starts).map(|_| cold_start(tempfile::tempdir().unwrap().path())).collect();
    let dir = tempfile::tempdir().unwrap();
    cold_start(dir.path());
    let warm: Vec<Duration> = (0..starts).map(|_| cold_start(dir.path())).collect();
    println!(
        "cold start to ready (median of {starts}): empty data dir (migrate + seed) {:?}, existing data dir {:?}",
        median(fresh),
        median(warm)
    );
}
