//! Set-up shared by the benchmarks: a shop with products and plenty of stock, through the API.

use serde_json::json;

pub const ADMIN: &str = "bench-admin-token-0123456789";

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
