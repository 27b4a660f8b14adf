use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{one_line, problem, spawn, spawn_with, TestApp};

async fn act(app: &TestApp, shop: &crate::helpers::Shop, id: &str, action: &str) -> reqwest::Response {
    app.post(&format!("/shops/{}/orders/{id}/{action}", shop.id)).bearer_auth(&shop.key).send().await.unwrap()
}

#[tokio::test]
async fn placing_an_order_sums_lines_prices_and_reserves() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    app.put_product(&shop, "B", 250).await;
    app.set_stock(&shop, "B", 4).await;

    let body = json!({"customer_id": "c-9", "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}, {"sku": "A", "qty": 3}]});
    let r = app.order(&shop, "k1", &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let o: Value = r.json().await.unwrap();
    assert_eq!(o["status"], "placed");
    assert_eq!(o["shop"], "acme");
    assert_eq!(o["customer_id"], "c-9");
    assert_eq!(o["lines"].as_array().unwrap().len(), 2, "same-SKU lines are summed");
    assert_eq!(
        o["lines"][0],
        json!({"sku": "A", "name": "Product A", "qty": 5,
        "unit_price": {"amount": 500, "currency": "USD"}, "line_total": {"amount": 2500, "currency": "USD"}})
    );
    assert_eq!(o["total"], json!({"amount": 2750, "currency": "USD"}));
    assert_eq!(o["history"][0]["status"], "placed");
    assert!(o["created_at"].is_string() && o["expires_at"].is_string());
    assert!(uuid::Uuid::parse_str(o["id"].as_str().unwrap()).is_ok());
    assert_eq!(app.stock(&shop, "A").await, (10, 5, 5));
    assert_eq!(app.stock(&shop, "B").await, (4, 1, 3));

    let fetched: Value = app.get_json_as(&format!("/shops/acme/orders/{}", o["id"].as_str().unwrap()), &shop.key).await;
    assert_eq!(fetched, o);
}

#[tokio::test]
async fn short_stock_takes_nothing_and_lists_the_short_skus() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    app.put_product(&shop, "B", 100).await;
    app.set_stock(&shop, "B", 1).await;
    app.put_product(&shop, "C", 100).await;

    let body = json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 3}, {"sku": "B", "qty": 2}, {"sku": "C", "qty": 1}]});
    let r = app.order(&shop, "k1", &body).await;
    let (status, p) = problem(r).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(p["code"], "insufficient_stock");
    assert_eq!(p["skus"], json!(["B", "C"]));
    assert_eq!(app.stock(&shop, "A").await, (10, 0, 10), "the line that fit was not taken either");
    assert_eq!(app.order_count(&shop).await, 0);

    // A refused order does not burn its key: once stock arrives the same request goes through.
    app.set_stock(&shop, "B", 5).await;
    app.set_stock(&shop, "C", 5).await;
    assert_eq!(app.order(&shop, "k1", &body).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn unknown_skus_are_refused_with_422() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let body = json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}, {"sku": "NOPE", "qty": 1}]});
    let (status, p) = problem(app.order(&shop, "k1", &body).await).await;
    assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_sku"));
    assert!(p["detail"].as_str().unwrap().contains("NOPE"));
    assert_eq!(app.stock(&shop, "A").await, (10, 0, 10));
}

