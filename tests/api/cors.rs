//! Browser storefronts on another origin (CORS), and the unit every answer names.

use reqwest::{Method, StatusCode};

use crate::helpers::{one_line, spawn, spawn_with};

#[tokio::test]
async fn every_answer_names_the_unit_that_served_it() {
    let app = spawn().await;
    for path in ["/", "/health/live", "/no/such/route", "/shops/nope/orders"] {
        let r = app.get(path).send().await.unwrap();
        assert_eq!(r.headers()["vitrina-unit"], "local", "{path} answered {}", r.status());
    }
    let eu = spawn_with(|c| c.unit.id = "eu".into()).await;
    assert_eq!(eu.get("/health/live").send().await.unwrap().headers()["vitrina-unit"], "eu");
}

#[tokio::test]
async fn without_allowed_origins_there_are_no_cors_headers() {
    let app = spawn().await;
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/health/live"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_answered_without_credentials() {
    let app = spawn_with(|c| c.cors.allowed_origins = vec!["https://shop.example".into()]).await;
    let shop = app.shop_with_stock("cors-shop", "A", 5).await;
    let path = format!("/shops/{}/orders", shop.id);
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url(&path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, idempotency-key")
    };
    let r = preflight("https://shop.example").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let allowed = r.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key") && allowed.contains("authorization"), "{allowed}");
    assert!(r.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert_eq!(r.headers()["vitrina-unit"], "local");

    let r = preflight("https://evil.example").send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "another origin is not allowed");

    // The real request: allowed origin, its answer readable by the page, headers exposed.
    let r = app
        .post(&path)
        .header("origin", "https://shop.example")
        .bearer_auth(&shop.key)
        .header("Idempotency-Key", "cors-1")
        .json(&one_line("A", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let exposed = r.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("vitrina-written-at") && exposed.contains("retry-after"), "{exposed}");
}
