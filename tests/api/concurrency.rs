//! Oversell is impossible by construction; this proves it under concurrency.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{one_line, spawn_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_for_ten_units() {
    // All 200 at once reach the store: this is about the store's guarantee, not admission's.
    let app = spawn_with(|c| c.admission.enabled = false).await;
    let shop = app.shop_with_stock("acme", "HOT", 10).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url, key, start) = (app.client.clone(), app.url("/shops/acme/orders"), shop.key.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let r = client
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", format!("buyer-{i}"))
                .json(&one_line("HOT", 1))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => ok += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["code"], "insufficient_stock");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, refused), (10, 190));
    assert_eq!(app.stock(&shop, "HOT").await, (10, 10, 0));
    let orders: Value = app.get_json_as("/shops/acme/orders?limit=100", &shop.key).await;
    assert_eq!(orders["items"].as_array().unwrap().len(), 10);
}
