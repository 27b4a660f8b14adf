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
async fn acknowledged_orders_survive_a_kill() {
    if crate::backend::skip_unless_sqlite("the embedded store's durability after SIGKILL") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;

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
    client
        .put(format!("{base}/shops/acme/products/A"))
        .bearer_auth(&key)
        .json(&json!({"name": "A", "category": "c", "price": {"amount": 100, "currency": "USD"}}))
        .send()
        .await
        .unwrap();
    client.put(format!("{base}/shops/acme/stock/A")).bearer_auth(&key).json(&json!({"on_hand": 1000})).send().await.unwrap();

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
async fn sighup_reloads_the_storage_configuration() {
    if crate::backend::skip_unless_sqlite("reloading between two embedded data dirs") {
        return;
    }
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
