//! What moving a shop needs on SQLite: the pin directory, and the rows of
//! `store::transactions::moves` (the shop's mark, its rows exported and imported whole). The one
//! writer orders a mark against every write of the shop, so nothing here locks.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{parse_ts, ts, SqliteStore, Tx};
use crate::catalog::Product;
use crate::orders::Order;
use crate::shops::{ShopId, ShopRecord};
use crate::store::dump::{IdempotencyRow, ShopDump, StockRow};
use crate::store::outbox::Webhook;
use crate::store::transactions::at_once;
use crate::store::transactions::moves::MoveRows;
use crate::store::{transactions, Moves, StoreResult};

pub fn directory(c: &Connection) -> StoreResult<Vec<(ShopId, String)>> {
    Ok(c.prepare_cached("SELECT shop, shard FROM shop_directory ORDER BY shop")?
        .query_map([], |r| Ok((ShopId::trusted(r.get(0)?), r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

pub fn set_pin(c: &Connection, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
    match shard {
        Some(shard) => c
            .prepare_cached(
                "INSERT INTO shop_directory (shop, shard, pinned_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (shop) DO UPDATE SET shard = excluded.shard, pinned_at = excluded.pinned_at",
            )?
            .execute(params![shop.as_str(), shard, ts(now)])?,
        None => c.prepare_cached("DELETE FROM shop_directory WHERE shop = ?1")?.execute([shop.as_str()])?,
    };
    Ok(())
}

/// Deletes every row of a shop, children first.
fn purge(c: &Connection, shop: &ShopId) -> StoreResult<()> {
    let s = shop.as_str();
    c.execute("DELETE FROM order_lines WHERE order_id IN (SELECT id FROM orders WHERE shop = ?1)", [s])?;
    c.execute("DELETE FROM order_history WHERE order_id IN (SELECT id FROM orders WHERE shop = ?1)", [s])?;
    for table in ["orders", "idempotency_keys", "stock", "products"] {
        c.execute(&format!("DELETE FROM {table} WHERE shop = ?1"), [s])?;
    }
    c.execute("DELETE FROM shops WHERE id = ?1", [s])?;
    Ok(())
}

impl MoveRows for Tx<'_> {
    async fn swap_mark(&self, shop: &ShopId, expected: Option<&str>, next: Option<&str>) -> StoreResult<bool> {
        let n = self.0.prepare_cached("UPDATE shops SET moved_to = ?2 WHERE id = ?1 AND moved_to IS ?3")?.execute(params![
            shop.as_str(),
            next,
            expected
        ])?;
        Ok(n == 1)
    }

    async fn mark_for_update(&self, shop: &ShopId) -> StoreResult<Option<Option<String>>> {
        Ok(self
            .0
            .prepare_cached("SELECT moved_to FROM shops WHERE id = ?1")?
            .query_row([shop.as_str()], |r| r.get(0))
            .optional()?)
    }

    async fn shop_record(&self, shop: &ShopId) -> StoreResult<Option<ShopRecord>> {
        super::shops::get(self.0, shop)
    }

    async fn all_products(&self, shop: &ShopId) -> StoreResult<Vec<Product>> {
        super::catalog::all_products(self.0, shop)
    }

    async fn all_stock(&self, shop: &ShopId) -> StoreResult<Vec<StockRow>> {
        Ok(self
            .0
            .prepare_cached("SELECT sku, on_hand, reserved, updated_at FROM stock WHERE shop = ?1 ORDER BY sku")?
            .query_map([shop.as_str()], |r| {
                Ok(StockRow {
                    sku: r.get(0)?,
                    on_hand: r.get(1)?,
                    reserved: r.get(2)?,
                    updated_at: parse_ts(&r.get::<_, String>(3)?)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn all_orders(&self, shop: &ShopId) -> StoreResult<Vec<Order>> {
        let c = self.0;
        let ids: Vec<String> = c
            .prepare_cached("SELECT id FROM orders WHERE shop = ?1 ORDER BY id")?
            .query_map([shop.as_str()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter().filter_map(|id| super::orders::load(c, shop, id).transpose()).collect()
    }

    async fn all_idempotency(&self, shop: &ShopId) -> StoreResult<Vec<IdempotencyRow>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT key, request_hash, status_code, response, created_at FROM idempotency_keys WHERE shop = ?1 ORDER BY key",
            )?
            .query_map([shop.as_str()], |r| {
                Ok(IdempotencyRow {
                    key: r.get(0)?,
                    request_hash: r.get(1)?,
                    status_code: r.get(2)?,
                    response: r.get(3)?,
                    created_at: parse_ts(&r.get::<_, String>(4)?)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn all_webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>> {
        super::webhooks::list(self.0, shop.as_str())
    }

    async fn export_events(&self, shop: &ShopId, dump: &mut ShopDump) -> StoreResult<()> {
        (dump.events, dump.sequences) = super::outbox::export_events(self.0, shop)?;
        Ok(())
    }

    async fn purge(&self, shop: &ShopId) -> StoreResult<()> {
        purge(self.0, shop)
    }

    async fn insert_rows(&self, d: &ShopDump) -> StoreResult<()> {
        let c = self.0;
        let shop = &d.shop.shop.id;
        let s = &d.shop.shop;
        c.execute(
            "INSERT INTO shops (id, name, currency, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.id.as_str(), s.name, s.currency.as_str(), &d.shop.api_key_hash[..], ts(s.created_at)],
        )?;
        for p in &d.products {
            super::catalog::write_product(c, p)?;
        }
        for st in &d.stock {
            c.prepare_cached("INSERT INTO stock (shop, sku, on_hand, reserved, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![shop.as_str(), st.sku, st.on_hand, st.reserved, ts(st.updated_at)])?;
        }
        for o in &d.orders {
            c.prepare_cached(
                "INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                o.id,
                shop.as_str(),
                o.customer_id,
                o.status.as_str(),
                o.total.amount,
                o.total.currency.as_str(),
                ts(o.created_at),
                ts(o.updated_at),
                o.expires_at.map(ts)
            ])?;
            for (i, l) in o.lines.iter().enumerate() {
                c.prepare_cached(
                    "INSERT INTO order_lines (order_id, line_no, sku, name, qty, unit_price, line_total) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![o.id, i as i64, l.sku, l.name, l.qty, l.unit_price.amount, l.line_total.amount])?;
            }
            for (i, h) in o.history.iter().enumerate() {
                c.prepare_cached("INSERT INTO order_history (order_id, seq, status, at, reason) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![o.id, i as i64 + 1, h.status.as_str(), ts(h.at), h.reason])?;
            }
        }
        for k in &d.idempotency {
            c.prepare_cached(
                "INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![shop.as_str(), k.key, k.request_hash, k.status_code, k.response, ts(k.created_at)])?;
        }
        Ok(())
    }

    async fn import_events(&self, shop: &ShopId, dump: &ShopDump) -> StoreResult<()> {
        super::outbox::import_events(self.0, shop, dump)
    }

    async fn import_webhooks(&self, shop: &ShopId, hooks: &[Webhook]) -> StoreResult<()> {
        super::webhooks::import(self.0, shop.as_str(), hooks)
    }
}

#[async_trait]
impl Moves for SqliteStore {
    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>> {
        self.read(directory).await
    }

    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        let (shop, shard) = (shop.clone(), shard.map(str::to_owned));
        self.write(move |c| set_pin(c, &shop, shard.as_deref(), now)).await
    }

    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
        let (shop, moved_to) = (shop.clone(), moved_to.map(str::to_owned));
        self.write(move |c| at_once(transactions::moves::mark(&Tx(c), &shop, moved_to.as_deref()))).await
    }

    async fn export_shop(&self, shop: &ShopId) -> StoreResult<ShopDump> {
        let shop = shop.clone();
        // Through the writer: the export sees every write acknowledged before it.
        let mut dump = self.write(move |c| at_once(transactions::moves::export(&Tx(c), &shop))).await?;
        dump.origin = self.name.clone();
        Ok(dump)
    }

    async fn import_shop(&self, dump: ShopDump) -> StoreResult<()> {
        self.write(move |c| at_once(transactions::moves::import(&Tx(c), &dump))).await
    }
}
