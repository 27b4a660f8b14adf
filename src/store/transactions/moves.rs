//! A shop's part of a move, on each shard: the mark that fences or forwards its writes, its rows
//! exported whole from the old shard, and imported whole into the new one.

use super::Rows;
use crate::catalog::Product;
use crate::orders::Order;
use crate::shops::{ShopId, ShopRecord};
use crate::store::dump::{IdempotencyRow, ShopDump, StockRow};
use crate::store::outbox::Webhook;
use crate::store::{mark_precondition, mark_refused, StoreError, StoreResult};

/// The rows a move reads and writes on one shard.
#[allow(async_fn_in_trait)]
pub trait MoveRows: Rows {
    /// Sets the shop's mark from `expected` to `next`; whether it was `expected`. Holds the
    /// shop's fence exclusively where writes in flight take it shared.
    async fn swap_mark(&self, shop: &ShopId, expected: Option<&str>, next: Option<&str>) -> StoreResult<bool>;
    /// The shop's mark, locked: `None` for no shop here, `Some(None)` for a live one, `Some(Some(to))`
    /// for one that left (its rows a tombstone).
    async fn mark_for_update(&self, shop: &ShopId) -> StoreResult<Option<Option<String>>>;
    async fn shop_record(&self, shop: &ShopId) -> StoreResult<Option<ShopRecord>>;
    async fn all_products(&self, shop: &ShopId) -> StoreResult<Vec<Product>>;
    async fn all_stock(&self, shop: &ShopId) -> StoreResult<Vec<StockRow>>;
    async fn all_orders(&self, shop: &ShopId) -> StoreResult<Vec<Order>>;
    async fn all_idempotency(&self, shop: &ShopId) -> StoreResult<Vec<IdempotencyRow>>;
    async fn all_webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>>;
    /// The shop's outbox rows and aggregate sequences into `dump`.
    async fn export_events(&self, shop: &ShopId, dump: &mut ShopDump) -> StoreResult<()>;
    /// Deletes every row of the shop, children first.
    async fn purge(&self, shop: &ShopId) -> StoreResult<()>;
    /// Writes the shop's rows as exported, keeping versions, times and history.
    async fn insert_rows(&self, dump: &ShopDump) -> StoreResult<()>;
    async fn import_events(&self, shop: &ShopId, dump: &ShopDump) -> StoreResult<()>;
    /// The subscriptions as exported: those from an earlier stay here are updated, those deleted
    /// meanwhile go with their delivery log.
    async fn import_webhooks(&self, shop: &ShopId, hooks: &[Webhook]) -> StoreResult<()>;
}

/// Moves the shop's mark along a move: a fence goes up on a live shop, and only a fenced shop is
/// released or sent on, so two moves of one shop never interleave.
pub async fn mark(rows: &impl MoveRows, shop: &ShopId, next: Option<&str>) -> StoreResult<()> {
    if rows.swap_mark(shop, mark_precondition(next), next).await? {
        return Ok(());
    }
    Err(match rows.shop_record(shop).await? {
        None => StoreError::not_found("shop", shop.as_str()),
        Some(_) => mark_refused(shop, next),
    })
}

pub async fn export(rows: &impl MoveRows, shop: &ShopId) -> StoreResult<ShopDump> {
    let record = rows.shop_record(shop).await?.ok_or_else(|| StoreError::not_found("shop", shop.as_str()))?;
    let mut dump = ShopDump {
        shop: record,
        products: rows.all_products(shop).await?,
        stock: rows.all_stock(shop).await?,
        orders: rows.all_orders(shop).await?,
        idempotency: rows.all_idempotency(shop).await?,
        events: Vec::new(),
        sequences: Vec::new(),
        webhooks: rows.all_webhooks(shop).await?,
        origin: String::new(),
    };
    rows.export_events(shop, &mut dump).await?;
    Ok(dump)
}

/// Writes a shop's rows as exported. Rows it left behind here when it moved away earlier (a
/// tombstone) are replaced; a shop living here is refused.
pub async fn import(rows: &impl MoveRows, dump: &ShopDump) -> StoreResult<()> {
    let shop = &dump.shop.shop.id;
    match rows.mark_for_update(shop).await? {
        None => {}
        Some(Some(_)) => rows.purge(shop).await?,
        Some(None) => return Err(StoreError::conflict("shop_exists", format!("shop {shop} already lives on this shard"))),
    }
    rows.insert_rows(dump).await?;
    rows.import_events(shop, dump).await?;
    rows.import_webhooks(shop, &dump.webhooks).await
}
