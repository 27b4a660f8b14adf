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

#[tokio::test]
async fn a_huge_id_is_not_echoed_back_whole_and_dot_names_are_refused() {
    let app = spawn().await;
    let huge = "x".repeat(10_000);
    let r = app.get(&format!("/shops/{huge}/products/A")).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_client_error(), "{status}");
    assert!(text.len() < 1_000, "the problem is {} bytes", text.len());
    // `.` and `..` as names, sent as raw bytes: a URL library would resolve them away.
    let shop = app.shop_with_stock("dots", "A", 1).await;
    let body = r#"{"name":"Dot","category":"c","price":{"amount":100,"currency":"USD"}}"#;
    let raw = |method: &str, path: &str, key: Option<&str>, body: &str| {
        let auth = key.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let send = |request: String| {
        let addr = app.base.trim_start_matches("http://").to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()
        }
    };
    assert_eq!(send(raw("PUT", "/shops/dots/products/.x", Some(&shop.key), body)).await, 201, "a dot inside a name is fine");
    for sku in [".", ".."] {
        let status = send(raw("PUT", &format!("/shops/dots/products/{sku}"), Some(&shop.key), body)).await;
        assert!((400..500).contains(&status) && status != 404, "sku {sku:?}: {status}");
    }
    assert_eq!(send(raw("GET", "/helloDoc/count", None, "")).await, 200);
    let status = send(raw("GET", "/../count", None, "")).await;
    assert_eq!(status, 422, "collection '..' is refused like any invalid name");
}