#[tokio::test]
async fn idempotency_replays_refuses_mismatch_and_needs_a_key() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let first = app.order(&shop, "key-1", &one_line("A", 2)).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    let again = app.order(&shop, "key-1", &one_line("A", 2)).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the stored answer, byte for byte");
    assert_eq!(app.stock(&shop, "A").await, (10, 2, 8), "reserved once");

    let (status, p) = problem(app.order(&shop, "key-1", &one_line("A", 3)).await).await;
    assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));

    let r = app.post("/shops/acme/orders").bearer_auth(&shop.key).json(&one_line("A", 1)).send().await.unwrap();
    let (status, p) = problem(r).await;
    assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "idempotency_key_required"));
    assert_eq!(app.order_count(&shop).await, 1);
    assert_eq!(app.stock(&shop, "A").await, (10, 2, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_flight_is_refused_and_only_one_order_results() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 100).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (client, url, key) = (app.client.clone(), app.url("/shops/acme/orders"), shop.key.clone());
        tasks.push(tokio::spawn(async move {
            let r =
                client.post(url).bearer_auth(key).header("Idempotency-Key", "same").json(&one_line("A", 1)).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                ids.insert(body["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => assert_eq!(body["code"], "idempotency_key_in_flight"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "every success is the same order");
    assert_eq!(app.order_count(&shop).await, 1);
    assert_eq!(app.stock(&shop, "A").await, (100, 1, 99));
}

#[tokio::test]
async fn the_lifecycle_and_its_refusals() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let o: Value = app.order(&shop, "k1", &one_line("A", 3)).await.json().await.unwrap();
    let id = o["id"].as_str().unwrap();

    for bad in ["ship", "deliver"] {
        let (status, p) = problem(act(&app, &shop, id, bad).await).await;
        assert_eq!((status, p["code"].as_str().unwrap()), (StatusCode::CONFLICT, "invalid_transition"), "{bad} from placed");
    }
    let paid: Value = act(&app, &shop, id, "pay").await.json().await.unwrap();
    assert_eq!(paid["status"], "paid");
    assert!(paid["expires_at"].is_null(), "a paid order no longer expires");
    assert_eq!(problem(act(&app, &shop, id, "pay").await).await.0, StatusCode::CONFLICT);
    assert_eq!(problem(act(&app, &shop, id, "deliver").await).await.0, StatusCode::CONFLICT);
    assert_eq!(app.stock(&shop, "A").await, (10, 3, 7));

    let shipped: Value = act(&app, &shop, id, "ship").await.json().await.unwrap();
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(app.stock(&shop, "A").await, (7, 0, 7), "shipping moves the reservation out of on_hand");
    assert_eq!(problem(act(&app, &shop, id, "cancel").await).await.0, StatusCode::CONFLICT);

    let delivered: Value = act(&app, &shop, id, "deliver").await.json().await.unwrap();
    assert_eq!(delivered["status"], "delivered");
    let statuses: Vec<&str> = delivered["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["placed", "paid", "shipped", "delivered"]);
    for bad in ["pay", "ship", "deliver", "cancel"] {
        assert_eq!(problem(act(&app, &shop, id, bad).await).await.0, StatusCode::CONFLICT);
    }
    assert_eq!(app.stock(&shop, "A").await, (7, 0, 7));
    assert_eq!(problem(act(&app, &shop, id, "refund").await).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancelling_releases_the_reservation_from_placed_and_paid() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let a: Value = app.order(&shop, "k1", &one_line("A", 3)).await.json().await.unwrap();
    let b: Value = app.order(&shop, "k2", &one_line("A", 4)).await.json().await.unwrap();
    assert_eq!(app.stock(&shop, "A").await, (10, 7, 3));

    let c: Value = act(&app, &shop, a["id"].as_str().unwrap(), "cancel").await.json().await.unwrap();
    assert_eq!(c["status"], "cancelled");
    assert_eq!(app.stock(&shop, "A").await, (10, 4, 6));

    act(&app, &shop, b["id"].as_str().unwrap(), "pay").await;
    act(&app, &shop, b["id"].as_str().unwrap(), "cancel").await;
    assert_eq!(app.stock(&shop, "A").await, (10, 0, 10));
    assert_eq!(problem(act(&app, &shop, b["id"].as_str().unwrap(), "cancel").await).await.0, StatusCode::CONFLICT);
}

#[tokio::test]
async fn unpaid_orders_expire_after_the_hold() {
    let app = spawn_with(|c| {
        c.orders.hold_secs = 600;
        c.orders.sweep_interval_ms = 20;
    })
    .await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let stale: Value = app.order(&shop, "k1", &one_line("A", 2)).await.json().await.unwrap();
    let paid: Value = app.order(&shop, "k2", &one_line("A", 3)).await.json().await.unwrap();
    act(&app, &shop, paid["id"].as_str().unwrap(), "pay").await;

    // Before the hold ends the sweeper leaves everything alone.
    assert_eq!(vitrina::app::sweeper(&app.state).sweep_once().await.unwrap(), 0);
    app.clock.advance(chrono::Duration::seconds(601));
    let mut expired = None;
    for _ in 0..200 {
        let o: Value = app.get_json_as(&format!("/shops/acme/orders/{}", stale["id"].as_str().unwrap()), &shop.key).await;
        if o["status"] == "cancelled" {
            expired = Some(o);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let expired = expired.expect("the background sweeper cancels the expired order");
    assert_eq!(expired["history"][1]["reason"], "payment hold expired");
    assert_eq!(app.stock(&shop, "A").await, (10, 3, 7), "only the unpaid reservation is released");
    let p: Value = app.get_json_as(&format!("/shops/acme/orders/{}", paid["id"].as_str().unwrap()), &shop.key).await;
    assert_eq!(p["status"], "paid");
}

#[tokio::test]
async fn listing_pages_newest_first_and_filters_by_status() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 100).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let o: Value = app.order(&shop, &format!("k{i}"), &one_line("A", 1)).await.json().await.unwrap();
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    act(&app, &shop, &ids[2], "pay").await;
    let page: Value = app.get_json_as("/shops/acme/orders?limit=4", &shop.key).await;
    let got: Vec<&str> = page["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(got, [&ids[6], &ids[5], &ids[4], &ids[3]]);
    let next =
        app.get_json_as(&format!("/shops/acme/orders?limit=4&cursor={}", page["next_cursor"].as_str().unwrap()), &shop.key).await;
    assert_eq!(next["items"].as_array().unwrap().len(), 3);
    assert!(next["next_cursor"].is_null());
    let paid: Value = app.get_json_as("/shops/acme/orders?status=paid", &shop.key).await;
    assert_eq!(paid["items"].as_array().unwrap().len(), 1);
    assert_eq!(paid["items"][0]["id"], ids[2].as_str());
}
