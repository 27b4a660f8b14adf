//! Products, stock and feed batches on SQLite: the rows of `store::transactions::catalog`, and the
//! reads. Every function runs inside the caller's transaction (the writer's savepoint, or a
//! reader's implicit read transaction); the one writer means nothing here needs a lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::{bind, parse_ts, ts, SqliteStore, Tx};
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::ingest::FeedOp;
use crate::inventory::Stock;
use crate::money::{Currency, Money};
use crate::shops::ShopId;
use crate::store::filters::{filters, Filters};
use crate::store::transactions::at_once;
use crate::store::transactions::catalog::CatalogRows;
use crate::store::{transactions, Catalog, Inventory, StoreError, StoreResult, Upserted};

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

/// Every product of a shop, by SKU.
pub fn all_products(c: &Connection, shop: &ShopId) -> StoreResult<Vec<Product>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = ?1 ORDER BY sku"))?;
    let rows = stmt.query_map([shop.as_str()], product_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// One page of a shop's products by SKU, for one filter shape.
/// `f` filters by category, then SKU. Without statistics SQLite walks the primary key for a
/// category's page and skips the other categories' rows; the category index is named instead.
pub(crate) fn page_sql(f: &Filters) -> String {
    let index = if f.given.first() == Some(&true) { " INDEXED BY products_by_category" } else { "" };
    format!("SELECT {PRODUCT_COLS} FROM products{index} WHERE shop = ?1{} ORDER BY sku LIMIT ?{}", f.sql, f.next(2))
}

pub fn list_products(c: &Connection, shop: &ShopId, q: &ProductQuery) -> StoreResult<Vec<Product>> {
    let f = filters(&[("category =", q.category.as_deref()), ("sku >", q.after.as_deref())], 2, '?');
    let mut stmt = c.prepare_cached(&page_sql(&f))?;
    let rows = stmt.query_map(params_from_iter(bind(shop.as_str(), &f.values, (q.limit + 1) as i64)), product_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
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

fn write_on_hand(c: &Connection, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO stock (shop, sku, on_hand, reserved, updated_at) VALUES (?1, ?2, ?3, 0, ?4)
         ON CONFLICT (shop, sku) DO UPDATE SET on_hand = excluded.on_hand, updated_at = excluded.updated_at",
    )?
    .execute(params![shop.as_str(), sku, on_hand, ts(now)])?;
    Ok(())
}

impl CatalogRows for Tx<'_> {
    async fn product_for_update(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        get_product(self.0, shop, sku)
    }

    async fn save_product(&self, shop: &ShopId, p: &ProductInput, now: DateTime<Utc>) -> StoreResult<i64> {
        let attributes = serde_json::to_string(&p.attributes).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(self
            .0
            .prepare_cached(
                "INSERT INTO products (shop, sku, name, category, price_amount, currency, attributes, version, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8)
                 ON CONFLICT (shop, sku) DO UPDATE SET name = excluded.name, category = excluded.category,
                   price_amount = excluded.price_amount, currency = excluded.currency,
                   attributes = excluded.attributes, version = version + 1, updated_at = excluded.updated_at
                 RETURNING version",
            )?
            .query_row(
                params![shop.as_str(), p.sku, p.name, p.category, p.price.amount, p.price.currency.as_str(), attributes, ts(now)],
                |r| r.get(0),
            )?)
    }

    async fn reserved_for_update(&self, shop: &ShopId, sku: &str) -> StoreResult<i64> {
        let reserved: Option<i64> = self
            .0
            .prepare_cached("SELECT reserved FROM stock WHERE shop = ?1 AND sku = ?2")?
            .query_row(params![shop.as_str(), sku], |r| r.get(0))
            .optional()?;
        Ok(reserved.unwrap_or(0))
    }

    async fn delete_product_rows(&self, shop: &ShopId, sku: &str) -> StoreResult<bool> {
        let c = self.0;
        c.prepare_cached("DELETE FROM stock WHERE shop = ?1 AND sku = ?2")?.execute(params![shop.as_str(), sku])?;
        let n = c.prepare_cached("DELETE FROM products WHERE shop = ?1 AND sku = ?2")?.execute(params![shop.as_str(), sku])?;
        Ok(n > 0)
    }

    async fn stock_for_update(&self, shop: &ShopId, sku: &str, _now: DateTime<Utc>) -> StoreResult<Option<Stock>> {
        get_stock(self.0, shop, sku)
    }

    async fn write_on_hand(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<()> {
        write_on_hand(self.0, shop, sku, on_hand, now)
    }

    async fn savepoint(&self) -> StoreResult<()> {
        Ok(self.0.execute_batch("SAVEPOINT feed_line")?)
    }

    async fn end_savepoint(&self, keep: bool) -> StoreResult<()> {
        Ok(self.0.execute_batch(if keep { "RELEASE feed_line" } else { "ROLLBACK TO feed_line; RELEASE feed_line" })?)
    }
}

#[async_trait]
impl Catalog for SqliteStore {
    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)> {
        let shop = shop.clone();
        self.write(move |c| at_once(transactions::catalog::upsert_product(&Tx(c), &shop, &input, now))).await
    }

    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.read(move |c| get_product(c, &shop, &sku)).await
    }

    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>> {
        let shop = shop.clone();
        self.read(move |c| list_products(c, &shop, &query)).await
    }

    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.write(move |c| at_once(transactions::catalog::delete_product(&Tx(c), &shop, &sku))).await
    }
}

#[async_trait]
impl Inventory for SqliteStore {
    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.write(move |c| at_once(transactions::catalog::set_stock(&Tx(c), &shop, &sku, on_hand, now))).await
    }

    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.write(move |c| at_once(transactions::catalog::adjust_stock(&Tx(c), &shop, &sku, delta, now))).await
    }

    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.read(move |c| get_stock(c, &shop, &sku)).await
    }

    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>> {
        let shop = shop.clone();
        self.write(move |c| at_once(transactions::catalog::apply_feed(&Tx(c), &shop, ops, now))).await
    }
}
