use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{problem, spawn, ADMIN};

#[tokio::test]
async fn creating_a_shop_needs_the_admin_token_and_shows_the_key_once() {
    let app = spawn().await;
    let body = json!({"id": "acme", "name": "ACME", "currency": "EUR"});
    let r = app.post("/shops").json(&body).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let r = app.post("/shops").bearer_auth("wrong-token-wrong-token").json(&body).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);

    let r = app.post("/shops").bearer_auth(ADMIN).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["id"], "acme");
    assert_eq!(created["currency"], "EUR");
    assert!(created["api_key"].as_str().unwrap().starts_with("vk_"));

    let fetched: Value = app.get_json("/shops/acme").await;
    assert_eq!(fetched["name"], "ACME");
    assert_eq!(fetched["created_at"], created["created_at"], "what creation answered is what is stored");
    assert!(fetched.get("api_key").is_none(), "the key is never shown again");

    let r = app.post("/shops").bearer_auth(ADMIN).json(&body).send().await.unwrap();
    let (status, p) = problem(r).await;
    assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::CONFLICT, "shop_exists"));
}

#[tokio::test]
async fn shop_fields_are_validated() {
    let app = spawn().await;
    for body in [
        json!({"id": "Bad Id", "name": "x", "currency": "USD"}),
        json!({"id": "ok-id", "name": "", "currency": "USD"}),
        json!({"id": "ok-id", "name": "x", "currency": "usd"}),
        json!({"id": "ok-id", "name": "x", "currency": "ABC"}),
        json!({"id": "ok-id", "name": "x".repeat(201), "currency": "USD"}),
    ] {
        let r = app.post("/shops").bearer_auth(ADMIN).json(&body).send().await.unwrap();
        let (status, p) = problem(r).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(p["errors"].is_array());
    }
    let r = app.get("/shops/ok-id").send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND, "nothing was created");
}
