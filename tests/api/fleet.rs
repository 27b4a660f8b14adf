//! A real local fleet for drills, started by `vitrina cluster up` in a temporary directory and
//! taken down however the test ends; and an order load that logs every answer.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::helpers::Shop;

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub file: Value,
    pub client: Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_vitrina"))
            .args(["cluster", "down", "--purge", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}

/// The engines a fleet needs (every option the drills use), or the reason it cannot run here.
fn installed() -> Result<(), String> {
    let everything = vitrina_cluster::Shape {
        shards: 1,
        replicas: 1,
        instances: 1,
        redis_cluster: true,
        synchronous: true,
        monitoring: true,
        base_port: 0,
    };
    vitrina_cluster::check_installed(&everything).map_err(|e| e.to_string())
}

/// A free block of `len` ports within 3000 above `from` (each drill has its own range, so two
/// starting at once do not plan the same ports): after a load test the ephemeral range can be
/// crowded with closing connections for a minute.
fn free_block(from: u16, len: u16) -> u16 {
    (0..400u16)
        .map(|i| from + ((std::process::id() % 50) as u16 * len + i * len) % (3_000 - len))
        .find(|base| (0..len).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()))
        .expect("a free block of ports")
}

impl Fleet {
    /// `cluster up` with `args`, ports from `from` upwards; fails where an engine is missing.
    pub async fn up(from: u16, args: &[&str]) -> Fleet {
        if let Err(e) = installed() {
            panic!("the fleet's engines are required: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        // Private, as `mktemp -d` makes it: the tool must find its servers a place regardless.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let base = free_block(from, 60).to_string();
        let mut fleet = Fleet { dir, file: Value::Null, client: Client::new() };
        let mut all = vec!["up", "--base-port", &base];
        all.extend(args);
        fleet.cli(&all);
        fleet.file = serde_json::from_str(&std::fs::read_to_string(fleet.dir.path().join("cluster.json")).unwrap()).unwrap();
        fleet
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vitrina"))
            .arg("cluster")
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "vitrina cluster {args:?}: {text}");
        text
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.cli(&["status", "--json"])).unwrap()
    }

    /// Each PostgreSQL node's role in `shard`.
    pub fn roles(&self, shard: &str) -> BTreeMap<String, String> {
        let s = self.status();
        s["postgres"][shard].as_object().unwrap().iter().map(|(n, v)| (n.clone(), v["role"].as_str().unwrap().into())).collect()
    }

    pub fn leader(&self, shard: &str) -> Option<String> {
        self.roles(shard).into_iter().find(|(_, r)| r == "leader").map(|(n, _)| n)
    }

    /// Polls `cond` on the status every 300 ms until it holds, within `limit`.
    pub async fn wait_status(&self, what: &str, limit: Duration, cond: impl Fn(&Value) -> bool) {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if cond(&s) {
                return;
            }
            assert!(t0.elapsed() < limit, "{what} within {limit:?}; status: {s}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn monitoring_url(&self, which: &str) -> String {
        let port = self.file["layout"]["monitoring"][format!("{which}_port")].as_u64().expect("a fleet with --monitoring");
        format!("http://127.0.0.1:{port}")
    }

    /// The scrape targets Prometheus does not see up, as `job instance: error`.
    pub async fn targets_not_up(&self) -> Vec<String> {
        let url = format!("{}/api/v1/targets", self.monitoring_url("prometheus"));
        let v: Value = match self.client.get(url).send().await {
            Ok(r) => r.json().await.unwrap(),
            Err(e) => return vec![e.to_string()],
        };
        let targets = v["data"]["activeTargets"].as_array().unwrap();
        if targets.is_empty() {
            return vec!["no target discovered yet".into()];
        }
        targets
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| format!("{} {}: {}", t["labels"]["job"], t["labels"]["instance"], t["lastError"]))
            .collect()
    }

    /// The alerts Alertmanager holds, as `name scope receiver`.
    pub async fn alerts(&self) -> Vec<String> {
        let url = format!("{}/api/v2/alerts", self.monitoring_url("alertmanager"));
        let v: Value = match self.client.get(url).send().await {
            Ok(r) => r.json().await.unwrap(),
            Err(e) => return vec![e.to_string()],
        };
        let alert = |a: &Value| {
            let l = &a["labels"];
            let scope = l["scope"].as_str().unwrap_or("-");
            format!("{} {scope} {}", l["alertname"].as_str().unwrap(), a["receivers"][0]["name"].as_str().unwrap())
        };
        v.as_array().unwrap().iter().map(alert).collect()
    }

