//! Bad input gets a clear 4xx, never a 500, and writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{problem, spawn};

#[tokio::test]
async fn the_bad_input_table() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let long = "x".repeat(300);
    let big = json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}], "pad": "x".repeat(1_100_000)}).to_string();
    let product = |v: Value| v.to_string();

    // (method, path, body, content type, expected status)
    let cases: Vec<(Method, String, String, &str, StatusCode)> = vec![
        (Method::POST, "/shops/acme/orders".into(), "{not json".into(), "application/json", StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "A", "qty": "x"}]}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 0}]}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "A", "qty": -2}]}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1.5}]}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": []}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": long, "lines": [{"sku": "A", "qty": 1}]}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "NOPE", "qty": 1}]}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}], "extra": 1}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}]}).to_string(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (Method::POST, "/shops/acme/orders".into(), big, "application/json", StatusCode::PAYLOAD_TOO_LARGE),
        (
            Method::POST,
            "/shops/ghost/orders".into(),
            json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}]}).to_string(),
            "application/json",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            "/shops/acme/products/A".into(),
            product(json!({"name": "A", "category": "c", "price": {"amount": -1, "currency": "USD"}})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/products/A".into(),
            product(json!({"name": "A", "category": "c", "price": {"amount": 1, "currency": "EUR"}})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/products/A".into(),
            product(json!({"name": long, "category": "c", "price": {"amount": 1, "currency": "USD"}})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/products/A".into(),
            product(json!({"name": "A", "category": "c", "price": {"amount": "1", "currency": "USD"}})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/products/A".into(),
            product(json!({"name": "A", "category": "c", "price": {"amount": 1, "currency": "USD"}, "attributes": [1]})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/products/bad%20sku".into(),
            product(json!({"name": "A", "category": "c", "price": {"amount": 1, "currency": "USD"}})),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/stock/A".into(),
            json!({"on_hand": -1}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/stock/A".into(),
            json!({"on_hand": "7"}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/shops/acme/stock/A".into(),
            json!({"on_hand": 10_000_000_000i64}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/stock/A/adjust".into(),
            json!({"delta": 0}).to_string(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/shops/acme/stock/A/adjust".into(),
            json!({"delta": -11}).to_string(),
            "application/json",
            StatusCode::CONFLICT,
        ),
        (Method::GET, "/shops/acme/products?limit=0".into(), String::new(), "application/json", StatusCode::BAD_REQUEST),
        (Method::GET, "/shops/acme/products?limit=abc".into(), String::new(), "application/json", StatusCode::BAD_REQUEST),
        (Method::GET, "/shops/acme/products?cursor=%25%25".into(), String::new(), "application/json", StatusCode::BAD_REQUEST),
        (Method::GET, "/shops/acme/orders?status=lost".into(), String::new(), "application/json", StatusCode::BAD_REQUEST),
        (Method::GET, "/shops/acme/orders/not-a-uuid".into(), String::new(), "application/json", StatusCode::NOT_FOUND),
        (Method::GET, "/no/such/route/here".into(), String::new(), "application/json", StatusCode::NOT_FOUND),
    ];
    for (method, path, body, ct, expected) in cases {
        let mut req = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&shop.key)
            .header("Idempotency-Key", format!("bad-{path}-{}", body.len()));
        if !body.is_empty() {
            req = req.header("content-type", ct).body(body.clone());
        }
        let r = req.send().await.unwrap();
        let (status, p) = problem(r).await;
        assert_eq!(status, expected, "{method} {path} {}: {p}", &body.chars().take(120).collect::<String>());
        assert!(!p["detail"].as_str().unwrap_or("").is_empty(), "a clear reason: {p}");

        // Nothing was written.
        assert_eq!(app.stock(&shop, "A").await, (10, 0, 10), "after {method} {path}");
        assert_eq!(app.order_count(&shop).await, 0);
        let a: Value = app.get_json("/shops/acme/products/A").await;
        assert_eq!((a["version"].as_i64(), a["price"]["amount"].as_i64()), (Some(1), Some(500)));
        let all: Value = app.get_json("/shops/acme/products").await;
        assert_eq!(all["items"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn malformed_idempotency_keys_are_refused() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    for key in ["has space", &"k".repeat(256)] {
        let (status, p) = problem(app.order(&shop, key, &crate::helpers::one_line("A", 1)).await).await;
        assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "invalid_idempotency_key"));
    }
    assert_eq!(app.order_count(&shop).await, 0);
}

#[tokio::test]
async fn unknown_query_parameters_are_refused_by_name() {
    let app = spawn().await;
    let shop = app.shop_with_stock("strict-query", "A", 5).await;
    let orders = format!("/shops/{}/orders?customer_id=someone", shop.id);
    let (status, body) = problem(app.get(&orders).bearer_auth(&shop.key).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "invalid_query");
    assert!(body.to_string().contains("customer_id"), "the problem names the parameter: {body}");
    let products = format!("/shops/{}/products?categry=general", shop.id);
    let (status, body) = problem(app.get(&products).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.to_string().contains("categry"), "{body}");
    // The known ones still work.
    let ok = app.get(&format!("/shops/{}/orders?limit=10&status=placed", shop.id)).bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}
