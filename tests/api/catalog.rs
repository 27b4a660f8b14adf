use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{one_line, problem, spawn};

#[tokio::test]
async fn put_creates_then_updates_and_same_content_keeps_the_version() {
    let app = spawn().await;
    let shop = app.create_shop("acme").await;
    let path = format!("/shops/{}/products/MUG-1", shop.id);
    let body =
        json!({"name": "Mug", "category": "kitchen", "price": {"amount": 1200, "currency": "USD"}, "attributes": {"ml": 350}});

    let r = app.put(&path).bearer_auth(&shop.key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["version"].as_i64(), v["price"]["amount"].as_i64()), (Some(1), Some(1200)));
    assert_eq!(v["attributes"]["ml"], 350);

    let r = app.put(&path).bearer_auth(&shop.key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 1, "unchanged content keeps its version");

    let mut changed = body.clone();
    changed["price"]["amount"] = json!(1500);
    let r = app.put(&path).bearer_auth(&shop.key).json(&changed).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);
}

#[tokio::test]
async fn get_has_an_etag_and_answers_304() {
    let app = spawn().await;
    let shop = app.create_shop("acme").await;
    app.put_product(&shop, "A", 100).await;
    let r = app.get("/shops/acme/products/A").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = app.get("/shops/acme/products/A").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    app.put_product(&shop, "A", 101).await;
    let r = app.get("/shops/acme/products/A").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a changed product has a new tag");
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);

    let r = app.get("/shops/acme/products/NOPE").send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);
    let r = app.get("/shops/nobody/products/A").send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);
    // A page of a shop that does not exist is a 404, until the shop is created.
    for _ in 0..2 {
        let (status, p) = problem(app.get("/shops/nobody/products").send().await.unwrap()).await;
        assert_eq!((status, p["detail"].as_str()), (StatusCode::NOT_FOUND, Some("shop nobody not found")));
    }
    app.create_shop("nobody").await;
    let page = app.get_json("/shops/nobody/products").await;
    assert_eq!(page["items"], serde_json::json!([]));
}

#[tokio::test]
async fn keyset_pages_are_stable_under_inserts_and_filter_by_category() {
    let app = spawn().await;
    let shop = app.create_shop("acme").await;
    for i in 0..25 {
        app.put_product(&shop, &format!("SKU-{i:03}"), 100 + i).await;
    }
    let first: Value = app.get_json("/shops/acme/products?limit=10").await;
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    assert_eq!(items[9]["sku"], "SKU-009");
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();

    // Rows inserted before the cursor do not shift the next page.
    app.put_product(&shop, "SKU-000a", 1).await;
    let second: Value = app.get_json(&format!("/shops/acme/products?limit=10&cursor={cursor}")).await;
    assert_eq!(second["items"][0]["sku"], "SKU-010");
    let third = app.get_json(&format!("/shops/acme/products?limit=10&cursor={}", second["next_cursor"].as_str().unwrap())).await;
    assert_eq!(third["items"].as_array().unwrap().len(), 5);
    assert!(third["next_cursor"].is_null());

    let r = app
        .put("/shops/acme/products/TEA")
        .bearer_auth(&shop.key)
        .json(&json!({"name": "Tea", "category": "drinks", "price": {"amount": 300, "currency": "USD"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let drinks: Value = app.get_json("/shops/acme/products?category=drinks").await;
    assert_eq!(drinks["items"].as_array().unwrap().len(), 1);
    assert_eq!(drinks["items"][0]["sku"], "TEA");
}

#[tokio::test]
async fn delete_removes_and_is_refused_while_reserved() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 5).await;
    app.put_product(&shop, "B", 100).await;

    let r = app.delete("/shops/acme/products/B").bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.get("/shops/acme/products/B").send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);
    let r = app.delete("/shops/acme/products/B").bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::NOT_FOUND);

    let r = app.order(&shop, "k1", &one_line("A", 2)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app.delete("/shops/acme/products/A").bearer_auth(&shop.key).send().await.unwrap();
    let (status, p) = problem(r).await;
    assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::CONFLICT, "product_reserved"));
    assert_eq!(app.stock(&shop, "A").await, (5, 2, 3), "nothing changed");
}