    /// Polls `cond` every 500 ms until it holds, within `limit`.
    pub async fn wait_for<F: std::future::Future<Output = Vec<String>>>(
        &self,
        what: &str,
        limit: Duration,
        probe: impl Fn() -> F,
        cond: impl Fn(&[String]) -> bool,
    ) {
        let t0 = Instant::now();
        loop {
            let seen = probe().await;
            if cond(&seen) {
                return;
            }
            assert!(t0.elapsed() < limit, "{what} within {limit:?}; seen {seen:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The last lines of every process's log, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path().join("logs")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "== {}\n{}\n",
                entry.file_name().to_string_lossy(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
        out
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.file["url"].as_str().unwrap())
    }

    /// A shop with product `sku` and `on_hand` units, made through the gateway.
    pub async fn shop(&self, id: &str, sku: &str, on_hand: i64) -> Shop {
        let token = self.file["admin_token"].as_str().unwrap();
        let body = json!({"id": id, "name": format!("Shop {id}"), "currency": "USD"});
        let r = self.client.post(self.url("/shops")).bearer_auth(token).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let key = r.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned();
        let shop = Shop { id: id.into(), key };
        let product = json!({"name": "P", "category": "general", "price": {"amount": 500, "currency": "USD"}});
        let r = self.client.put(self.url(&format!("/shops/{id}/products/{sku}"))).bearer_auth(&shop.key).json(&product);
        assert!(r.send().await.unwrap().status().is_success());
        let r = self.client.put(self.url(&format!("/shops/{id}/stock/{sku}"))).bearer_auth(&shop.key);
        assert_eq!(r.json(&json!({"on_hand": on_hand})).send().await.unwrap().status(), StatusCode::OK);
        shop
    }

    /// Every order the store holds for the shop (the pages, newest first).
    pub async fn order_ids(&self, shop: &Shop) -> Vec<String> {
        let (mut ids, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let mut path = format!("/shops/{}/orders?limit=100", shop.id);
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page: Value = self.client.get(self.url(&path)).bearer_auth(&shop.key).send().await.unwrap().json().await.unwrap();
            ids.extend(page["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return ids,
            }
        }
    }

    pub async fn reserved(&self, shop: &Shop, sku: &str) -> i64 {
        let v: Value =
            self.client.get(self.url(&format!("/shops/{}/stock/{sku}", shop.id))).send().await.unwrap().json().await.unwrap();
        v["reserved"].as_i64().unwrap()
    }
}

/// One answer the load saw.
#[derive(Debug, Clone)]
pub struct Answer {
    pub shop: usize,
    pub at: Instant,
    /// The HTTP status, or 0 when no answer came (the connection failed).
    pub status: u16,
    pub retry_after: bool,
    pub order: Option<String>,
}

/// Buyers placing one-unit orders with fresh Idempotency-Keys through the gateway, one at a
/// time each, every answer logged.
pub struct OrderLoad {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OrderLoad {
    pub fn start(fleet: &Fleet, shops: &[(&Shop, &str)], buyers: usize, pause: Duration) -> OrderLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let url = fleet.file["url"].as_str().unwrap().to_owned();
        let shops: Vec<(String, String, String)> =
            shops.iter().map(|(s, sku)| (s.id.clone(), s.key.clone(), sku.to_string())).collect();
        let tasks = (0..buyers)
            .map(|b| {
                let (stop, log, url, shops) = (stop.clone(), log.clone(), url.clone(), shops.clone());
                let client = Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let which = (b + n) % shops.len();
                        let (id, key, sku) = &shops[which];
                        let body = json!({"customer_id": format!("buyer-{b}"), "lines": [{"sku": sku, "qty": 1}]});
                        let r = client
                            .post(format!("{url}/shops/{id}/orders"))
                            .bearer_auth(key)
                            .header("Idempotency-Key", format!("b{b}-{n}"))
                            .json(&body)
                            .send()
                            .await;
                        let answer = match r {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let retry_after = r.headers().contains_key("retry-after");
                                let order = if status == 201 {
                                    r.json::<Value>().await.ok().and_then(|v| v["id"].as_str().map(str::to_owned))
                                } else {
                                    None
                                };
                                Answer { shop: which, at: Instant::now(), status, retry_after, order }
                            }
                            Err(_) => Answer { shop: which, at: Instant::now(), status: 0, retry_after: false, order: None },
                        };
                        log.lock().unwrap().push(answer);
                        n += 1;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        OrderLoad { stop, log, tasks }
    }

    /// The answers so far, taken out of the log.
    pub fn take(&self) -> Vec<Answer> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    pub async fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.unwrap();
        }
        self.take()
    }
}

/// Answers a client must not see: anything but 201, or 409/429/503 with Retry-After.
pub fn unexpected(answers: &[Answer]) -> Vec<&Answer> {
    answers
        .iter()
        .filter(|a| match a.status {
            201 | 409 => false,
            429 | 503 => !a.retry_after,
            _ => true,
        })
        .collect()
}
