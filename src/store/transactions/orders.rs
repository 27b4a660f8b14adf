//! The rows orders read and write, and moving an order along its lifecycle (placing orders is
//! `placement.rs`).

use chrono::{DateTime, Utc};

use super::Rows;
use crate::events::envelope::{order_changed, stock_changed};
use crate::inventory::Stock;
use crate::money::Money;
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, Order, OrderStatus, StockEffect};
use crate::shops::ShopId;
use crate::store::{StoreError, StoreResult};

/// A placement's answer as stored under its Idempotency-Key.
pub struct Remembered<'a> {
    pub shop: &'a ShopId,
    pub key: &'a str,
    pub fingerprint: &'a [u8; 32],
    pub answer: String,
}

/// The rows orders read and write.
#[allow(async_fn_in_trait)]
pub trait OrderRows: Rows {
    /// Which of `keys` this transaction may act on: false for one another transaction holds.
    async fn claim_keys(&self, shop: &ShopId, keys: &[&str]) -> StoreResult<Vec<bool>>;
    /// The stored answers under those of `keys` that have one.
    async fn idempotency_records(&self, shop: &ShopId, keys: &[&str]) -> StoreResult<Vec<(String, IdempotencyRecord)>>;
    /// The name and price of each of `skus` the shop sells.
    async fn prices(&self, shop: &ShopId, skus: &[&str]) -> StoreResult<Vec<(String, String, Money)>>;
    /// The stock rows of `skus` (sorted), locked until commit where others could change them.
    async fn stock_for_update(&self, shop: &ShopId, skus: &[&str]) -> StoreResult<Vec<Stock>>;
    /// The only way stock is taken: one conditional update per `(sku, qty)`, each applied only
    /// if that many are available. How many rows it changed.
    async fn reserve(&self, shop: &ShopId, takes: &[(&str, i64)], now: DateTime<Utc>) -> StoreResult<usize>;
    /// Writes new orders: their rows, lines and first history entries.
    async fn insert_orders(&self, orders: &[&Order]) -> StoreResult<()>;
    /// Stores the answers to placements under their keys.
    async fn remember(&self, answers: &[Remembered<'_>], now: DateTime<Utc>) -> StoreResult<()>;
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
