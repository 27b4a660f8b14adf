//! Products, stock and feed batches on PostgreSQL. Writers lock the row they decide on
//! (`FOR UPDATE`), so read-then-write decisions hold under any number of concurrent instances.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;

use super::shops::check_home;
use super::outbox::emit;
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::events::envelope as events;
use crate::ingest::FeedOp;
use crate::inventory::{plan_adjust, plan_set, Stock};
use crate::money::{Currency, Money};
use crate::shops::ShopId;
use crate::store::{micros, StoreError, StoreResult, Upserted};

const PRODUCT_COLS: &str = "shop, sku, name, category, price_amount, currency, attributes, version, updated_at";

fn product_row(r: &Row) -> StoreResult<Product> {
    let currency: String = r.get(5);
    Ok(Product {
        shop: ShopId::trusted(r.get(0)),
        sku: r.get(1),
        name: r.get(2),
        category: r.get(3),
        price: Money::new(
            r.get(4),
            Currency::parse(&currency).ok_or_else(|| StoreError::Backend("bad product currency".into()))?,
        ),
        attributes: r.get(6),
        version: r.get(7),
        updated_at: r.get(8),
    })
}

pub async fn get_product(c: &impl GenericClient, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
    let stmt = c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = $1 AND sku = $2")).await?;
    c.query_opt(&stmt, &[&shop.as_str(), &sku]).await?.as_ref().map(product_row).transpose()
}

pub async fn upsert_product(
    c: &impl GenericClient,
    shop: &ShopId,
    p: &ProductInput,
    now: DateTime<Utc>,
) -> StoreResult<(Product, Upserted)> {
    check_home(c, shop).await?;
    let stmt = c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = $1 AND sku = $2 FOR UPDATE")).await?;
    let existing = c.query_opt(&stmt, &[&shop.as_str(), &p.sku]).await?.as_ref().map(product_row).transpose()?;
    if let Some(old) = existing.as_ref().filter(|old| !p.changes(old)) {
        return Ok((old.clone(), Upserted::Unchanged));
    }
    let now = micros(now);
    // Two first inserts may race past the lock (no row to lock yet): the conflict clause turns the
    // loser into an update that bumps the version past the winner's.
    let stmt = c
        .prepare_cached(
            "INSERT INTO products (shop, sku, name, category, price_amount, currency, attributes, version, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8)
             ON CONFLICT (shop, sku) DO UPDATE SET name = excluded.name, category = excluded.category,
               price_amount = excluded.price_amount, currency = excluded.currency, attributes = excluded.attributes,
               version = products.version + 1, updated_at = excluded.updated_at
             RETURNING version",
        )
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[&shop.as_str(), &p.sku, &p.name, &p.category, &p.price.amount, &p.price.currency.as_str(), &p.attributes, &now],
        )
        .await?;
    let version: i64 = row.get(0);
    let product = p.stored(shop, version, now);
    emit(c, events::product_upserted(&product), now).await?;
    Ok((product, if version == 1 { Upserted::Created } else { Upserted::Updated }))
}

/// Every product of a shop, by SKU.
pub async fn all_products(c: &impl GenericClient, shop: &ShopId) -> StoreResult<Vec<Product>> {
    let stmt = c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = $1 ORDER BY sku")).await?;
    c.query(&stmt, &[&shop.as_str()]).await?.iter().map(product_row).collect()
}

pub async fn list_products(c: &impl GenericClient, shop: &ShopId, q: &ProductQuery) -> StoreResult<Vec<Product>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {PRODUCT_COLS} FROM products
             WHERE shop = $1 AND ($2::text IS NULL OR category = $2) AND ($3::text IS NULL OR sku > $3)
             ORDER BY sku LIMIT $4"
        ))
        .await?;
    let rows = c.query(&stmt, &[&shop.as_str(), &q.category, &q.after, &((q.limit + 1) as i64)]).await?;
    rows.iter().map(product_row).collect()
}

