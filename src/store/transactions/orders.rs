//! Placing an order and moving it along its lifecycle.

use chrono::{DateTime, Utc};

use super::Rows;
use crate::events::envelope::{order_changed, stock_changed};
use crate::inventory::Stock;
use crate::money::Money;
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{price_lines, Action, HistoryEntry, Order, OrderStatus, PlaceOrder, PlaceOutcome, StockEffect};
use crate::refusal::Refusal;
use crate::shops::ShopId;
use crate::store::{micros, StoreError, StoreResult};

/// The rows orders read and write.
#[allow(async_fn_in_trait)]
pub trait OrderRows: Rows {
    /// Whether this transaction may act on the Idempotency-Key: false while another holds it.
    async fn claim_key(&self, shop: &ShopId, key: &str) -> StoreResult<bool>;
    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>>;
    /// The name and price of each of `skus` the shop sells.
    async fn prices(&self, shop: &ShopId, skus: &[&str]) -> StoreResult<Vec<(String, String, Money)>>;
    /// The only way stock is taken: reserve `qty` if that many are available; the row after.
    async fn reserve(&self, shop: &ShopId, sku: &str, qty: i64, now: DateTime<Utc>) -> StoreResult<Option<Stock>>;
    /// Which of `skus` have nothing available (rather than less than was asked).
    async fn nothing_available(&self, shop: &ShopId, skus: &[String]) -> StoreResult<Vec<String>>;
    /// Writes a new order: its row, lines and first history entry.
    async fn insert_order(&self, order: &Order) -> StoreResult<()>;
    /// Stores the answer to a placement under its key.
    async fn remember(
        &self,
        shop: &ShopId,
        key: &str,
        fingerprint: &[u8; 32],
        answer: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// An order's status, locked for this transaction where others could change it.
    async fn status_for_update(&self, shop: &ShopId, id: &str) -> StoreResult<Option<String>>;
    /// An order's lines as (SKU, quantity), by SKU.
    async fn order_lines(&self, id: &str) -> StoreResult<Vec<(String, i64)>>;
    /// Applies a transition's effect on one line's reserved stock; the row after, if it held.
    async fn settle(
        &self,
        shop: &ShopId,
        sku: &str,
        qty: i64,
        effect: StockEffect,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Stock>>;
    /// Sets the order's status (it no longer expires) and appends it to the history.
    async fn record_status(&self, id: &str, to: OrderStatus, reason: Option<&str>, now: DateTime<Utc>) -> StoreResult<()>;
    async fn load_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>>;
}

/// Places an order: the stored answer again for a key seen before; else every line's stock
/// reserved by a conditional update, or nothing reserved and the short SKUs named.
pub async fn place(rows: &impl OrderRows, shop: &ShopId, p: &PlaceOrder) -> StoreResult<PlaceOutcome> {
    rows.home(shop).await?;
    if !rows.claim_key(shop, &p.idempotency_key).await? {
        return Err(StoreError::conflict(
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed",
        ));
    }
    if let Some(record) = rows.idempotency_record(shop, &p.idempotency_key).await? {
        return Ok(record.outcome(&p.fingerprint));
    }

    let skus: Vec<&str> = p.lines.iter().map(|l| l.sku.as_str()).collect();
    let catalog = rows.prices(shop, &skus).await?;
    let (lines, total) = price_lines(p.currency, &p.lines, |sku| {
        catalog.iter().find(|(s, _, _)| s == sku).map(|(_, name, price)| (name.clone(), *price))
    })
    .map_err(Refusal::from)?;

    // In SKU order, so two orders never wait on each other's rows in opposite orders.
    let mut in_lock_order: Vec<_> = p.lines.iter().collect();
    in_lock_order.sort_by(|a, b| a.sku.cmp(&b.sku));
    let (mut short, mut drained) = (Vec::new(), Vec::new());
    for line in in_lock_order {
        match rows.reserve(shop, &line.sku, line.qty, p.now).await? {
            None => short.push(line.sku.clone()),
            // Available reached 0: other instances can refuse this SKU from memory from now on.
            Some(stock) if stock.available == 0 => drained.push(stock),
            Some(_) => {}
        }
    }
    if !short.is_empty() {
        // Reported in the order the client sent the lines.
        short.sort_by_key(|s| p.lines.iter().position(|l| &l.sku == s));
        let sold_out = rows.nothing_available(shop, &short).await?;
        return Err(StoreError::InsufficientStock { skus: short, sold_out });
    }

    // The order as a later read returns it (times at the stored precision), without reading it back.
    let created = micros(p.now);
    let order = Order {
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
    };
    rows.insert_order(&order).await?;
    let answer = serde_json::to_string(&order).map_err(|e| StoreError::Backend(e.to_string()))?;
    rows.remember(shop, &p.idempotency_key, &p.fingerprint, &answer, p.now).await?;
    rows.emit(order_changed(&order), p.now).await?;
    for stock in &drained {
        rows.emit(stock_changed(shop, stock), p.now).await?;
    }
    Ok(PlaceOutcome::Created(order))
}

/// Moves an order along its lifecycle if its status allows `action`, settling its lines' stock.
pub async fn transition(
    rows: &impl OrderRows,
    shop: &ShopId,
    id: &str,
    action: Action,
    now: DateTime<Utc>,
) -> StoreResult<Order> {
    rows.home(shop).await?;
    let status = rows.status_for_update(shop, id).await?.ok_or_else(|| StoreError::not_found("order", id))?;
    let from = OrderStatus::parse(&status).ok_or_else(|| StoreError::Backend(format!("order {id} has status {status}")))?;
    let to = action.apply(from).ok_or_else(|| {
        StoreError::conflict("invalid_transition", format!("cannot {} an order that is {}", action.verb(), from.as_str()))
    })?;

    let effect = action.stock_effect();
    let mut refilled = Vec::new();
    if effect != StockEffect::None {
        for (sku, qty) in rows.order_lines(id).await? {
            let Some(stock) = rows.settle(shop, &sku, qty, effect, now).await? else {
                return Err(StoreError::Backend(format!("reservation for {sku} in order {id} is missing")));
            };
            // Available rose from 0: whoever remembers the SKU as sold out must hear of it.
            if effect == StockEffect::Release && stock.available == qty {
                refilled.push(stock);
            }
        }
    }
    rows.record_status(id, to, action.reason(), now).await?;
    let order = rows.load_order(shop, id).await?.ok_or_else(|| StoreError::Backend("order vanished after update".into()))?;
    rows.emit(order_changed(&order), now).await?;
    for stock in &refilled {
        rows.emit(stock_changed(shop, stock), now).await?;
    }
    Ok(order)
}
