//! Every business write records its event in the same transaction; the pull feed serves a
//! shop's events in order. A write that is refused records nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{one_line, problem, spawn, Shop, TestApp};

pub async fn feed(app: &TestApp, shop: &Shop, after: Option<&str>, limit: usize) -> Value {
    let mut path = format!("/shops/{}/events?limit={limit}", shop.id);
    if let Some(a) = after {
        path.push_str(&format!("&after={a}"));
    }
    app.get_json_as(&path, &shop.key).await
}

/// The feed from `after`, once it holds at least `want` events: on PostgreSQL an event shows
/// only when every transaction older than it has ended, anywhere on the server.
pub async fn feed_at_least(app: &TestApp, shop: &Shop, after: Option<&str>, limit: usize, want: usize) -> Value {
    let t0 = std::time::Instant::now();
    loop {
        let page = feed(app, shop, after, limit).await;
        if page["events"].as_array().unwrap().len() >= want || t0.elapsed() > std::time::Duration::from_secs(10) {
            return page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn all_events(app: &TestApp, shop: &Shop, want: usize) -> Vec<Value> {
    feed_at_least(app, shop, None, 1000, want).await["events"].as_array().unwrap().clone()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn each_write_records_one_cloudevent_and_refusals_record_none() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    app.put_product(&shop, "A", 500).await; // unchanged: no event
    let order: Value = app.order(&shop, "k1", &one_line("A", 2)).await.json().await.unwrap();
    let id = order["id"].as_str().unwrap();
    app.order(&shop, "k1", &one_line("A", 2)).await; // a replay: no event
    let refused = app.order(&shop, "k2", &one_line("A", 50)).await; // insufficient stock: rolled back
    assert_eq!(problem(refused).await.0, StatusCode::CONFLICT);
    app.post(&format!("/shops/acme/orders/{id}/pay")).bearer_auth(&shop.key).send().await.unwrap();
    app.post(&format!("/shops/acme/orders/{id}/ship")).bearer_auth(&shop.key).send().await.unwrap();

    let events = all_events(&app, &shop, 6).await;
    assert_eq!(
        types(&events),
        [
            "vitrina.shop.created",
            "vitrina.product.upserted",
            "vitrina.stock.changed",
            "vitrina.order.placed",
            "vitrina.order.paid",
            "vitrina.order.shipped"
        ]
    );
    let placed = &events[3];
    assert_eq!(placed["specversion"], "1.0");
    assert_eq!(placed["source"], "/shops/acme");
    assert_eq!(placed["shop"], "acme");
    assert_eq!(placed["subject"], format!("acme/orders/{id}"));
    assert_eq!(placed["data"]["id"], id);
    assert!(uuid::Uuid::parse_str(placed["id"].as_str().unwrap()).is_ok());
    let order_seqs: Vec<i64> = events[3..].iter().map(|e| e["sequence"].as_i64().unwrap()).collect();
    assert_eq!(order_seqs, [1, 2, 3], "per-aggregate sequence, strictly increasing");
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
}

#[tokio::test]
async fn the_feed_pages_by_position_and_carries_the_traceparent() {
    let app = spawn().await;
    let shop = app.create_shop("acme").await;
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for i in 0..5 {
        let r = app
            .put(&format!("/shops/acme/products/P{i}"))
            .bearer_auth(&shop.key)
            .header("traceparent", tp)
            .json(&json!({"name": "p", "category": "c", "price": {"amount": 1, "currency": "USD"}}))
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("vitrina-written-at"));
    }
    let first = feed_at_least(&app, &shop, None, 2, 2).await;
    assert_eq!(types(first["events"].as_array().unwrap()), ["vitrina.shop.created", "vitrina.product.upserted"]);
    let next = first["next"].as_str().unwrap().to_owned();
    let rest = feed_at_least(&app, &shop, Some(&next), 100, 4).await;
    let rest_events = rest["events"].as_array().unwrap();
    assert_eq!(rest_events.len(), 4);
    // Each event continues the caller's trace under a span of ours (tests/api/tracing.rs).
    let trace = |e: &Value| e["traceparent"].as_str().unwrap_or_default().split('-').nth(1).unwrap_or_default().to_owned();
    assert!(
        rest_events.iter().all(|e| trace(e) == "0af7651916cd43dd8448eb211c80319c" && e["traceparent"] != tp),
        "{rest_events:?}"
    );
    let tail = rest["next"].as_str().unwrap().to_owned();
    let empty = feed(&app, &shop, Some(&tail), 100).await;
    assert_eq!(empty, json!({"events": [], "next": tail}), "nothing new: keep the same position");

    let bad = app.get("/shops/acme/events?after=nonsense").bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(problem(bad).await.0, StatusCode::BAD_REQUEST);
    let other = app.create_shop("other").await;
    let foreign = app.get("/shops/acme/events").bearer_auth(&other.key).send().await.unwrap();
    assert_eq!(problem(foreign).await.0, StatusCode::UNAUTHORIZED);
}

/// Reads Server-Sent Events until `want` events arrived (bounded by time); returns (type, id) pairs.
async fn read_sse(resp: &mut reqwest::Response, want: usize) -> Vec<(String, Option<String>)> {
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events: Vec<(String, Option<String>)> = text
            .split("\n\n")
            .filter(|block| block.lines().any(|l| l.starts_with("event:")))
            .map(|block| {
                let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
                (field("event:").unwrap_or_default(), field("id:"))
            })
            .collect();
        if events.len() >= want || std::time::Instant::now() > deadline {
            return events;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(1), resp.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(_) => return events,
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_serves_the_feed_live_and_resumes_from_last_event_id() {
    let app = spawn().await;
    let shop = app.shop_with_stock("acme", "A", 10).await;
    let mut stream = app.get("/shops/acme/events/stream").bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let first = read_sse(&mut stream, 3).await;
    let kinds: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["vitrina.shop.created", "vitrina.product.upserted", "vitrina.stock.changed"]);
    let last_id = first.iter().rev().find_map(|(_, id)| id.clone()).expect("a batch ends with its position");

    // Live: a new write shows up on the open stream.
    assert_eq!(app.order(&shop, "k1", &one_line("A", 1)).await.status(), StatusCode::CREATED);
    let live = read_sse(&mut stream, 1).await;
    assert_eq!(live.last().map(|(k, _)| k.as_str()), Some("vitrina.order.placed"));
    drop(stream);

    // Resuming from the position seen before the order serves only what came after it.
    let mut resumed =
        app.get("/shops/acme/events/stream").bearer_auth(&shop.key).header("last-event-id", &last_id).send().await.unwrap();
    let again = read_sse(&mut resumed, 1).await;
    assert_eq!(again.first().map(|(k, _)| k.as_str()), Some("vitrina.order.placed"));
    let bad = app.get("/shops/acme/events/stream?after=nonsense").bearer_auth(&shop.key).send().await.unwrap();
    assert_eq!(problem(bad).await.0, StatusCode::BAD_REQUEST);
    // Too long to be a position: refused, not dropped (a stream from the start would replay all).
    let long = format!("/shops/acme/events/stream?after={}.1", "9".repeat(70));
    let bad = app.get(&long).bearer_auth(&shop.key).send().await.unwrap();
    let (status, body) = problem(bad).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_position")));
    let bad =
        app.get("/shops/acme/events/stream").bearer_auth(&shop.key).header("last-event-id", "9".repeat(70)).send().await.unwrap();
    assert_eq!(problem(bad).await.0, StatusCode::BAD_REQUEST);
}

/// 64 writers commit out of position order (each sleeps a random while before COMMIT) while a
/// consumer polls the feed: it ends with exactly the committed events, none skipped, none twice,
/// and nothing of the transactions that rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: the PostgreSQL pass runs it (.ci/run)"]
async fn the_feed_never_skips_a_late_commit_on_postgresql() {
    // Not on the embedded store: one writer commits in position order by construction.
    crate::backend::require(crate::backend::Backend::Postgres);
    let app = spawn().await;
    let shop = app.create_shop("acme").await;
    let url = app.state.config.postgres.shards[0].primary.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    let writers = crate::backend::late_committers(&url, "test.late");

    let consumer = {
        let (client, base, key, done) = (app.client.clone(), app.base.clone(), shop.key.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            let mut quiet_after_done = 0;
            while quiet_after_done < 20 {
                let mut url = format!("{base}/shops/acme/events?limit=7");
                if let Some(a) = &after {
                    url.push_str(&format!("&after={a}"));
                }
                let page: Value = client.get(url).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
                let events = page["events"].as_array().unwrap();
                if events.is_empty() && done.load(std::sync::atomic::Ordering::SeqCst) {
                    quiet_after_done += 1;
                }
                for e in events {
                    seen.push(e["id"].as_str().unwrap().to_owned());
                }
                after = page["next"].as_str().map(str::to_owned);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            seen
        })
    };
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = consumer.await.unwrap();
    let late: Vec<&String> = seen.iter().filter(|id| id.starts_with("late-")).collect();
    let mut unique = late.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), late.len(), "no event twice");
    let mut expected: Vec<&String> = committed.iter().collect();
    expected.sort();
    assert_eq!(unique, expected, "exactly the committed events, none skipped, none rolled back");
}

/// Transaction ids compare as numbers: 999 comes before 1000 in the feed (as text it would not,
/// and the page after 1000 would then skip 999).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: the PostgreSQL pass runs it (.ci/run)"]
async fn the_feed_orders_transactions_as_numbers_not_as_their_digits_on_postgresql() {
    // Not on the embedded store: its feed is ordered by one integer position.
    crate::backend::require(crate::backend::Backend::Postgres);
    let app = spawn().await;
    let shop = app.create_shop("digits").await;
    let url = app.state.config.postgres.shards[0].primary.clone();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // The later transaction's row first, so position order and transaction order disagree.
    for (txid, id) in [("1000", "second"), ("999", "first")] {
        client
            .execute(
                "INSERT INTO outbox (txid, id, shop, aggregate, type, sequence, envelope, created_at)
                 VALUES ($1::text::xid8, $2, 'digits', $2, 'test.digits', 1, json_build_object('id', $2::text)::text, now())",
                &[&txid, &id],
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..4 {
        let mut path = "/shops/digits/events?limit=1".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = app.get_json_as(&path, &shop.key).await;
        for e in page["events"].as_array().unwrap() {
            let id = e["id"].as_str().unwrap();
            if ["first", "second"].contains(&id) {
                seen.push(id.to_owned());
            }
        }
        after = page["next"].as_str().map(str::to_owned).or(after);
    }
    assert_eq!(seen, ["first", "second"]);
}

/// Events a shop brought along when it moved here were published by its old shard's relay: the
/// relay's read passes over them, also a whole batch of nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: the PostgreSQL pass runs it (.ci/run)"]
async fn the_relay_reads_past_events_a_moved_shop_brought_along_on_postgresql() {
    // Not on the embedded store: its read filters in the statement, planned with statistics it always has.
    crate::backend::require(crate::backend::Backend::Postgres);
    let app = spawn().await;
    app.create_shop("arrived").await;
    let url = app.state.config.postgres.shards[0].primary.clone();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let outbox = app.state.store().outboxes().pop().unwrap();
    let head = outbox.read(None, 10_000).await.unwrap().last().map(|e| e.position.clone());
    for (i, origin) in [Some("old"), Some("old"), Some("old"), None, Some("old"), None].into_iter().enumerate() {
        let id = format!("e{i}");
        client
            .execute(
                "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at, origin, origin_position)
                 VALUES ($1, 'arrived', $1, 'test.moved', 1, json_build_object('id', $1::text)::text, now(), $2,
                         CASE WHEN $2::text IS NULL THEN NULL ELSE '7' END)",
                &[&id, &origin],
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = head;
    let t0 = std::time::Instant::now();
    // Until ours are in (a transaction still running elsewhere holds the feed back meanwhile).
    while seen.len() < 2 && t0.elapsed() < std::time::Duration::from_secs(10) {
        // Two at a time: the first read meets three moved-in events before the first of ours.
        let batch = outbox.read(after.as_deref(), 2).await.unwrap();
        let Some(last) = batch.last() else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        after = Some(last.position.clone());
        seen.extend(batch.into_iter().map(|e| e.id).filter(|id| id.starts_with('e') && id.len() == 2));
    }
    assert_eq!(seen, ["e3", "e5"]);
}

/// A relay reads its next batch while it publishes one, and acknowledges the batch before that
/// with the read: the read follows the feed under the same lease, an acknowledgement renews the
/// lease, a relay without the lease changes nothing, and the last acknowledgement releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reads_ahead_and_acknowledges_with_the_next_read() {
    let app = crate::helpers::spawn_with(|c| {
        c.seed_on_start = false;
        c.events.relay = false;
    })
    .await;
    let shop = app.shop_with_stock("relayed", "MUG", 1).await;
    for n in 2..=7 {
        app.set_stock(&shop, "MUG", n).await;
    }
    let outbox = app.state.store().outboxes().pop().unwrap();
    let lease = std::time::Duration::from_secs(30);
    let now = chrono::Utc::now;
    let positions =
        |events: &[vitrina::store::outbox::OutboxEvent]| events.iter().map(|e| e.position.clone()).collect::<Vec<_>>();
    // The shop, its product and its stock changes, once a transaction running elsewhere (the
    // feed reads below every running one) no longer holds them back.
    let t0 = std::time::Instant::now();
    let all = loop {
        let all = positions(&outbox.read(None, 1000).await.unwrap());
        if all.len() >= 8 {
            break all;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the feed shows {} of the shop's events", all.len());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    let first = outbox.claim("probe", "me", lease, 3, now()).await.unwrap().expect("a first batch");
    assert_eq!(positions(&first.events), all[..3]);
    let first_last = first.events[2].position.clone();
    let stolen = outbox.ack_and_read("probe", "them", Some((&first_last, 3)), &first_last, lease, 3, now()).await.unwrap();
    assert!(stolen.is_none(), "another relay's acknowledgement is refused");
    assert_eq!(outbox.sink_states(&["probe".into()], now()).await.unwrap()[0].cursor, None, "and changes nothing");

    let (mut batch, mut pending, mut acked) = (first.events, None::<(String, u64)>, 0);
    loop {
        let after = batch.last().unwrap().position.clone();
        let acking = pending.as_ref().map(|(upto, count)| (upto.as_str(), *count));
        let ahead =
            outbox.ack_and_read("probe", "me", acking, &after, lease, 3, now()).await.unwrap().expect("the lease is mine");
        acked += batch.len();
        assert_eq!(positions(&ahead), all[acked..(acked + 3).min(all.len())], "what follows, in feed order");
        if let Some((upto, _)) = &pending {
            let state = &outbox.sink_states(&["probe".into()], now()).await.unwrap()[0];
            assert_eq!(state.cursor.as_ref(), Some(upto), "the batch before is acknowledged with the read");
            assert!(outbox.claim("probe", "them", lease, 3, now()).await.unwrap().is_none(), "and the lease renewed");
        }
        if ahead.is_empty() {
            assert!(outbox.ack("probe", "me", &after, batch.len() as u64, now()).await.unwrap());
            break;
        }
        pending = Some((after, batch.len() as u64));
        batch = ahead;
    }
    assert_eq!(acked, all.len());
    let states = outbox.sink_states(&["probe".into()], now()).await.unwrap();
    assert_eq!((states[0].delivered, states[0].cursor.as_deref()), (all.len() as u64, all.last().map(String::as_str)));
    app.set_stock(&shop, "MUG", 8).await;
    let t0 = std::time::Instant::now();
    let taken = loop {
        // The new event is read once its transaction is below every running one.
        if let Some(c) = outbox.claim("probe", "them", lease, 3, now()).await.unwrap() {
            break c;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the released lease is taken by another relay");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(taken.events.len(), 1);
}
