//! Group reservation: orders decided together answer as they would one after the other.

use std::time::Duration;

use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::Value;
use vitrina::money::Currency;
use vitrina::orders::{LineBody, PlaceOrder, PlaceOrderBody, PlaceOutcome};
use vitrina::shops::ShopId;
use vitrina::store::transactions::placement::Placement;
use vitrina::store::{StoreError, StoreResult};

use crate::helpers::{one_line, spawn, spawn_with, Shop, TestApp};

/// A placement as the orders route builds it, for `lines` of (SKU, quantity).
fn placement(app: &TestApp, shop: &str, key: &str, lines: &[(&str, i64)]) -> Placement {
    let body = PlaceOrderBody {
        customer_id: key.to_owned(),
        lines: lines.iter().map(|(sku, qty)| LineBody { sku: (*sku).into(), qty: *qty }).collect(),
    };
    let now = app.clock.now();
    let order = PlaceOrder {
        id: uuid::Uuid::now_v7().to_string(),
        customer_id: body.customer_id.clone(),
        currency: Currency::parse("USD").unwrap(),
        lines: body.validate().unwrap(),
        idempotency_key: key.to_owned(),
        fingerprint: body.fingerprint(),
        now,
        expires_at: now + chrono::Duration::minutes(15),
    };
    Placement::here(&ShopId::parse(shop).unwrap(), order)
}

