use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use vitrina::app::Application;
use vitrina::clock::Clock;
use vitrina::config::Config;
use vitrina::state::AppState;

use crate::backend;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub state: AppState,
    pub clock: Clock,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    owned_dir: Option<tempfile::TempDir>,
    /// PostgreSQL databases behind this app; dropped with the app that owns its dir.
    pub databases: Vec<String>,
}

pub struct Shop {
    pub id: String,
    pub key: String,
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tune: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_in(dir.path(), tune).await;
    app.owned_dir = Some(dir);
    app
}

/// The database (on PostgreSQL) that belongs to a data directory, so a restart over the same
/// directory finds the same data on either backend.
async fn database_for(data_dir: &std::path::Path) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BY_DIR: Mutex<Option<HashMap<std::path::PathBuf, String>>> = Mutex::new(None);
    if backend::backend() != backend::Backend::Postgres {
        return None;
    }
    if let Some(db) = BY_DIR.lock().unwrap().get_or_insert_with(HashMap::new).get(data_dir) {
        return Some(db.clone());
    }
    let db = backend::fresh_database().await;
    BY_DIR.lock().unwrap().get_or_insert_with(HashMap::new).insert(data_dir.to_owned(), db.clone());
    Some(db)
}

/// Configuration of a test instance: loopback port 0, a known admin token.
pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_owned(),
        admin_token: Some(ADMIN.into()),
        shutdown_grace_secs: 5,
        ..Config::default()
    };
    // The tests' webhook receivers listen on loopback, which production refuses by default.
    config.events.webhooks.allowed_ranges = vec!["127.0.0.0/8".into(), "::1/128".into()];
    config
}

/// An app over an existing data directory, e.g. to restart over the same store.
pub async fn spawn_in(data_dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(data_dir);
    let database = database_for(data_dir).await;
    if let Some(db) = &database {
        backend::use_database(&mut config, db);
    }
    tune(&mut config);
    let mut app = start(config).await;
    app.databases.extend(database);
    app
}

/// Starts an app from a finished configuration.
pub async fn start(config: Config) -> TestApp {
    let clock = Clock::manual(chrono::Utc::now());
    let app = Application::build_with_clock(config, clock.clone()).await.expect("app builds");
    let addr = app.local_addr();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let client = Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(64).build().unwrap();
    let t = TestApp {
        base: format!("http://{addr}"),
        client,
        state,
        clock,
        stop: Some(tx),
        server: Some(server),
        owned_dir: None,
        databases: Vec::new(),
    };
    // Ready once the server task has flipped readiness on.
    for _ in 0..200 {
        if t.state.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }
    pub fn put(&self, path: &str) -> RequestBuilder {
        self.client.put(self.url(path))
    }
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path))
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    /// GET with a shop's key.
    pub async fn get_json_as(&self, path: &str, key: &str) -> Value {
        self.get(path).bearer_auth(key).send().await.unwrap().json().await.unwrap()
    }

    pub async fn create_shop(&self, id: &str) -> Shop {
        let r = self
            .post("/shops")
            .bearer_auth(ADMIN)
            .json(&json!({"id": id, "name": format!("Shop {id}"), "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        Shop { id: id.into(), key: body["api_key"].as_str().unwrap().into() }
    }

    pub async fn put_product(&self, shop: &Shop, sku: &str, cents: i64) -> Value {
        let r = self
            .put(&format!("/shops/{}/products/{sku}", shop.id))
            .bearer_auth(&shop.key)
            .json(
                &json!({"name": format!("Product {sku}"), "category": "general", "price": {"amount": cents, "currency": "USD"}}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "put product: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn set_stock(&self, shop: &Shop, sku: &str, on_hand: i64) {
        let r = self
            .put(&format!("/shops/{}/stock/{sku}", shop.id))
            .bearer_auth(&shop.key)
            .json(&json!({ "on_hand": on_hand }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    pub async fn stock(&self, shop: &Shop, sku: &str) -> (i64, i64, i64) {
        let v = self.get_json(&format!("/shops/{}/stock/{sku}", shop.id)).await;
        (v["on_hand"].as_i64().unwrap(), v["reserved"].as_i64().unwrap(), v["available"].as_i64().unwrap())
    }

    /// A shop with one product at 5.00 USD and the given stock.
    pub async fn shop_with_stock(&self, id: &str, sku: &str, on_hand: i64) -> Shop {
        let shop = self.create_shop(id).await;
        self.put_product(&shop, sku, 500).await;
        self.set_stock(&shop, sku, on_hand).await;
        shop
    }

    pub async fn order(&self, shop: &Shop, key: &str, body: &Value) -> Response {
        self.post(&format!("/shops/{}/orders", shop.id))
            .bearer_auth(&shop.key)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn order_count(&self, shop: &Shop) -> usize {
        let v = self.get_json_as(&format!("/shops/{}/orders?limit=100", shop.id), &shop.key).await;
        v["items"].as_array().unwrap().len()
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Apps over a borrowed directory (restarts) leave the database to the directory's owner.
        if self.owned_dir.is_some() {
            for db in self.databases.drain(..) {
                backend::drop_database(db);
            }
        }
    }
}

pub fn one_line(sku: &str, qty: i64) -> Value {
    json!({"customer_id": "cust-1", "lines": [{"sku": sku, "qty": qty}]})
}

pub async fn problem(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body: Value = r.json().await.unwrap();
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(ct, "application/problem+json", "errors are problem documents: {body}");
        assert!(body["code"].is_string(), "problem has a code: {body}");
    }
    (status, body)
}

/// A loopback port free at the time of asking, for a server a test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Readers GETting `urls` round robin, back to back, until `finish`: for tests that break
/// something under load and must see no read fail.
pub struct ReadLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    readers: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl ReadLoad {
    pub fn start(client: &Client, urls: Vec<String>, readers: usize) -> ReadLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers = (0..readers)
            .map(|r| {
                let (client, urls, stop) = (client.clone(), urls.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed, mut i) = (0u64, Vec::new(), r);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match client.get(&urls[i % urls.len()]).send().await {
                            Ok(resp) if resp.status() == StatusCode::OK => ok += 1,
                            Ok(resp) => failed.push(resp.status().to_string()),
                            Err(e) => failed.push(e.to_string()),
                        }
                        i += 1;
                    }
                    (ok, failed)
                })
            })
            .collect();
        ReadLoad { stop, readers }
    }

    /// Stops the readers, asserts that none of their reads failed, and returns how many there were.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for r in self.readers {
            let (o, f) = r.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} of {} reads failed: {:?}",
            failed.len(),
            ok + failed.len() as u64,
            &failed[..5.min(failed.len())]
        );
        ok
    }
}

/// This machine's standard loopback addresses of the services some tests need.
pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const NATS: &str = "nats://127.0.0.1:4222";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A service's URL: `var` if set, else `default`. The tests that need a service are ignored by
/// default, with what they need as the reason (`cargo test -- --include-ignored` runs them); run,
/// they fail where the service does not answer: none passes without it.
pub fn service(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}
