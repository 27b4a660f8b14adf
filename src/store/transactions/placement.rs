//! Placing orders, a group at a time. The orders for one shard that queued while its previous
//! group committed are decided together in one transaction (AliSQL's hot-row group update, done
//! by the application): each shop's keys, stored answers, prices and stock rows are read once,
//! the shelf hands out units in arrival order, and the group's orders, answers and events are
//! written with one statement each, then one commit. Every order's answer is what placing the
//! orders one after the other would give; a group of one is a lone order.

use std::collections::BTreeSet;

use futures::future::{join5, try_join4, try_join_all};

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

/// Whether a group that failed as a whole is worth placing again order by order: a write error
/// (a constraint, a panic) may be one order's doing; a database that is busy, unreachable or
/// shutting down fails every order the same way, and trying each alone would only add load.
pub fn retry_alone(failure: &StoreError, size: usize) -> bool {
    size > 1 && matches!(failure, StoreError::Backend(_))
}

/// The answer of a group of one.
pub fn answer_alone(group: StoreResult<Vec<StoreResult<PlaceOutcome>>>) -> StoreResult<PlaceOutcome> {
    group?.pop().unwrap_or_else(|| Err(StoreError::Backend("a placement went unanswered".into())))
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
    let decided = decide_group(rows, group).await?;
    write_group(rows, group, decided).await
}

/// What a group's reads decided, before anything of it is written.
pub struct Decided<'g> {
    answers: Answers,
    placed: Vec<Placed>,
    takes: Vec<Takes<'g>>,
}

/// The first half of `place`: reads only (under the locks the transaction takes), so a backend
/// may send them together with the statement that opens the transaction.
pub async fn decide_group<'g>(rows: &impl OrderRows, group: &'g [Placement]) -> StoreResult<Decided<'g>> {
    let mut answers: Answers = group.iter().map(|_| None).collect();
    let mut placed = Vec::new();
    let mut takes = Vec::new();
    let mut shops: Vec<&ShopId> = Vec::new();
    for p in group {
        if !shops.contains(&&p.shop) {
            shops.push(&p.shop);
        }
    }
    // Shops share no stock, so each decides its orders alone, in arrival order within the shop.
    for shop in shops {
        let members: Vec<usize> = (0..group.len()).filter(|&i| group[i].shop == *shop).collect();
        takes.extend(decide(rows, shop, group, &members, &mut answers, &mut placed).await?);
    }
    Ok(Decided { answers, placed, takes })
}

/// The second half of `place`: writes what `decide_group` decided; every order's answer.
pub async fn write_group(
    rows: &impl OrderRows,
    group: &[Placement],
    decided: Decided<'_>,
) -> StoreResult<Vec<StoreResult<PlaceOutcome>>> {
    let Decided { mut answers, placed, takes } = decided;
    write(rows, group, &mut answers, placed, takes).await?;
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Backend("a placement was left undecided".into()))))
        .collect())
}

/// What one shop's orders take: its stock, per SKU.
struct Takes<'g> {
    shop: &'g ShopId,
    skus: Vec<(String, i64)>,
}