/// Places each order through the store as its route does, all let go at the same moment so
/// they queue behind each other's groups; their answers in the order given.
async fn place_at_once(app: &TestApp, placements: Vec<Placement>) -> Vec<StoreResult<PlaceOutcome>> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(placements.len()));
    let tasks: Vec<_> = placements
        .into_iter()
        .map(|p| {
            let (state, start) = (app.state.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let shop = p.shop.clone();
                state.store().on_shop(&shop, "place_order", |s| s.place_order(&shop, p.order.clone())).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

async fn place_together(app: &TestApp, shop: &str, group: Vec<Placement>) -> Vec<StoreResult<PlaceOutcome>> {
    let id = ShopId::parse(shop).unwrap();
    app.state.store().on_shop(&id, "place_orders", |s| s.place_orders(group.clone())).await.expect("the group commits")
}

fn code(answer: &StoreResult<PlaceOutcome>) -> String {
    match answer {
        Ok(PlaceOutcome::Created(_)) => "created".into(),
        Ok(PlaceOutcome::Replayed { .. }) => "replayed".into(),
        Ok(PlaceOutcome::KeyReused) => "key_reused".into(),
        Err(StoreError::InsufficientStock { skus, sold_out }) => format!("short {skus:?} sold out {sold_out:?}"),
        Err(StoreError::Conflict { code, .. } | StoreError::Invalid { code, .. }) => (*code).into(),
        Err(e) => format!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_answers_each_order_as_if_placed_alone_in_turn() {
    let app = spawn().await;
    let shop = app.shop_with_stock("grp", "A", 5).await;
    app.put_product(&shop, "B", 300).await;
    app.set_stock(&shop, "B", 1).await;
    let other = app.shop_with_stock("grp2", "A", 1).await;
    let before = app.order(&shop, "k0", &serde_json::json!({"customer_id": "k0", "lines": [{"sku": "A", "qty": 1}]})).await;
    assert_eq!(before.status(), StatusCode::CREATED);
    let first: Value = before.json().await.unwrap();

    let group = vec![
        placement(&app, "grp", "k1", &[("A", 2)]),
        placement(&app, "grp", "k1", &[("A", 1)]),
        placement(&app, "grp", "k2", &[("X", 1)]),
        placement(&app, "grp", "k3", &[("A", 3), ("B", 2)]),
        placement(&app, "grp", "k0", &[("A", 1)]),
        placement(&app, "grp", "k0", &[("A", 2)]),
        placement(&app, "grp2", "k1", &[("A", 1)]),
        placement(&app, "grp", "k4", &[("A", 2), ("B", 1)]),
    ];
    let answers = place_together(&app, "grp", group).await;
    let codes: Vec<String> = answers.iter().map(code).collect();
    assert_eq!(
        codes,
        [
            "created",
            "idempotency_key_in_flight",
            "unknown_sku",
            r#"short ["A", "B"] sold out []"#,
            "replayed",
            "key_reused",
            "created",
            "created",
        ]
    );
    let Ok(PlaceOutcome::Replayed { body, .. }) = &answers[4] else { unreachable!() };
    assert_eq!(body, &first, "the stored answer, served again");

    assert_eq!(app.stock(&shop, "A").await, (5, 5, 0));
    assert_eq!(app.stock(&shop, "B").await, (1, 1, 0));
    assert_eq!(app.stock(&other, "A").await, (1, 1, 0));
    assert_eq!(app.order_count(&shop).await, 3);

    // The events, in the order placing the orders one by one would have written them.
    // On PostgreSQL the feed shows a transaction's events once every transaction older than it
    // (other tests' too) has ended: read until the group's last event is there.
    let t0 = std::time::Instant::now();
    let kinds = loop {
        let feed = app.get_json_as("/shops/grp/events?limit=100", &shop.key).await;
        let kinds: Vec<(String, String, i64)> = feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let subject = e["data"]["sku"].as_str().or(e["data"]["customer_id"].as_str()).unwrap_or_default().to_owned();
                (e["type"].as_str().unwrap().to_owned(), subject, e["sequence"].as_i64().unwrap())
            })
            .filter(|(t, _, _)| t.starts_with("vitrina.order") || t == "vitrina.stock.changed")
            .collect();
        if kinds.iter().any(|(t, s, _)| t == "vitrina.order.placed" && s == "k4") || t0.elapsed() > Duration::from_secs(10) {
            break kinds;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(kinds.len() >= 4, "the group's events reach the feed: {kinds:?}");
    let tail: Vec<(&str, &str, i64)> = kinds[kinds.len() - 4..].iter().map(|(t, s, q)| (t.as_str(), s.as_str(), *q)).collect();
    let stock_seq = |sku: &str| kinds.iter().filter(|(t, s, _)| t == "vitrina.stock.changed" && s == sku).count() as i64;
    assert_eq!(
        tail,
        [
            ("vitrina.order.placed", "k1", 1),
            ("vitrina.order.placed", "k4", 1),
            ("vitrina.stock.changed", "A", stock_seq("A")),
            ("vitrina.stock.changed", "B", stock_seq("B")),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_for_ten_units_with_admission_and_retries() {
    let app = spawn_with(|c| {
        c.admission.enabled = true;
        c.admission.retry_after_secs = 1;
        c.admission.retry_after_max_secs = 1;
    })
    .await;
    let shop = app.shop_with_stock("crowd", "HOT", 10).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let buyers: Vec<_> = (0..200)
        .map(|i| {
            let (client, url, key, start) = (app.client.clone(), app.url("/shops/crowd/orders"), shop.key.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..60 {
                    let r = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("Idempotency-Key", format!("buyer-{i}"))
                        .json(&one_line("HOT", 1))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
                        let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        continue;
                    }
                    let body: Value = r.json().await.unwrap();
                    return (status, body);
                }
                panic!("buyer {i} was turned away sixty times");
            })
        })
        .collect();
    let (mut placed, mut refused) = (0, 0);
    for b in buyers {
        match b.await.unwrap() {
            (StatusCode::CREATED, _) => placed += 1,
            (StatusCode::CONFLICT, body) => {
                assert_eq!(body["code"], "insufficient_stock", "{body}");
                refused += 1;
            }
            (other, body) => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((placed, refused), (10, 190));
    assert_eq!(app.stock(&shop, "HOT").await, (10, 10, 0));
    assert_eq!(app.order_count(&shop).await, 10);
}

/// What a run of concurrent orders gave: per order its lines and either the units it took or
/// the SKUs it was refused for.
struct Run {
    stock: Vec<i64>,
    orders: Vec<(Vec<(usize, i64)>, Option<Vec<usize>>)>,
}

/// True when some serial order of these orders, each decided against what the ones before it
/// left, gives exactly these answers: accepted orders fit, refused ones were short of exactly
/// the SKUs they name. A search over which orders came first (the state is that set).
fn serialisable(run: &Run) -> bool {
    let n = run.orders.len();
    let mut reachable = vec![false; 1 << n];
    reachable[0] = true;
    for set in 0..(1usize << n) {
        if !reachable[set] {
            continue;
        }
        let mut left = run.stock.clone();
        for (i, (lines, refused)) in run.orders.iter().enumerate() {
            if set & (1 << i) != 0 && refused.is_none() {
                lines.iter().for_each(|(sku, qty)| left[*sku] -= qty);
            }
        }
        for (i, (lines, refused)) in run.orders.iter().enumerate() {
            if set & (1 << i) != 0 {
                continue;
            }
            let short: Vec<usize> = lines.iter().filter(|(sku, qty)| left[*sku] < *qty).map(|(sku, _)| *sku).collect();
            let fits = match refused {
                None => short.is_empty(),
                Some(named) => !short.is_empty() && *named == short,
            };
            if fits {
                reachable[set | (1 << i)] = true;
            }
        }
    }
    reachable[(1 << n) - 1]
}

const SKUS: [&str; 3] = ["P", "Q", "R"];

async fn concurrent_run(app: &TestApp, case: usize, stock: Vec<i64>, orders: Vec<Vec<(usize, i64)>>) -> Run {
    let shop_id = format!("model{case}");
    let shop: Shop = app.create_shop(&shop_id).await;
    for (sku, n) in SKUS.iter().zip(&stock) {
        app.put_product(&shop, sku, 100).await;
        app.set_stock(&shop, sku, *n).await;
    }
    let placements = orders
        .iter()
        .enumerate()
        .map(|(i, lines)| {
            let named: Vec<(&str, i64)> = lines.iter().map(|(sku, qty)| (SKUS[*sku], *qty)).collect();
            placement(app, &shop_id, &format!("o{i}"), &named)
        })
        .collect();
    let answers = place_at_once(app, placements).await;
    let mut run = Run { stock: stock.clone(), orders: Vec::new() };
    for (lines, answer) in orders.into_iter().zip(answers) {
        let refused = match answer {
            Ok(PlaceOutcome::Created(_)) => None,
            Err(StoreError::InsufficientStock { skus, .. }) => {
                Some(skus.iter().map(|s| SKUS.iter().position(|k| k == s).unwrap()).collect::<Vec<_>>())
            }
            other => panic!("unexpected {other:?}"),
        };
        run.orders.push((lines, refused));
    }
    for (i, sku) in SKUS.iter().enumerate() {
        let taken: i64 = run.orders.iter().filter(|o| o.1.is_none()).flat_map(|o| &o.0).filter(|l| l.0 == i).map(|l| l.1).sum();
        let (on_hand, reserved, available) = app.stock(&shop, sku).await;
        assert_eq!((on_hand, reserved), (stock[i], taken), "{sku}: the accepted orders' units, and nothing else, are reserved");
        assert!(available >= 0);
    }
    run
}

fn orders() -> impl Strategy<Value = Vec<Vec<(usize, i64)>>> {
    let order = prop::collection::btree_map(0usize..3, 1i64..4, 1..4).prop_map(|m| m.into_iter().collect::<Vec<_>>());
    prop::collection::vec(order, 2..12)
}

#[test]
fn concurrent_orders_end_as_some_serial_order_of_them_would() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(spawn_with(|c| c.admission.enabled = false));
    let case = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(stock in prop::collection::vec(0i64..8, 3), orders in orders())| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = rt.block_on(concurrent_run(&app, n, stock, orders));
        prop_assert!(serialisable(&run), "no serial order gives {:?} from {:?}", run.orders, run.stock);
    });
    drop(rt.block_on(async { app.stop().await }));
}

#[test]
fn the_serial_order_check_refuses_what_no_order_gives() {
    // One unit of P: two accepted orders for it cannot both have happened.
    let both = Run { stock: vec![1, 0, 0], orders: vec![(vec![(0, 1)], None), (vec![(0, 1)], None)] };
    assert!(!serialisable(&both));
    // Refused for P while P was never short.
    let wrong = Run { stock: vec![2, 0, 0], orders: vec![(vec![(0, 1)], None), (vec![(0, 1)], Some(vec![0]))] };
    assert!(!serialisable(&wrong));
    // Refused naming only Q when P was short too.
    let partial = Run { stock: vec![0, 0, 0], orders: vec![(vec![(0, 1), (1, 1)], Some(vec![1]))] };
    assert!(!serialisable(&partial));
    let fine = Run { stock: vec![1, 1, 0], orders: vec![(vec![(0, 1)], None), (vec![(0, 1), (1, 1)], Some(vec![0]))] };
    assert!(serialisable(&fine));
}

/// An order whose write fails in the database (here: an id already taken) fails alone, whatever
/// group it lands in: a group that fails as a whole is placed again order by order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_database_refuses_fails_alone() {
    let app = spawn_with(|c| c.admission.enabled = false).await;
    let shop = app.shop_with_stock("lone", "A", 100).await;
    let first = placement(&app, "lone", "first", &[("A", 1)]);
    let taken_id = first.order.id.clone();
    let id = ShopId::parse("lone").unwrap();
    let store = app.state.store();
    assert!(matches!(
        store.on_shop(&id, "place_order", |s| s.place_order(&id, first.order.clone())).await,
        Ok(PlaceOutcome::Created(_))
    ));
    let placements = (0..20)
        .map(|i| {
            let mut p = placement(&app, "lone", &format!("k{i}"), &[("A", 1)]);
            if i == 7 {
                p.order.id = taken_id.clone();
            }
            p
        })
        .collect();
    for (i, answer) in place_at_once(&app, placements).await.into_iter().enumerate() {
        match (i, answer) {
            (7, Err(StoreError::Backend(_))) => {}
            (7, other) => panic!("the order reusing an id: {other:?}"),
            (_, Ok(PlaceOutcome::Created(_))) => {}
            (i, other) => panic!("order {i}: {other:?}"),
        }
    }
    assert_eq!(app.stock(&shop, "A").await, (100, 20, 80), "the refused order took nothing");
}
