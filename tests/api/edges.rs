//! The edges an anonymous caller reaches: credentials are checked before a request takes an
//! admission place or has its body read.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{one_line, problem, spawn, spawn_with, TestApp};

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Opens a connection and sends a request head announcing a body, plus half of that body.
async fn half_sent(app: &TestApp, path: &str, auth: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr(app)).await.unwrap();
    let auth = auth.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n\
         idempotency-key: k\r\ncontent-length: 1000\r\n\r\n{{\"customer_id\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Reads what the server sends until it closes the connection or `within` passes; returns the
/// bytes and whether it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < within {
        match tokio::time::timeout(within - t0.elapsed(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

fn writes_inside(app: &TestApp) -> usize {
    app.state.admission.report().shard_writes_inside.values().sum()
}

#[tokio::test]
async fn anonymous_half_sent_writes_take_no_admission_place_and_keyed_orders_go_through() {
    let app = spawn_with(|c| {
        c.admission.shop_writes = 4;
        c.admission.shard_writes = 4;
    })
    .await;
    let shop = app.shop_with_stock("acme", "A", 1_000).await;

    // Keyed orders alone, then with 200 anonymous half-sent requests open: half aimed at the
    // shop, half at shops that do not exist.
    let mut alone = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        assert_eq!(app.order(&shop, &format!("alone-{i}"), &one_line("A", 1)).await.status(), StatusCode::CREATED);
        alone.push(t0.elapsed());
    }
    let mut open = Vec::new();
    for i in 0..200 {
        let path = if i % 2 == 0 { "/shops/acme/orders".to_owned() } else { format!("/shops/ghost-{i}/orders") };
        open.push(half_sent(&app, &path, None).await);
    }
    // Another shop's key is no better than none.
    let other = app.create_shop("other").await;
    for _ in 0..20 {
        open.push(half_sent(&app, "/shops/acme/orders", Some(&other.key)).await);
    }
    let mut beside = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        let r = app.order(&shop, &format!("beside-{i}"), &one_line("A", 1)).await;
        assert_eq!(r.status(), StatusCode::CREATED, "a keyed order beside anonymous half-sent ones");
        beside.push(t0.elapsed());
        assert_eq!(writes_inside(&app), 0, "only finished keyed writes ever held a place");
    }
    // Every anonymous one was answered at once from its head, without waiting for its body.
    for (i, s) in open.iter_mut().enumerate() {
        let (answer, _) = read_until_closed(s, Duration::from_secs(5)).await;
        let expected = if i >= 200 || i % 2 == 0 { "401" } else { "404" };
        assert!(answer.starts_with(&format!("HTTP/1.1 {expected}")), "request {i}: {answer}");
    }
    alone.sort();
    beside.sort();
    println!("keyed order p50 alone {:?}, beside 220 anonymous half-sent requests {:?}", alone[10], beside[10]);
}

#[tokio::test]
async fn every_guarded_operation_answers_401_to_a_bad_body_without_credentials() {
    let app = spawn().await;
    app.shop_with_stock("acme", "A", 10).await;
    let spec: Value = app.get_json("/openapi.json").await;
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["security"].as_array().is_none_or(|s| s.is_empty()) {
                continue;
            }
            let url = path.replace("{shop}", "acme").replace("{sku}", "A").replace("{id}", "x").replace("{action}", "pay");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for auth in [None, Some("wrong-key")] {
                let mut req = app.client.request(method.clone(), app.url(&url)).header("content-type", "application/json");
                if let Some(k) = auth {
                    req = req.bearer_auth(k);
                }
                let (status, p) = problem(req.body("{not json").send().await.unwrap()).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {url} with {auth:?}: {p}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "the spec guards the shop and admin operations ({checked} checks)");
}
