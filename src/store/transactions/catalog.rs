//! Products, stock figures and feed batches.

use chrono::{DateTime, Utc};

use super::Rows;
use crate::catalog::{Product, ProductInput};
use crate::events::envelope::{product_deleted, product_upserted, stock_changed};
use crate::ingest::FeedOp;
use crate::inventory::{plan_adjust, plan_set, Stock};
use crate::shops::ShopId;
use crate::store::{micros, StoreError, StoreResult, Upserted};

/// The rows the catalog reads and writes.
#[allow(async_fn_in_trait)]
pub trait CatalogRows: Rows {
    /// A product, locked for this transaction where others could change it.
    async fn product_for_update(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>>;
    /// Writes a product (a first write, or a new version of it); the version it stored.
    async fn save_product(&self, shop: &ShopId, p: &ProductInput, now: DateTime<Utc>) -> StoreResult<i64>;
    /// Units of a product reserved by open orders, locked where others could reserve more.
    async fn reserved_for_update(&self, shop: &ShopId, sku: &str) -> StoreResult<i64>;
    /// Removes a product and its stock row; whether there was a product.
    async fn delete_product_rows(&self, shop: &ShopId, sku: &str) -> StoreResult<bool>;
    /// The stock of a known product (none stocked yet: zero), locked where others could change
    /// it; `None` for a product that does not exist.
    async fn stock_for_update(&self, shop: &ShopId, sku: &str, now: DateTime<Utc>) -> StoreResult<Option<Stock>>;
    async fn write_on_hand(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<()>;
    /// A nested savepoint, so one feed line can be undone alone.
    async fn savepoint(&self) -> StoreResult<()>;
    /// Ends the innermost savepoint, keeping its writes or undoing them.
    async fn end_savepoint(&self, keep: bool) -> StoreResult<()>;
}

/// Creates or replaces a product; the same content again changes nothing (same version).
pub async fn upsert_product(
    rows: &impl CatalogRows,
    shop: &ShopId,
    p: &ProductInput,
    now: DateTime<Utc>,
) -> StoreResult<(Product, Upserted)> {
    rows.home(shop).await?;
    if let Some(old) = rows.product_for_update(shop, &p.sku).await?.filter(|old| !p.changes(old)) {
        return Ok((old, Upserted::Unchanged));
    }
    let version = rows.save_product(shop, p, now).await?;
    let product = p.stored(shop, version, micros(now));
    rows.emit(product_upserted(&product), now).await?;
    Ok((product, if version == 1 { Upserted::Created } else { Upserted::Updated }))
}

/// Deletes a product and its stock; refused while open orders hold a reservation on it.
pub async fn delete_product(rows: &impl CatalogRows, shop: &ShopId, sku: &str) -> StoreResult<()> {
    rows.home(shop).await?;
    let reserved = rows.reserved_for_update(shop, sku).await?;
    if reserved > 0 {
        return Err(StoreError::conflict(
            "product_reserved",
            format!("product {sku} has {reserved} units reserved by open orders"),
        ));
    }
    if !rows.delete_product_rows(shop, sku).await? {
        return Err(StoreError::not_found("product", sku));
    }
    rows.emit(product_deleted(shop, sku), Utc::now()).await
}

/// Sets the quantity on hand; never below what is reserved. The same figure writes nothing.
pub async fn set_stock(
    rows: &impl CatalogRows,
    shop: &ShopId,
    sku: &str,
    on_hand: i64,
    now: DateTime<Utc>,
) -> StoreResult<Stock> {
    rows.home(shop).await?;
    let current = rows.stock_for_update(shop, sku, now).await?.ok_or_else(|| StoreError::not_found("product", sku))?;
    let stock = Stock::new(sku.to_owned(), on_hand, current.reserved);
    if let Some(on_hand) = plan_set(&current, on_hand)? {
        rows.write_on_hand(shop, sku, on_hand, now).await?;
        rows.emit(stock_changed(shop, &stock), now).await?;
    }
    Ok(stock)
}

/// Receives or writes off stock; never below what is reserved.
pub async fn adjust_stock(
    rows: &impl CatalogRows,
    shop: &ShopId,
    sku: &str,
    delta: i64,
    now: DateTime<Utc>,
) -> StoreResult<Stock> {
    rows.home(shop).await?;
    let current = rows.stock_for_update(shop, sku, now).await?.ok_or_else(|| StoreError::not_found("product", sku))?;
    let on_hand = plan_adjust(&current, delta)?;
    rows.write_on_hand(shop, sku, on_hand, now).await?;
    let stock = Stock::new(sku.to_owned(), on_hand, current.reserved);
    rows.emit(stock_changed(shop, &stock), now).await?;
    Ok(stock)
}

/// A feed batch in one transaction, each line in its own savepoint: a refused line leaves no
/// trace, its neighbours stay. One result per line, in order.
pub async fn apply_feed(
    rows: &impl CatalogRows,
    shop: &ShopId,
    ops: Vec<FeedOp>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<StoreResult<()>>> {
    // A moved shop fails the whole batch (the router follows it), not line by line.
    rows.home(shop).await?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        rows.savepoint().await?;
        let r = match &op {
            FeedOp::Product(p) => upsert_product(rows, shop, p, now).await.map(|_| ()),
            FeedOp::Stock { sku, on_hand } => set_stock(rows, shop, sku, *on_hand, now).await.map(|_| ()),
        };
        rows.end_savepoint(r.is_ok()).await?;
        results.push(r);
    }
    Ok(results)
}
