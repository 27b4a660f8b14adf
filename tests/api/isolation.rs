//! A shop's key never reads or writes another shop's data.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{one_line, problem, spawn};

#[tokio::test]
async fn one_shops_key_cannot_touch_another_shop() {
    let app = spawn().await;
    let a = app.shop_with_stock("shop-a", "A", 10).await;
    let b = app.shop_with_stock("shop-b", "B", 10).await;
    let b_order: Value = app.order(&b, "kb", &one_line("B", 2)).await.json().await.unwrap();
    let b_id = b_order["id"].as_str().unwrap().to_owned();

    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::PUT,
            "/shops/shop-b/products/B".into(),
            Some(json!({"name": "pwned", "category": "c", "price": {"amount": 1, "currency": "USD"}})),
        ),
        (
            Method::PUT,
            "/shops/shop-b/products/NEW".into(),
            Some(json!({"name": "pwned", "category": "c", "price": {"amount": 1, "currency": "USD"}})),
        ),
        (Method::DELETE, "/shops/shop-b/products/B".into(), None),
        (Method::PUT, "/shops/shop-b/stock/B".into(), Some(json!({"on_hand": 0}))),
        (Method::POST, "/shops/shop-b/stock/B/adjust".into(), Some(json!({"delta": -5}))),
        (Method::POST, "/shops/shop-b/orders".into(), Some(one_line("B", 1))),
        (Method::GET, "/shops/shop-b/orders".into(), None),
        (Method::GET, format!("/shops/shop-b/orders/{b_id}"), None),
        (Method::POST, format!("/shops/shop-b/orders/{b_id}/cancel"), None),
        (Method::POST, "/shops/shop-b/feed".into(), None),
    ];
    for (method, path, body) in attempts {
        let mut req = app.client.request(method.clone(), app.url(&path)).bearer_auth(&a.key).header("Idempotency-Key", "ka");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, _) = problem(req.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with shop-a's key");
    }
    // An order of shop B is not visible through shop A's own routes either.
    let r = app.get(&format!("/shops/shop-a/orders/{b_id}")).bearer_auth(&a.key).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);

    let prod: Value = app.get_json("/shops/shop-b/products/B").await;
    assert_eq!((prod["name"].as_str(), prod["version"].as_i64()), (Some("Product B"), Some(1)));
    assert_eq!(app.stock(&b, "B").await, (10, 2, 8));
    assert_eq!(app.order_count(&b).await, 1);
    let o: Value = app.get_json_as(&format!("/shops/shop-b/orders/{b_id}"), &b.key).await;
    assert_eq!(o["status"], "placed");
    let _ = a;
}
