//! Products, stock and feed batches on PostgreSQL: the rows of `store::transactions::catalog`,
//! and the reads. Writers lock the row they decide on (`FOR UPDATE`), so read-then-write
//! decisions hold under any number of concurrent instances.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{bind, primary_or_replica, replica_first, PgStore, Tx};
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::ingest::FeedOp;
use crate::inventory::Stock;
use crate::money::{Currency, Money};
use crate::shops::ShopId;
use crate::store::filters::filters;
use crate::store::transactions::catalog::CatalogRows;
use crate::store::{micros, transactions, Catalog, Inventory, StoreError, StoreResult, Upserted};

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

/// Every product of a shop, by SKU.
pub async fn all_products(c: &impl GenericClient, shop: &ShopId) -> StoreResult<Vec<Product>> {
    let stmt = c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = $1 ORDER BY sku")).await?;
    c.query(&stmt, &[&shop.as_str()]).await?.iter().map(product_row).collect()
}

pub async fn list_products(c: &impl GenericClient, shop: &ShopId, q: &ProductQuery) -> StoreResult<Vec<Product>> {
    let f = filters(&[("category =", q.category.as_deref()), ("sku >", q.after.as_deref())], 2, '$');
    let sql = format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = $1{} ORDER BY sku LIMIT ${}", f.sql, f.next(2));
    let stmt = c.prepare_cached(&sql).await?;
    let rows = c.query(&stmt, &bind(&shop.as_str(), &f.values, &((q.limit + 1) as i64))).await?;
    rows.iter().map(product_row).collect()
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
async fn lock_stock(c: &impl GenericClient, shop: &ShopId, sku: &str, now: DateTime<Utc>) -> StoreResult<Option<Stock>> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO stock (shop, sku, on_hand, reserved, updated_at)
             SELECT shop, sku, 0, 0, $3 FROM products WHERE shop = $1 AND sku = $2
             ON CONFLICT (shop, sku) DO NOTHING",
        )
        .await?;
    c.execute(&stmt, &[&shop.as_str(), &sku, &micros(now)]).await?;
    let stmt = c.prepare_cached("SELECT on_hand, reserved FROM stock WHERE shop = $1 AND sku = $2 FOR UPDATE").await?;
    Ok(c.query_opt(&stmt, &[&shop.as_str(), &sku]).await?.map(|row| Stock::new(sku.to_owned(), row.get(0), row.get(1))))
}

async fn write_on_hand(c: &impl GenericClient, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<()> {
    let stmt = c.prepare_cached("UPDATE stock SET on_hand = $3, updated_at = $4 WHERE shop = $1 AND sku = $2").await?;
    c.execute(&stmt, &[&shop.as_str(), &sku, &on_hand, &micros(now)]).await?;
    Ok(())
}

impl<C: GenericClient + Sync> CatalogRows for Tx<'_, C> {
    async fn product_for_update(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        let c = self.0;
        let stmt =
            c.prepare_cached(&format!("SELECT {PRODUCT_COLS} FROM products WHERE shop = $1 AND sku = $2 FOR UPDATE")).await?;
        c.query_opt(&stmt, &[&shop.as_str(), &sku]).await?.as_ref().map(product_row).transpose()
    }

    /// Two first inserts may race past the lock (no row to lock yet): the conflict clause turns
    /// the loser into an update that bumps the version past the winner's.
    async fn save_product(&self, shop: &ShopId, p: &ProductInput, now: DateTime<Utc>) -> StoreResult<i64> {
        let c = self.0;
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
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &shop.as_str(),
            &p.sku,
            &p.name,
            &p.category,
            &p.price.amount,
            &p.price.currency.as_str(),
            &p.attributes,
            &micros(now),
        ];
        Ok(c.query_one(&stmt, &params).await?.get(0))
    }

    async fn reserved_for_update(&self, shop: &ShopId, sku: &str) -> StoreResult<i64> {
        let c = self.0;
        let stmt = c.prepare_cached("SELECT reserved FROM stock WHERE shop = $1 AND sku = $2 FOR UPDATE").await?;
        Ok(c.query_opt(&stmt, &[&shop.as_str(), &sku]).await?.map_or(0, |r| r.get(0)))
    }

    async fn delete_product_rows(&self, shop: &ShopId, sku: &str) -> StoreResult<bool> {
        let c = self.0;
        let stmt = c.prepare_cached("DELETE FROM stock WHERE shop = $1 AND sku = $2").await?;
        c.execute(&stmt, &[&shop.as_str(), &sku]).await?;
        let stmt = c.prepare_cached("DELETE FROM products WHERE shop = $1 AND sku = $2").await?;
        Ok(c.execute(&stmt, &[&shop.as_str(), &sku]).await? > 0)
    }

    async fn stock_for_update(&self, shop: &ShopId, sku: &str, now: DateTime<Utc>) -> StoreResult<Option<Stock>> {
        lock_stock(self.0, shop, sku, now).await
    }

    async fn write_on_hand(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<()> {
        write_on_hand(self.0, shop, sku, on_hand, now).await
    }

    async fn savepoint(&self) -> StoreResult<()> {
        Ok(self.0.batch_execute("SAVEPOINT feed_line").await?)
    }

    async fn end_savepoint(&self, keep: bool) -> StoreResult<()> {
        let sql =
            if keep { "RELEASE SAVEPOINT feed_line" } else { "ROLLBACK TO SAVEPOINT feed_line; RELEASE SAVEPOINT feed_line" };
        Ok(self.0.batch_execute(sql).await?)
    }
}

#[async_trait]
impl Catalog for PgStore {
    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let out = transactions::catalog::upsert_product(&Tx(&tx), shop, &input, now).await?;
                tx.commit().await?;
                Ok(out)
            })
            .await
    }

    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        replica_first!(self, shop.as_str(), |c| get_product(c, shop, sku))
    }

    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>> {
        replica_first!(self, shop.as_str(), |c| list_products(c, shop, &query))
    }

    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                transactions::catalog::delete_product(&Tx(&tx), shop, sku).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Inventory for PgStore {
    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let stock = transactions::catalog::set_stock(&Tx(&tx), shop, sku, on_hand, now).await?;
                tx.commit().await?;
                Ok(stock)
            })
            .await
    }

    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let stock = transactions::catalog::adjust_stock(&Tx(&tx), shop, sku, delta, now).await?;
                tx.commit().await?;
                Ok(stock)
            })
            .await
    }

    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
        primary_or_replica!(self, |c| get_stock(c, shop, sku))
    }

    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let results = transactions::catalog::apply_feed(&Tx(&tx), shop, ops, now).await?;
                tx.commit().await?;
                Ok(results)
            })
            .await
    }
}
