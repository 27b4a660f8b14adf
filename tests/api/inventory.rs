use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{one_line, problem, spawn};

#[tokio::test]
async fn set_adjust_and_read_stock() {
    let app = spawn().await;
    let shop = app.create_shop("acme").await;
    app.put_product(&shop, "A", 100).await;
    assert_eq!(app.stock(&shop, "A").await, (0, 0, 0), "a product never stocked has none");
    app.set_stock(&shop, "A", 10).await;
    assert_eq!(app.stock(&shop, "A").await, (10, 0, 10));

    let r = app.post("/shops/acme/stock/A/adjust").bearer_auth(&shop.key).json(&json!({"delta": 5})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.post("/shops/acme/stock/A/adjust").bearer_auth(&shop.key).json(&json!({"delta": -3})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.stock(&shop, "A").await, (12, 0, 12));
}

#[tokio::test]
async fn stock_never_goes_below_what_is_reserved() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    assert_eq!(app.order(&shop, "k1", &one_line("A", 8)).await.status(), StatusCode::CREATED);
    assert_eq!(app.stock(&shop, "A").await, (10, 8, 2));

    let r = app.post("/shops/acme/stock/A/adjust").bearer_auth(&shop.key).json(&json!({"delta": -3})).send().await.unwrap();
    let (status, p) = problem(r).await;
    assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::CONFLICT, "below_reserved"));
    let r = app.put("/shops/acme/stock/A").bearer_auth(&shop.key).json(&json!({"on_hand": 7})).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::CONFLICT);
    assert_eq!(app.stock(&shop, "A").await, (10, 8, 2), "refusals change nothing");

    let r = app.post("/shops/acme/stock/A/adjust").bearer_auth(&shop.key).json(&json!({"delta": -2})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.stock(&shop, "A").await, (8, 8, 0));
}

#[tokio::test]
async fn stock_of_unknown_products_is_not_found() {
    let app = spawn().await;
    let shop = app.create_shop("acme").await;
    let r = app.put("/shops/acme/stock/GHOST").bearer_auth(&shop.key).json(&json!({"on_hand": 1})).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);
    let r = app.get("/shops/acme/stock/GHOST").send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);
}
