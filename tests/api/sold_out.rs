//! The sold-out fast path: a SKU with nothing available is refused from memory, kept current by
//! stock events, without ever refusing the retry of an order that went through.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use vitrina::shops::ShopId;

use crate::helpers::{one_line, problem, spawn_with};

#[tokio::test]
async fn a_sku_the_store_found_empty_is_then_refused_from_memory_but_replays_still_answer() {
    // The bus never catches up here, so the only teacher is the store's own refusal, and a
    // refusal after the restock below can only have come from memory.
    let app = spawn_with(|c| {
        c.events.poll_ms = 600_000;
        c.orders.sold_out_ttl_ms = 60_000;
    })
    .await;
    let shop = app.shop_with_stock("acme", "A", 2).await;
    app.put_product(&shop, "B", 100).await;
    app.set_stock(&shop, "B", 10).await;

    let first = app.order(&shop, "k1", &one_line("A", 2)).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let (status, p) = problem(app.order(&shop, "k2", &one_line("A", 1)).await).await;
    assert_eq!((status, p["skus"].clone()), (StatusCode::CONFLICT, json!(["A"])));

    // Restocked behind this instance's back (its own writes update its memory at once).
    let acme = ShopId::parse("acme").unwrap();
    app.state.store().on_shop(&acme, "set_stock", |s| s.set_stock(&acme, "A", 7, chrono::Utc::now())).await.unwrap();
    let both = json!({"customer_id": "c", "lines": [{"sku": "B", "qty": 1}, {"sku": "A", "qty": 1}]});
    let (status, p) = problem(app.order(&shop, "k3", &both).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "refused from memory although the store has stock again");
    assert_eq!(p["code"], "insufficient_stock");
    assert_eq!(p["skus"], json!(["A"]));
    assert_eq!(app.stock(&shop, "B").await, (10, 0, 10), "nothing was reserved");

    // The retry of the order that took the last units gets its answer, not the refusal.
    let replay = app.order(&shop, "k1", &one_line("A", 2)).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    assert_eq!(problem(app.order(&shop, "k1", &one_line("A", 1)).await).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    // Short is not empty: B with fewer units than asked is not remembered.
    assert_eq!(problem(app.order(&shop, "k4", &one_line("B", 11)).await).await.0, StatusCode::CONFLICT);
    assert_eq!(app.order(&shop, "k5", &one_line("B", 1)).await.status(), StatusCode::CREATED);
    assert_eq!(app.order_count(&shop).await, 2);
}

#[tokio::test]
async fn stock_events_mark_a_drained_sku_and_a_release_makes_it_available_again() {
    let app = spawn_with(|c| c.orders.sold_out_ttl_ms = 60_000).await;
    let shop = app.shop_with_stock("acme", "A", 1).await;
    let acme = ShopId::parse("acme").unwrap();
    let remembered = || app.state.sold_out.sold_out(&acme, ["A"], Instant::now()) == ["A"];

    let order: Value = app.order(&shop, "k1", &one_line("A", 1)).await.json().await.unwrap();
    let t0 = Instant::now();
    while !remembered() && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(remembered(), "the order's own stock event marks A without any refusal");
    assert_eq!(problem(app.order(&shop, "k2", &one_line("A", 1)).await).await.0, StatusCode::CONFLICT);

    let id = order["id"].as_str().unwrap();
    let r = app.post(&format!("/shops/acme/orders/{id}/cancel")).bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Well inside the minute a mark lasts: only the release's event can have cleared it.
    let t0 = Instant::now();
    let placed = loop {
        let r = app.order(&shop, "k3", &one_line("A", 1)).await;
        if r.status() == StatusCode::CREATED || t0.elapsed() > Duration::from_secs(5) {
            break r.status();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(placed, StatusCode::CREATED, "available again {:?} after the cancel", t0.elapsed());

    // shop, product, stock set, placed, drained, cancelled, released, placed, drained
    let feed = crate::events::feed_at_least(&app, &shop, None, 100, 9).await;
    let stock: Vec<(i64, i64)> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "vitrina.stock.changed")
        .map(|e| (e["data"]["reserved"].as_i64().unwrap(), e["data"]["available"].as_i64().unwrap()))
        .collect();
    assert_eq!(stock, [(0, 1), (1, 0), (0, 1), (1, 0)], "set, drained, released, drained again");
}
