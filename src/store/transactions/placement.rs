//! Placing orders, a group at a time. The orders for one shard that queued while its previous
//! group committed are decided together in one transaction (AliSQL's hot-row group update, done
//! by the application): each shop's keys, stored answers, prices and stock rows are read once,
//! the shelf hands out units in arrival order, and the group's orders, answers and events are
//! written with one statement each, then one commit. Every order's answer is what placing the
//! orders one after the other would give; a group of one is a lone order.

use std::collections::BTreeSet;

use super::orders::{OrderRows, Remembered};
use crate::events::envelope::{order_changed, stock_changed, NewEvent};
use crate::inventory::allocation::Shelf;
use crate::inventory::Stock;
use crate::orders::{price_lines, HistoryEntry, Order, OrderStatus, PlaceOrder, PlaceOutcome};
use crate::refusal::Refusal;
use crate::shops::ShopId;
use crate::store::{micros, StoreError, StoreResult};
use crate::telemetry::context::TraceParent;

/// One order of a group: the shop it is for, what to place, and the request it came from (its
/// events are recorded under that request's span, not the group's).
#[derive(Debug, Clone)]
pub struct Placement {
    pub shop: ShopId,
    pub order: PlaceOrder,
    /// The caller's span, and its trace context for when no spans are exported.
    pub span: tracing::Span,
    pub traceparent: Option<String>,
}

impl Placement {
    /// An order placed by the current request.
    pub fn here(shop: &ShopId, order: PlaceOrder) -> Placement {
        let traceparent = crate::telemetry::context::current_header();
        Placement { shop: shop.clone(), order, span: tracing::Span::current(), traceparent }
    }
}

/// An order this group creates, with the stock rows it emptied.
struct Placed {
    at: usize,
    order: Order,
    drained: Vec<Stock>,
}

type Answers = Vec<Option<StoreResult<PlaceOutcome>>>;

/// Places a group of orders in the caller's transaction. The outer error fails the whole group
/// (nothing of it may be committed); the inner ones are each order's own answer, and a refused
/// order has taken nothing.
pub async fn place(rows: &impl OrderRows, group: &[Placement]) -> StoreResult<Vec<StoreResult<PlaceOutcome>>> {
    let mut answers: Answers = group.iter().map(|_| None).collect();
    let mut placed = Vec::new();
    let mut shops: Vec<&ShopId> = Vec::new();
    for p in group {
        if !shops.contains(&&p.shop) {
            shops.push(&p.shop);
        }
    }
    // Shops share no stock, so each decides its orders alone, in arrival order within the shop.
    for shop in shops {
        let members: Vec<usize> = (0..group.len()).filter(|&i| group[i].shop == *shop).collect();
        decide(rows, shop, group, &members, &mut answers, &mut placed).await?;
    }
    write(rows, group, &mut answers, placed).await?;
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Backend("a placement was left undecided".into()))))
        .collect())
}

