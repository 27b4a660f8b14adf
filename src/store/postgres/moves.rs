//! What moving a shop needs on PostgreSQL: the pin directory, and the rows of
//! `store::transactions::moves` (the shop's mark, its rows exported and imported whole). A mark
//! takes the shop's fence lock exclusively, which every write of the shop takes shared
//! (`super::shops::check_home`), so the fence waits for writes in flight and holds back new ones.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{PgStore, Tx};
use crate::catalog::Product;
use crate::orders::Order;
use crate::shops::{ShopId, ShopRecord};
use crate::store::dump::{IdempotencyRow, ShopDump, StockRow};
use crate::store::outbox::Webhook;
use crate::store::transactions::moves::MoveRows;
use crate::store::{micros, transactions, Moves, StoreResult};

pub async fn directory(c: &impl GenericClient) -> StoreResult<Vec<(ShopId, String)>> {
    let stmt = c.prepare_cached("SELECT shop, shard FROM shop_directory ORDER BY shop").await?;
    Ok(c.query(&stmt, &[]).await?.iter().map(|r| (ShopId::trusted(r.get(0)), r.get(1))).collect())
}

pub async fn set_pin(c: &impl GenericClient, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
    match shard {
        Some(shard) => {
            let stmt = c
                .prepare_cached(
                    "INSERT INTO shop_directory (shop, shard, pinned_at) VALUES ($1, $2, $3)
                     ON CONFLICT (shop) DO UPDATE SET shard = excluded.shard, pinned_at = excluded.pinned_at",
                )
                .await?;
            c.execute(&stmt, &[&shop.as_str(), &shard, &now]).await?
        }
        None => c.execute("DELETE FROM shop_directory WHERE shop = $1", &[&shop.as_str()]).await?,
    };
    Ok(())
}

/// Deletes every row of a shop, children first.
async fn purge(c: &impl GenericClient, shop: &ShopId) -> StoreResult<()> {
    let s = shop.as_str();
    c.execute("DELETE FROM order_lines WHERE order_id IN (SELECT id FROM orders WHERE shop = $1)", &[&s]).await?;
    c.execute("DELETE FROM order_history WHERE order_id IN (SELECT id FROM orders WHERE shop = $1)", &[&s]).await?;
    for table in ["orders", "idempotency_keys", "stock", "products"] {
        c.execute(&format!("DELETE FROM {table} WHERE shop = $1"), &[&s]).await?;
    }
    c.execute("DELETE FROM shops WHERE id = $1", &[&s]).await?;
    Ok(())
}