pub async fn delete_product(c: &impl GenericClient, shop: &ShopId, sku: &str) -> StoreResult<()> {
    check_home(c, shop).await?;
    let stmt = c.prepare_cached("SELECT reserved FROM stock WHERE shop = $1 AND sku = $2 FOR UPDATE").await?;
    let reserved: i64 = c.query_opt(&stmt, &[&shop.as_str(), &sku]).await?.map_or(0, |r| r.get(0));
    if reserved > 0 {
        return Err(StoreError::conflict(
            "product_reserved",
            format!("product {sku} has {reserved} units reserved by open orders"),
        ));
    }
    let stmt = c.prepare_cached("DELETE FROM stock WHERE shop = $1 AND sku = $2").await?;
    c.execute(&stmt, &[&shop.as_str(), &sku]).await?;
    let stmt = c.prepare_cached("DELETE FROM products WHERE shop = $1 AND sku = $2").await?;
    if c.execute(&stmt, &[&shop.as_str(), &sku]).await? == 0 {
        return Err(StoreError::not_found("product", sku));
    }
    emit(c, events::product_deleted(shop, sku), chrono::Utc::now()).await
}

pub async fn get_stock(c: &impl GenericClient, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
    let stmt = c
        .prepare_cached(
            "SELECT coalesce(s.on_hand, 0), coalesce(s.reserved, 0) FROM products p
             LEFT JOIN stock s ON s.shop = p.shop AND s.sku = p.sku WHERE p.shop = $1 AND p.sku = $2",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&shop.as_str(), &sku]).await?.map(|r| Stock::new(sku.to_owned(), r.get(0), r.get(1))))
}

/// The stock row of a known product, created empty if missing, locked for this transaction.
async fn lock_stock(c: &impl GenericClient, shop: &ShopId, sku: &str, now: DateTime<Utc>) -> StoreResult<Stock> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO stock (shop, sku, on_hand, reserved, updated_at)
             SELECT shop, sku, 0, 0, $3 FROM products WHERE shop = $1 AND sku = $2
             ON CONFLICT (shop, sku) DO NOTHING",
        )
        .await?;
    c.execute(&stmt, &[&shop.as_str(), &sku, &micros(now)]).await?;
    let stmt = c.prepare_cached("SELECT on_hand, reserved FROM stock WHERE shop = $1 AND sku = $2 FOR UPDATE").await?;
    let row = c.query_opt(&stmt, &[&shop.as_str(), &sku]).await?.ok_or_else(|| StoreError::not_found("product", sku))?;
    Ok(Stock::new(sku.to_owned(), row.get(0), row.get(1)))
}

async fn write_on_hand(c: &impl GenericClient, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<()> {
    let stmt = c.prepare_cached("UPDATE stock SET on_hand = $3, updated_at = $4 WHERE shop = $1 AND sku = $2").await?;
    c.execute(&stmt, &[&shop.as_str(), &sku, &on_hand, &micros(now)]).await?;
    Ok(())
}

pub async fn set_stock(c: &impl GenericClient, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
    check_home(c, shop).await?;
    let current = lock_stock(c, shop, sku, now).await?;
    let stock = Stock::new(sku.to_owned(), on_hand, current.reserved);
    if let Some(on_hand) = plan_set(&current, on_hand)? {
        write_on_hand(c, shop, sku, on_hand, now).await?;
        emit(c, events::stock_changed(shop, &stock), now).await?;
    }
    Ok(stock)
}

pub async fn adjust_stock(
    c: &impl GenericClient,
    shop: &ShopId,
    sku: &str,
    delta: i64,
    now: DateTime<Utc>,
) -> StoreResult<Stock> {
    check_home(c, shop).await?;
    let current = lock_stock(c, shop, sku, now).await?;
    let on_hand = plan_adjust(&current, delta)?;
    write_on_hand(c, shop, sku, on_hand, now).await?;
    let stock = Stock::new(sku.to_owned(), on_hand, current.reserved);
    emit(c, events::stock_changed(shop, &stock), now).await?;
    Ok(stock)
}

/// Each line in its own savepoint: a refused line leaves no trace, its neighbours stay.
pub async fn apply_feed(
    tx: &mut Transaction<'_>,
    shop: &ShopId,
    ops: Vec<FeedOp>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<StoreResult<()>>> {
    // A moved shop fails the whole batch (the router follows it), not line by line.
    check_home(&*tx, shop).await?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let sp = tx.savepoint("feed_line").await?;
        let r = match &op {
            FeedOp::Product(p) => upsert_product(&sp, shop, p, now).await.map(|_| ()),
            FeedOp::Stock { sku, on_hand } => set_stock(&sp, shop, sku, *on_hand, now).await.map(|_| ()),
        };
        match r {
            Ok(()) => sp.commit().await?,
            Err(_) => sp.rollback().await?,
        }
        results.push(r);
    }
    Ok(results)
}