/// Decides the orders of one shop: refusals go to `answers`, orders to create to `placed`.
async fn decide(
    rows: &impl OrderRows,
    shop: &ShopId,
    group: &[Placement],
    members: &[usize],
    answers: &mut Answers,
    placed: &mut Vec<Placed>,
) -> StoreResult<()> {
    match rows.home(shop).await {
        Ok(()) => {}
        // The shop left (or is leaving) this shard: its orders follow it, the others stay.
        Err(e @ (StoreError::Moved { .. } | StoreError::Unavailable(_))) => {
            members.iter().for_each(|&i| answers[i] = Some(Err(e.clone())));
            return Ok(());
        }
        Err(e) => return Err(e),
    }

    // Each key once: a transaction another instance runs under one of them holds it.
    let mut keys: Vec<&str> = Vec::with_capacity(members.len());
    for &i in members {
        if !keys.contains(&group[i].order.idempotency_key.as_str()) {
            keys.push(&group[i].order.idempotency_key);
        }
    }
    let claimed = rows.claim_keys(shop, &keys).await?;
    let held: Vec<&str> = keys.iter().zip(&claimed).filter(|(_, ok)| !**ok).map(|(k, _)| *k).collect();
    let free: Vec<&str> = keys.iter().zip(&claimed).filter(|(_, ok)| **ok).map(|(k, _)| *k).collect();
    let records = if free.is_empty() { Vec::new() } else { rows.idempotency_records(shop, &free).await? };

    let mut open: Vec<usize> = Vec::with_capacity(members.len());
    let mut started: Vec<&str> = Vec::new();
    for &i in members {
        let p = &group[i].order;
        let key = p.idempotency_key.as_str();
        if let Some((_, record)) = records.iter().find(|(k, _)| k == key) {
            // A finished request's key: every repeat gets its stored answer.
            answers[i] = Some(Ok(record.clone().outcome(&p.fingerprint)));
        } else if held.contains(&key) || started.contains(&key) {
            // In flight elsewhere, or earlier in this very group.
            answers[i] = Some(Err(in_flight()));
        } else {
            started.push(key);
            open.push(i);
        }
    }

    let skus: Vec<&str> = open
        .iter()
        .flat_map(|&i| group[i].order.lines.iter().map(|l| l.sku.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if skus.is_empty() {
        return Ok(());
    }
    let catalog = rows.prices(shop, &skus).await?;
    let mut priced = Vec::with_capacity(open.len());
    for i in open {
        let p = &group[i].order;
        let lookup = |sku: &str| catalog.iter().find(|(s, _, _)| s == sku).map(|(_, name, price)| (name.clone(), *price));
        match price_lines(p.currency, &p.lines, lookup) {
            Ok(lines) => priced.push((i, lines)),
            Err(e) => answers[i] = Some(Err(Refusal::from(e).into())),
        }
    }

    let skus: Vec<&str> = priced
        .iter()
        .flat_map(|(i, _)| group[*i].order.lines.iter().map(|l| l.sku.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if skus.is_empty() {
        return Ok(());
    }
    let mut shelf = Shelf::new(rows.stock_for_update(shop, &skus).await?);
    let mut created = Vec::with_capacity(priced.len());
    for (i, (lines, total)) in priced {
        let p = &group[i].order;
        let wanted: Vec<(&str, i64)> = p.lines.iter().map(|l| (l.sku.as_str(), l.qty)).collect();
        match shelf.take(&wanted) {
            Ok(drained) => created.push(Placed { at: i, order: new_order(shop, p, lines, total), drained }),
            Err(s) => answers[i] = Some(Err(StoreError::InsufficientStock { skus: s.short, sold_out: s.sold_out })),
        }
    }
    let takes = shelf.taken();
    let now = group_time(group);
    let changed = rows.reserve(shop, &takes, now).await?;
    if changed != takes.len() {
        // The rows were read under lock in this transaction: a miss means they were not.
        return Err(StoreError::Backend(format!(
            "stock changed under a placement group: {changed} of {} rows held",
            takes.len()
        )));
    }
    placed.extend(created);
    Ok(())
}

/// The time of the group's writes that are not one order's own: its latest request's, so no
/// event or stock change predates the order it follows from.
fn group_time(group: &[Placement]) -> chrono::DateTime<chrono::Utc> {
    group.iter().map(|p| p.order.now).max().unwrap_or_default()
}

fn in_flight() -> StoreError {
    StoreError::conflict("idempotency_key_in_flight", "a request with this Idempotency-Key is still being processed")
}

/// The order as a later read returns it (times at the stored precision), without reading it back.
fn new_order(shop: &ShopId, p: &PlaceOrder, lines: Vec<crate::orders::OrderLine>, total: crate::money::Money) -> Order {
    let created = micros(p.now);
    Order {
        id: p.id.clone(),
        shop: shop.clone(),
        customer_id: p.customer_id.clone(),
        status: OrderStatus::Placed,
        lines,
        total,
        history: vec![HistoryEntry { status: OrderStatus::Placed, at: created, reason: None }],
        created_at: created,
        updated_at: created,
        expires_at: Some(micros(p.expires_at)),
    }
}

/// The group's orders, stored answers and events, each kind in one statement; events in
/// arrival order, an order's own before the stock rows it emptied.
async fn write(rows: &impl OrderRows, group: &[Placement], answers: &mut Answers, mut placed: Vec<Placed>) -> StoreResult<()> {
    if placed.is_empty() {
        return Ok(());
    }
    placed.sort_by_key(|p| p.at);
    let orders: Vec<&Order> = placed.iter().map(|p| &p.order).collect();
    rows.insert_orders(&orders).await?;
    let mut remembered = Vec::with_capacity(placed.len());
    let mut events: Vec<NewEvent> = Vec::with_capacity(placed.len() * 2);
    for p in &placed {
        let g = &group[p.at];
        let answer = serde_json::to_string(&p.order).map_err(|e| StoreError::Backend(e.to_string()))?;
        remembered.push(Remembered { shop: &g.shop, key: &g.order.idempotency_key, fingerprint: &g.order.fingerprint, answer });
        // As a lone order's would: each event under an outbox span of its own request.
        let traced = |mut e: NewEvent| {
            let span =
                tracing::info_span!(parent: &g.span, "outbox", otel.name = %format_args!("outbox {}", e.kind), event = e.kind);
            e.traceparent = TraceParent::of_span(&span).map(|tp| tp.to_string()).or_else(|| g.traceparent.clone());
            e
        };
        events.push(traced(order_changed(&p.order)));
        events.extend(p.drained.iter().map(|s| traced(stock_changed(&g.shop, s))));
    }
    let now = group_time(group);
    rows.remember(&remembered, now).await?;
    rows.emit_all(events, now).await?;
    for p in placed {
        answers[p.at] = Some(Ok(PlaceOutcome::Created(p.order)));
    }
    Ok(())
}
