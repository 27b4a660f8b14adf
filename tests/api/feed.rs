use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{problem, spawn_with};

fn product(sku: &str, cents: i64) -> String {
    json!({"type": "product", "sku": sku, "name": format!("P {sku}"), "category": "c", "price": {"amount": cents, "currency": "USD"}}).to_string()
}

#[tokio::test]
async fn good_lines_apply_bad_lines_are_reported_and_a_resend_changes_nothing() {
    let app = spawn_with(|c| c.limits.feed_batch = 3).await;
    let shop = app.create_shop("acme").await;
    let feed = [
        product("A", 100),
        json!({"type": "stock", "sku": "A", "on_hand": 7}).to_string(),
        "{broken".to_string(),
        product("B", 200),
        String::new(),
        json!({"type": "stock", "sku": "GHOST", "on_hand": 1}).to_string(),
        json!({"type": "stock", "sku": "B", "on_hand": -4}).to_string(),
        product("C", 300),
        json!({"type": "stock", "sku": "C", "on_hand": 3}).to_string(),
    ]
    .join("\n");
    let send = || async {
        let r = app
            .post("/shops/acme/feed")
            .bearer_auth(&shop.key)
            .header("content-type", "application/x-ndjson")
            .body(feed.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    let report = send().await;
    assert_eq!(report["accepted"], 5);
    let rejected: Vec<i64> = report["rejected"].as_array().unwrap().iter().map(|r| r["line"].as_i64().unwrap()).collect();
    assert_eq!(rejected, [3, 6, 7]);
    assert!(report["rejected"][1]["error"].as_str().unwrap().contains("GHOST"));
    assert_eq!(app.stock(&crate::helpers::Shop { id: "acme".into(), key: shop.key.clone() }, "A").await, (7, 0, 7));

    let before: Value = app.get_json("/shops/acme/products").await;
    let again = send().await;
    assert_eq!(again["accepted"], 5);
    let after: Value = app.get_json("/shops/acme/products").await;
    assert_eq!(before, after, "re-sending the same feed changes nothing (versions, timestamps)");
    assert_eq!(after["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn oversized_lines_and_bodies_are_refused() {
    let app = spawn_with(|c| {
        c.limits.feed_line_bytes = 200;
        c.limits.feed_body_bytes = 4096;
    })
    .await;
    let shop = app.create_shop("acme").await;
    let long = json!({"type": "product", "sku": "L", "name": "x".repeat(300), "category": "c", "price": {"amount": 1, "currency": "USD"}}).to_string();
    let feed = format!("{}\n{long}\n{}", product("A", 1), product("B", 2));
    let r = app.post("/shops/acme/feed").bearer_auth(&shop.key).body(feed).send().await.unwrap();
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["accepted"], 2);
    assert_eq!(report["rejected"][0]["line"], 2);

    let huge = (0..100).map(|i| product(&format!("H{i}"), 1)).collect::<Vec<_>>().join("\n");
    let r = app.post("/shops/acme/feed").bearer_auth(&shop.key).body(huge).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let page: Value = app.get_json("/shops/acme/products?limit=100").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "a body refused by its declared size writes nothing");
}

#[tokio::test]
async fn feeds_need_the_shop_key() {
    let app = spawn_with(|_| {}).await;
    app.create_shop("acme").await;
    let r = app.post("/shops/acme/feed").body(product("A", 1)).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
}

/// A body with nothing in it is refused: more likely a client that lost its feed than a feed
/// of no changes, and a 200 with nothing accepted would hide that.
#[tokio::test]
async fn an_empty_feed_is_refused() {
    let app = spawn_with(|_| {}).await;
    let shop = app.create_shop("acme").await;
    let r = app.post("/shops/acme/feed").bearer_auth(&shop.key).body("").send().await.unwrap();
    let (status, body) = problem(r).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("empty_feed")));
}