impl<C: GenericClient + Sync> MoveRows for Tx<'_, C> {
    /// Run inside a transaction: the exclusive fence lock is held until it commits.
    async fn swap_mark(&self, shop: &ShopId, expected: Option<&str>, next: Option<&str>) -> StoreResult<bool> {
        let c = self.0;
        c.execute("SELECT pg_advisory_xact_lock(hashtextextended('fence/' || $1::text, 0))", &[&shop.as_str()]).await?;
        let n = c
            .execute(
                "UPDATE shops SET moved_to = $2 WHERE id = $1 AND moved_to IS NOT DISTINCT FROM $3",
                &[&shop.as_str(), &next, &expected],
            )
            .await?;
        Ok(n == 1)
    }

    async fn mark_for_update(&self, shop: &ShopId) -> StoreResult<Option<Option<String>>> {
        let here = self.0.query_opt("SELECT moved_to FROM shops WHERE id = $1 FOR UPDATE", &[&shop.as_str()]).await?;
        Ok(here.map(|r| r.get::<_, Option<String>>(0)))
    }

    async fn shop_record(&self, shop: &ShopId) -> StoreResult<Option<ShopRecord>> {
        super::shops::get(self.0, shop).await
    }

    async fn all_products(&self, shop: &ShopId) -> StoreResult<Vec<Product>> {
        super::catalog::all_products(self.0, shop).await
    }

    async fn all_stock(&self, shop: &ShopId) -> StoreResult<Vec<StockRow>> {
        Ok(self
            .0
            .query("SELECT sku, on_hand, reserved, updated_at FROM stock WHERE shop = $1 ORDER BY sku", &[&shop.as_str()])
            .await?
            .iter()
            .map(|r| StockRow { sku: r.get(0), on_hand: r.get(1), reserved: r.get(2), updated_at: r.get(3) })
            .collect())
    }

    async fn all_orders(&self, shop: &ShopId) -> StoreResult<Vec<Order>> {
        let c = self.0;
        let ids = c.query("SELECT id FROM orders WHERE shop = $1 ORDER BY id", &[&shop.as_str()]).await?;
        let mut all = Vec::with_capacity(ids.len());
        for row in ids {
            if let Some(o) = super::orders::load(c, shop, row.get::<_, &str>(0)).await? {
                all.push(o);
            }
        }
        Ok(all)
    }

    async fn all_idempotency(&self, shop: &ShopId) -> StoreResult<Vec<IdempotencyRow>> {
        Ok(self
            .0
            .query(
                "SELECT key, request_hash, status_code, response, created_at FROM idempotency_keys WHERE shop = $1 ORDER BY key",
                &[&shop.as_str()],
            )
            .await?
            .iter()
            .map(|r| IdempotencyRow {
                key: r.get(0),
                request_hash: r.get(1),
                status_code: r.get(2),
                response: r.get(3),
                created_at: r.get(4),
            })
            .collect())
    }

    async fn all_webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>> {
        super::webhooks::list(self.0, shop.as_str()).await
    }

    async fn export_events(&self, shop: &ShopId, dump: &mut ShopDump) -> StoreResult<()> {
        (dump.events, dump.sequences) = super::outbox::export_events(self.0, shop).await?;
        Ok(())
    }

    async fn purge(&self, shop: &ShopId) -> StoreResult<()> {
        purge(self.0, shop).await
    }

    async fn insert_rows(&self, d: &ShopDump) -> StoreResult<()> {
        let c = self.0;
        let shop = &d.shop.shop.id;
        let s = &d.shop.shop;
        c.execute(
            "INSERT INTO shops (id, name, currency, api_key_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&s.id.as_str(), &s.name, &s.currency.as_str(), &&d.shop.api_key_hash[..], &s.created_at],
        )
        .await?;
        for p in &d.products {
            c.execute(
                "INSERT INTO products (shop, sku, name, category, price_amount, currency, attributes, version, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &shop.as_str(),
                    &p.sku,
                    &p.name,
                    &p.category,
                    &p.price.amount,
                    &p.price.currency.as_str(),
                    &p.attributes,
                    &p.version,
                    &p.updated_at,
                ],
            )
            .await?;
        }
        for st in &d.stock {
            c.execute(
                "INSERT INTO stock (shop, sku, on_hand, reserved, updated_at) VALUES ($1, $2, $3, $4, $5)",
                &[&shop.as_str(), &st.sku, &st.on_hand, &st.reserved, &st.updated_at],
            )
            .await?;
        }
        for o in &d.orders {
            c.execute(
                "INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &o.id,
                    &shop.as_str(),
                    &o.customer_id,
                    &o.status.as_str(),
                    &o.total.amount,
                    &o.total.currency.as_str(),
                    &o.created_at,
                    &o.updated_at,
                    &o.expires_at,
                ],
            )
            .await?;
            for (i, l) in o.lines.iter().enumerate() {
                c.execute(
                    "INSERT INTO order_lines (order_id, line_no, sku, name, qty, unit_price, line_total) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&o.id, &(i as i32), &l.sku, &l.name, &l.qty, &l.unit_price.amount, &l.line_total.amount],
                )
                .await?;
            }
            for (i, h) in o.history.iter().enumerate() {
                c.execute(
                    "INSERT INTO order_history (order_id, seq, status, at, reason) VALUES ($1, $2, $3, $4, $5)",
                    &[&o.id, &(i as i32 + 1), &h.status.as_str(), &h.at, &h.reason],
                )
                .await?;
            }
        }
        for k in &d.idempotency {
            c.execute(
                "INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&shop.as_str(), &k.key, &k.request_hash, &k.status_code, &k.response, &k.created_at],
            )
            .await?;
        }
        Ok(())
    }

    async fn import_events(&self, shop: &ShopId, dump: &ShopDump) -> StoreResult<()> {
        super::outbox::import_events(self.0, shop, dump).await
    }

    async fn import_webhooks(&self, shop: &ShopId, hooks: &[Webhook]) -> StoreResult<()> {
        super::webhooks::import(self.0, shop.as_str(), hooks).await
    }
}

#[async_trait]
impl Moves for PgStore {
    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>> {
        directory(&*self.client().await?).await
    }

    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        set_pin(&*self.client().await?, shop, shard, micros(now)).await
    }

    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                transactions::moves::mark(&Tx(&tx), shop, moved_to).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn export_shop(&self, shop: &ShopId) -> StoreResult<ShopDump> {
        let mut dump = transactions::moves::export(&Tx(&*self.client().await?), shop).await?;
        dump.origin = self.name.clone();
        Ok(dump)
    }

    async fn import_shop(&self, dump: ShopDump) -> StoreResult<()> {
        self.replicas
            .after_write(dump.shop.shop.id.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                transactions::moves::import(&Tx(&tx), &dump).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }
}
