//! Set-up shared by the benchmarks: a shop with products and plenty of stock, through the API.
// Each benchmark compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

pub const ADMIN: &str = "bench-admin-token-0123456789";

/// A number from the environment, or `default`: how the benches are resized.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An instance on a free loopback port over `data_dir`, with the bench's admin token, no demo
/// data and quiet logs.
pub fn instance_config(data_dir: &std::path::Path) -> vitrina::config::Config {
    vitrina::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_owned(),
        admin_token: Some(ADMIN.into()),
        seed_on_start: false,
        log_level: "warn".into(),
        ..vitrina::config::Config::default()
    }
}

/// Creates shop `bench` with products `SKU-1`..`SKU-n` at 9.99 USD and a billion units each;
/// returns the shop's API key.
pub async fn bench_shop(client: &reqwest::Client, base: &str, products: usize) -> String {
    let shop: serde_json::Value = client
        .post(format!("{base}/shops"))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "bench", "name": "Bench", "currency": "USD"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = shop["api_key"].as_str().unwrap().to_owned();
    for i in 1..=products {
        let r = client
            .put(format!("{base}/shops/bench/products/SKU-{i}"))
            .bearer_auth(&key)
            .json(&json!({"name": "Widget", "category": "c", "price": {"amount": 999, "currency": "USD"}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let r = client
            .put(format!("{base}/shops/bench/stock/SKU-{i}"))
            .bearer_auth(&key)
            .json(&json!({"on_hand": 1_000_000_000}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    key
}

/// Runs `request(i)` for i in 0..n from `concurrency` tasks, each taking the next i.
pub async fn run_n<F, Fut>(concurrency: usize, n: usize, request: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (request, next) = (request.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    request(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs `request()` from `concurrency` tasks back to back until `secs` have passed; returns how
/// many completed and how many of those failed (`request` answers whether it succeeded).
pub async fn run_for<F, Fut>(concurrency: usize, secs: f64, request: F) -> (u64, u64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let request = request.clone();
            tokio::spawn(async move {
                let (mut done, mut failed, mut i) = (0u64, 0u64, t);
                while std::time::Instant::now() < until {
                    if !request(i).await {
                        failed += 1;
                    }
                    done += 1;
                    i += concurrency;
                }
                (done, failed)
            })
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for t in tasks {
        let (d, f) = t.await.unwrap();
        done += d;
        failed += f;
    }
    (done, failed)
}
