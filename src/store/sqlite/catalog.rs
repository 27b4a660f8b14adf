//! Products, stock and feed batches on SQLite. Every function runs inside the caller's
//! transaction (the writer's savepoint, or a reader's implicit read transaction).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::shops::check_home;
use super::outbox::emit;
use super::{parse_ts, ts};
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::events::envelope as events;
use crate::ingest::FeedOp;
use crate::inventory::{plan_adjust, plan_set, Stock};
use crate::money::{Currency, Money};
use crate::shops::ShopId;
use crate::store::{micros, StoreError, StoreResult, Upserted};

const PRODUCT_COLS: &str = "shop, sku, name, category, price_amount, currency, attributes, version, updated_at";

fn product_row(r: &Row<'_>) -> rusqlite::Result<Product> {
    let currency: String = r.get(5)?;
    let attributes: String = r.get(6)?;
    let bad = |what: &str| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into());
    Ok(Product {
        shop: ShopId::trusted(r.get(0)?),
        sku: r.get(1)?,
        name: r.get(2)?,
        category: r.get(3)?,
        price: Money::new(r.get(4)?, Currency::parse(&currency).ok_or_else(|| bad("currency"))?),
        attributes: serde_json::from_str(&attributes).map_err(|_| bad("attributes"))?,
        version: r.get(7)?,
        updated_at: parse_ts(&r.get::<_, String>(8)?)?,
    })
}

pub fn get_product(c: &Connection, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
    Ok(c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = ?1 AND sku = ?2"))?
        .query_row(params![shop.as_str(), sku], product_row)
        .optional()?)
}

/// Writes a product row as given (version and time included).
pub fn write_product(c: &Connection, p: &Product) -> StoreResult<()> {
    let attributes = serde_json::to_string(&p.attributes).map_err(|e| StoreError::Backend(e.to_string()))?;
    c.prepare_cached(
        "INSERT INTO products (shop, sku, name, category, price_amount, currency, attributes, version, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (shop, sku) DO UPDATE SET name = excluded.name, category = excluded.category,
           price_amount = excluded.price_amount, currency = excluded.currency,
           attributes = excluded.attributes, version = excluded.version, updated_at = excluded.updated_at",
    )?
    .execute(params![
        p.shop.as_str(),
        p.sku,
        p.name,
        p.category,
        p.price.amount,
        p.price.currency.as_str(),
        attributes,
        p.version,
        ts(p.updated_at)
    ])?;
    Ok(())
}

pub fn upsert_product(c: &Connection, shop: &ShopId, p: &ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)> {
    check_home(c, shop)?;
    let existing = get_product(c, shop, &p.sku)?;
    if let Some(old) = existing.as_ref().filter(|old| !p.changes(old)) {
        return Ok((old.clone(), Upserted::Unchanged));
    }
    let version = existing.as_ref().map_or(1, |o| o.version + 1);
    let product = p.stored(shop, version, micros(now));
    write_product(c, &product)?;
    let upserted = if existing.is_some() { Upserted::Updated } else { Upserted::Created };
    emit(c, events::product_upserted(&product), now)?;
    Ok((product, upserted))
}

/// Every product of a shop, by SKU.
pub fn all_products(c: &Connection, shop: &ShopId) -> StoreResult<Vec<Product>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = ?1 ORDER BY sku"))?;
    let rows = stmt.query_map([shop.as_str()], product_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn list_products(c: &Connection, shop: &ShopId, q: &ProductQuery) -> StoreResult<Vec<Product>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {PRODUCT_COLS} FROM products
         WHERE shop = ?1 AND (?2 IS NULL OR category = ?2) AND (?3 IS NULL OR sku > ?3)
         ORDER BY sku LIMIT ?4"
    ))?;
    let rows = stmt.query_map(params![shop.as_str(), q.category, q.after, (q.limit + 1) as i64], product_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn delete_product(c: &Connection, shop: &ShopId, sku: &str) -> StoreResult<()> {
    check_home(c, shop)?;
    let reserved: Option<i64> = c
        .prepare_cached("SELECT reserved FROM stock WHERE shop = ?1 AND sku = ?2")?
        .query_row(params![shop.as_str(), sku], |r| r.get(0))
        .optional()?;
    if reserved.unwrap_or(0) > 0 {
        return Err(StoreError::conflict(
            "product_reserved",
            format!("product {sku} has {} units reserved by open orders", reserved.unwrap_or(0)),
        ));
    }
    c.prepare_cached("DELETE FROM stock WHERE shop = ?1 AND sku = ?2")?.execute(params![shop.as_str(), sku])?;
    let n = c.prepare_cached("DELETE FROM products WHERE shop = ?1 AND sku = ?2")?.execute(params![shop.as_str(), sku])?;
    if n == 0 {
        return Err(StoreError::not_found("product", sku));
    }
    emit(c, events::product_deleted(shop, sku), chrono::Utc::now())
}

/// Stock of a known product; a product never stocked has zero on hand.
pub fn get_stock(c: &Connection, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
    Ok(c.prepare_cached(
        "SELECT coalesce(s.on_hand, 0), coalesce(s.reserved, 0) FROM products p
         LEFT JOIN stock s ON s.shop = p.shop AND s.sku = p.sku WHERE p.shop = ?1 AND p.sku = ?2",
    )?
    .query_row(params![shop.as_str(), sku], |r| Ok(Stock::new(sku.to_owned(), r.get(0)?, r.get(1)?)))
    .optional()?)
}

pub fn set_stock(c: &Connection, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
    check_home(c, shop)?;
    let current = get_stock(c, shop, sku)?.ok_or_else(|| StoreError::not_found("product", sku))?;
    let stock = Stock::new(sku.to_owned(), on_hand, current.reserved);
    if let Some(on_hand) = plan_set(&current, on_hand)? {
        write_on_hand(c, shop, sku, on_hand, now)?;
        emit(c, events::stock_changed(shop, &stock), now)?;
    }
    Ok(stock)
}

pub fn adjust_stock(c: &Connection, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
    check_home(c, shop)?;
    let current = get_stock(c, shop, sku)?.ok_or_else(|| StoreError::not_found("product", sku))?;
    let on_hand = plan_adjust(&current, delta)?;
    write_on_hand(c, shop, sku, on_hand, now)?;
    let stock = Stock::new(sku.to_owned(), on_hand, current.reserved);
    emit(c, events::stock_changed(shop, &stock), now)?;
    Ok(stock)
}

fn write_on_hand(c: &Connection, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO stock (shop, sku, on_hand, reserved, updated_at) VALUES (?1, ?2, ?3, 0, ?4)
         ON CONFLICT (shop, sku) DO UPDATE SET on_hand = excluded.on_hand, updated_at = excluded.updated_at",
    )?
    .execute(params![shop.as_str(), sku, on_hand, ts(now)])?;
    Ok(())
}

/// Each line in its own nested savepoint: a refused line leaves no trace, its neighbours stay.
pub fn apply_feed(c: &Connection, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>> {
    // A moved shop fails the whole batch (the router follows it), not line by line.
    check_home(c, shop)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        c.execute_batch("SAVEPOINT feed_line")?;
        let r = match &op {
            FeedOp::Product(p) => upsert_product(c, shop, p, now).map(|_| ()),
            FeedOp::Stock { sku, on_hand } => set_stock(c, shop, sku, *on_hand, now).map(|_| ()),
        };
        c.execute_batch(if r.is_ok() { "RELEASE feed_line" } else { "ROLLBACK TO feed_line; RELEASE feed_line" })?;
        results.push(r);
    }
    Ok(results)
}