/// Decides the orders of one shop: refusals go to `answers`, orders to create to `placed`, and
/// the stock they take is returned.
async fn decide<'g>(
    rows: &impl OrderRows,
    shop: &'g ShopId,
    group: &'g [Placement],
    members: &[usize],
    answers: &mut Answers,
    placed: &mut Vec<Placed>,
) -> StoreResult<Option<Takes<'g>>> {
    let mut keys: Vec<&str> = Vec::with_capacity(members.len());
    for &i in members {
        if !keys.contains(&group[i].order.idempotency_key.as_str()) {
            keys.push(&group[i].order.idempotency_key);
        }
    }
    let skus: Vec<&str> = members
        .iter()
        .flat_map(|&i| group[i].order.lines.iter().map(|l| l.sku.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Everything the shop's orders may need, asked at once (on PostgreSQL the statements go out
    // together, in this order, the shop's fence first): a replayed or refused order's SKUs are
    // read and locked too, which costs less than a round trip more.
    let (home, claimed, records, catalog, stock) = join5(
        rows.home(shop),
        rows.claim_keys(shop, &keys),
        rows.idempotency_records(shop, &keys),
        rows.prices(shop, &skus),
        rows.stock_for_update(shop, &skus),
    )
    .await;
    match home {
        Ok(()) => {}
        // The shop left (or is leaving) this shard: its orders follow it, the others stay.
        Err(e @ (StoreError::Moved { .. } | StoreError::Unavailable(_))) => {
            members.iter().for_each(|&i| answers[i] = Some(Err(e.clone())));
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let (claimed, records, catalog, stock) = (claimed?, records?, catalog?, stock?);
    // Keys another instance's transaction holds now.
    let held: Vec<&str> = keys.iter().zip(&claimed).filter(|(_, ok)| !**ok).map(|(k, _)| *k).collect();

    let mut shelf = Shelf::new(stock);
    let mut started: Vec<&str> = Vec::new();
    for &i in members {
        let p = &group[i].order;
        let key = p.idempotency_key.as_str();
        if let Some((_, record)) = records.iter().find(|(k, _)| k == key) {
            // A finished request's key: every repeat gets its stored answer.
            answers[i] = Some(Ok(record.clone().outcome(&p.fingerprint)));
            continue;
        }
        if held.contains(&key) || started.contains(&key) {
            // In flight elsewhere, or earlier in this very group.
            answers[i] = Some(Err(in_flight()));
            continue;
        }
        started.push(key);
        let lookup = |sku: &str| catalog.iter().find(|(s, _, _)| s == sku).map(|(_, name, price)| (name.clone(), *price));
        let (lines, total) = match price_lines(p.currency, &p.lines, lookup) {
            Ok(priced) => priced,
            Err(e) => {
                answers[i] = Some(Err(Refusal::from(e).into()));
                continue;
            }
        };
        let wanted: Vec<(&str, i64)> = p.lines.iter().map(|l| (l.sku.as_str(), l.qty)).collect();
        match shelf.take(&wanted) {
            Ok(drained) => placed.push(Placed { at: i, order: new_order(shop, p, lines, total), drained }),
            Err(s) => answers[i] = Some(Err(StoreError::InsufficientStock { skus: s.short, sold_out: s.sold_out })),
        }
    }
    let skus: Vec<(String, i64)> = shelf.taken().into_iter().map(|(sku, n)| (sku.to_owned(), n)).collect();
    Ok((!skus.is_empty()).then_some(Takes { shop, skus }))
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

/// The group's stock, orders, stored answers and events, each kind in one statement and all
/// sent at once; events in arrival order, an order's own before the stock rows it emptied.
async fn write(
    rows: &impl OrderRows,
    group: &[Placement],
    answers: &mut Answers,
    mut placed: Vec<Placed>,
    takes: Vec<Takes<'_>>,
) -> StoreResult<()> {
    if placed.is_empty() {
        return Ok(());
    }
    placed.sort_by_key(|p| p.at);
    let now = group_time(group);
    let orders: Vec<&Order> = placed.iter().map(|p| &p.order).collect();
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
    let takes: Vec<(&ShopId, Vec<(&str, i64)>)> =
        takes.iter().map(|t| (t.shop, t.skus.iter().map(|(sku, n)| (sku.as_str(), *n)).collect())).collect();
    let reserved = try_join_all(takes.iter().map(|(shop, skus)| rows.reserve(shop, skus, now)));
    let (reserved, (), (), ()) =
        try_join4(reserved, rows.insert_orders(&orders), rows.remember(&remembered, now), rows.emit_all(events, now)).await?;
    for ((_, skus), changed) in takes.iter().zip(reserved) {
        if changed != skus.len() {
            // The rows were read under lock in this transaction: a miss means they were not.
            return Err(StoreError::Backend(format!(
                "stock changed under a placement group: {changed} of {} rows held",
                skus.len()
            )));
        }
    }
    for p in placed {
        answers[p.at] = Some(Ok(PlaceOutcome::Created(p.order)));
    }
    Ok(())
}
