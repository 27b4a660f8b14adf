//! The real binary as a process: acknowledged writes survive SIGKILL, and SIGHUP reloads the
//! storage configuration without a restart.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{free_port, ADMIN};

/// A vitrina process that is killed when the test lets go of it, failed assertions included.
struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, port: u16) -> Server {
    start_with(port, &["--data-dir", dir.to_str().unwrap()])
}

fn start_with(port: u16, args: &[&str]) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_vitrina"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("VITRINA_ADMIN_TOKEN", ADMIN)
            .env("VITRINA_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vitrina"),
    )
}

/// Shop `acme` selling each SKU at 1.00 USD with the given stock; its API key.
async fn stocked_shop(client: &reqwest::Client, base: &str, stock: &[(&str, i64)]) -> String {
    let shop: Value = client
        .post(format!("{base}/shops"))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "acme", "name": "ACME", "currency": "USD"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = shop["api_key"].as_str().unwrap().to_owned();
    for (sku, on_hand) in stock {
        let product = json!({"name": sku, "category": "c", "price": {"amount": 100, "currency": "USD"}});
        let r = client.put(format!("{base}/shops/acme/products/{sku}")).bearer_auth(&key).json(&product).send().await.unwrap();
        assert!(r.status().is_success());
        let r = client
            .put(format!("{base}/shops/acme/stock/{sku}"))
            .bearer_auth(&key)
            .json(&json!({"on_hand": on_hand}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    key
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("vitrina did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_survive_a_kill_on_the_embedded_store() {
    crate::backend::require(crate::backend::Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;

    let key = stocked_shop(&client, &base, &[("A", 1000)]).await;

    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            tokio::spawn(async move {
                // Sixty at once are more than one shop's places: a refused buyer comes back
                // when told to, under the same key, as a real client does.
                for _ in 0..20 {
                    let r = client
                        .post(format!("{base}/shops/acme/orders"))
                        .bearer_auth(&key)
                        .header("idempotency-key", format!("crash-{i}"))
                        .json(&json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}]}))
                        .send()
                        .await
                        .unwrap();
                    if matches!(r.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
                        let wait = r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap();
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        continue;
                    }
                    assert_eq!(r.status(), StatusCode::CREATED);
                    return r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                }
                panic!("order crash-{i} refused twenty times");
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.push(t.await.unwrap());
    }
    child.kill().unwrap(); // SIGKILL: no drain, no flush, no clean close
    child.wait().unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;
    for id in &acknowledged {
        let r = client.get(format!("{base}/shops/acme/orders/{id}")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged order {id} survived");
    }
    let stock: Value = client.get(format!("{base}/shops/acme/stock/A")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stock["reserved"], 60);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_storage_configuration_on_the_embedded_store() {
    crate::backend::require(crate::backend::Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vitrina.toml");
    let write_config =
        |data: &str| std::fs::write(&config, format!("data_dir = \"{}\"\n", dir.path().join(data).display())).unwrap();
    write_config("first");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_with(port, &["--config", config.to_str().unwrap()]);
    wait_ready(&client, &base).await;
    let create = |id: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .post(format!("{base}/shops"))
                .bearer_auth(ADMIN)
                .json(&json!({"id": id, "name": id, "currency": "USD"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(create("alpha").await, StatusCode::CREATED);

    // The configuration now names another store; SIGHUP makes the running process switch to it.
    write_config("second");
    let st = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    while client.get(format!("{base}/shops/alpha")).send().await.unwrap().status() != StatusCode::NOT_FOUND {
        assert!(t0.elapsed() < Duration::from_secs(10), "the reload took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(create("beta").await, StatusCode::CREATED);
    assert!(dir.path().join("second/vitrina.db").exists());
    assert_eq!(client.get(format!("{base}/health/ready")).send().await.unwrap().status(), StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// How a process reaches the store under test: the data dir, or a fresh PostgreSQL database.
async fn store_args(dir: &std::path::Path) -> (Vec<String>, Option<String>) {
    if crate::backend::backend() != crate::backend::Backend::Postgres {
        return (vec!["--data-dir".into(), dir.to_str().unwrap().into()], None);
    }
    let db = crate::backend::fresh_database().await;
    let config = dir.join("vitrina.toml");
    let url = crate::backend::url_for(&db);
    std::fs::write(&config, format!("store = \"postgres\"\n[[postgres.shards]]\nname = \"shard1\"\nprimary = \"{url}\"\n"))
        .unwrap();
    (vec!["--config".into(), config.to_str().unwrap().into()], Some(db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_groups_commit_loses_no_acknowledged_order_and_keeps_no_refused_one() {
    let dir = tempfile::tempdir().unwrap();
    let (args, db) = store_args(dir.path()).await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_with(port, &args);
    wait_ready(&client, &base).await;
    // A sells out and is refused from then on; B keeps groups committing until the kill.
    let key = stocked_shop(&client, &base, &[("A", 120), ("B", 1_000_000)]).await;

    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, StatusCode)>::new()));
    let buyers: Vec<_> = (0..40)
        .map(|i| {
            let (client, base, key, answered) = (client.clone(), base.clone(), key.clone(), answered.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let buyer = format!("b{i}-{n}");
                    let sku = if n % 2 == 0 { "A" } else { "B" };
                    let sent = client
                        .post(format!("{base}/shops/acme/orders"))
                        .bearer_auth(&key)
                        .header("idempotency-key", &buyer)
                        .json(&json!({"customer_id": buyer, "lines": [{"sku": sku, "qty": 1}]}))
                        .send()
                        .await;
                    // The kill: what was in flight is neither acknowledged nor refused.
                    let Ok(r) = sent else { return };
                    answered.lock().unwrap().push((buyer, r.status()));
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    loop {
        let (total, refused) = {
            let a = answered.lock().unwrap();
            (a.len(), a.iter().filter(|(_, s)| *s == StatusCode::CONFLICT).count())
        };
        if total >= 400 && refused >= 20 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "only {total} answers, {refused} refusals in a minute");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL while the buyers keep ordering
    child.wait().unwrap();
    for b in buyers {
        b.await.unwrap();
    }

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start_with(port, &args);
    wait_ready(&client, &base).await;
    let mut present = std::collections::HashSet::new();
    let mut path = format!("{base}/shops/acme/orders?limit=100");
    loop {
        let page: Value = client.get(&path).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
        for o in page["items"].as_array().unwrap() {
            present.insert(o["customer_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("{base}/shops/acme/orders?limit=100&cursor={c}"),
            None => break,
        }
    }
    let answered = answered.lock().unwrap().clone();
    for (buyer, status) in &answered {
        match *status {
            StatusCode::CREATED => assert!(present.contains(buyer), "acknowledged order {buyer} was lost"),
            s if s == StatusCode::CONFLICT || s.as_u16() >= 429 => {
                assert!(!present.contains(buyer), "order {buyer}, answered {s}, was placed after all")
            }
            s => panic!("unexpected answer {s} to {buyer}"),
        }
    }
    let mut reserved = 0;
    for sku in ["A", "B"] {
        let stock: Value = client.get(format!("{base}/shops/acme/stock/{sku}")).send().await.unwrap().json().await.unwrap();
        reserved += stock["reserved"].as_i64().unwrap();
    }
    assert_eq!(reserved as usize, present.len(), "every reserved unit belongs to a stored order");
    child.kill().unwrap();
    child.wait().unwrap();
    if let Some(db) = db {
        crate::backend::drop_database(db);
    }
}
