//! The edges an anonymous caller reaches: credentials are checked before a request takes an
//! admission place or has its body read, and every connection is bounded in time and number.

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

#[tokio::test]
async fn slow_or_silent_heads_and_idle_keep_alives_are_closed_after_the_header_timeout() {
    let app = spawn_with(|c| c.limits.header_read_timeout_secs = 1).await;
    // Silent after connecting.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    // A head a byte at a time, slower than the timeout allows in total.
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /health/live HTTP/1.1\r\nhost: x\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let mut buf = [0u8; 64];
        matches!(slow.read(&mut buf).await, Ok(0) | Err(_))
    });
    // One request answered, then idle on keep-alive.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let t0 = Instant::now();
    assert!(read_until_closed(&mut silent, Duration::from_secs(5)).await.1, "a silent connection is closed");
    assert!(read_until_closed(&mut idle, Duration::from_secs(5)).await.1, "an idle keep-alive is closed");
    assert!(tokio::time::timeout(Duration::from_secs(10), trickle).await.unwrap().unwrap(), "a trickled head is cut off");
    assert!(t0.elapsed() < Duration::from_secs(8), "closed after the timeout, not held: {:?}", t0.elapsed());
    // The server still serves.
    assert_eq!(app.get("/health/live").send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_slower_than_the_body_timeout_is_answered_408_and_writes_nothing() {
    let app = spawn_with(|c| c.limits.body_read_timeout_secs = 1).await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let mut s = half_sent(&app, "/shops/acme/orders", Some(&shop.key)).await;
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout") && answer.contains("application/problem+json"), "{answer}");
    // The seed API's public write too, in its own error shape.
    let mut s = half_sent(&app, "/helloDoc/users", None).await;
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("\"detail\""), "{answer}");
    assert_eq!(app.stock(&shop, "A").await, (10, 0, 10));
    assert_eq!(app.order_count(&shop).await, 0);
    assert_eq!(writes_inside(&app), 0);
}

#[tokio::test]
async fn one_client_address_holds_at_most_its_connections() {
    let app = spawn_with(|c| {
        c.limits.connections_per_client = 4;
        c.limits.unbounded_clients.clear();
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    // The fifth is accepted by the kernel and closed by the server without an answer.
    let mut fifth = TcpStream::connect(addr(&app)).await.unwrap();
    let _ = fifth.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (answer, closed) = read_until_closed(&mut fifth, Duration::from_secs(5)).await;
    assert!(closed && answer.is_empty(), "refused: {answer:?}");
    // A place comes back when a connection closes.
    drop(held.pop());
    let t0 = Instant::now();
    loop {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the freed place was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
