//! Orders on SQLite: the rows of `store::transactions::orders` and `placement`, and the reads.
//! Placement groups and transitions run inside the writer's savepoints; the one writer means
//! nothing else changes the rows meanwhile, so nothing here locks.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::{bind, parse_ts, ts, SqliteStore, Tx};
use crate::inventory::Stock;
use crate::money::{Currency, Money};
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, HistoryEntry, Order, OrderLine, OrderQuery, OrderStatus, PlaceOrder, PlaceOutcome, StockEffect};
use crate::shops::ShopId;
use crate::store::filters::{filters, Filters};
use crate::store::transactions::at_once;
use crate::store::transactions::orders::{OrderRows, Remembered};
use crate::store::transactions::placement::Placement;
use crate::store::{stored_answer, transactions, Orders, StoreError, StoreResult};

/// Decides a group of placements on the writer's connection (the writer's `PlaceGroup`).
pub fn place_group(c: &Connection, group: &[Placement]) -> StoreResult<Vec<StoreResult<PlaceOutcome>>> {
    at_once(transactions::placement::place(&Tx(c), group))
}

impl OrderRows for Tx<'_> {
    /// The single writer runs one placement group at a time, and this process's in-flight keys
    /// keep a repeat out before it gets here.
    async fn claim_keys(&self, _shop: &ShopId, keys: &[&str]) -> StoreResult<Vec<bool>> {
        Ok(vec![true; keys.len()])
    }

    async fn idempotency_records(&self, shop: &ShopId, keys: &[&str]) -> StoreResult<Vec<(String, IdempotencyRecord)>> {
        let mut out = Vec::new();
        for key in keys {
            if let Some(record) = idempotency_record(self.0, shop, key)? {
                out.push(((*key).to_owned(), record));
            }
        }
        Ok(out)
    }

    async fn prices(&self, shop: &ShopId, skus: &[&str]) -> StoreResult<Vec<(String, String, Money)>> {
        let mut stmt = self.0.prepare_cached("SELECT name, price_amount, currency FROM products WHERE shop = ?1 AND sku = ?2")?;
        let mut out = Vec::with_capacity(skus.len());
        for sku in skus {
            let row = stmt
                .query_row(params![shop.as_str(), sku], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
                })
                .optional()?;
            if let Some((name, amount, currency)) = row {
                let currency =
                    Currency::parse(&currency).ok_or_else(|| StoreError::Backend(format!("product {sku}: bad currency")))?;
                out.push(((*sku).to_owned(), name, Money::new(amount, currency)));
            }
        }
        Ok(out)
    }

    /// Nothing to lock: nothing else writes while the writer runs the group.
    async fn stock_for_update(&self, shop: &ShopId, skus: &[&str]) -> StoreResult<Vec<Stock>> {
        let mut stmt = self.0.prepare_cached("SELECT on_hand, reserved FROM stock WHERE shop = ?1 AND sku = ?2")?;
        let mut out = Vec::with_capacity(skus.len());
        for sku in skus {
            let row = stmt.query_row(params![shop.as_str(), sku], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            if let Some((on_hand, reserved)) = row {
                out.push(Stock::new((*sku).to_owned(), on_hand, reserved));
            }
        }
        Ok(out)
    }

    async fn reserve(&self, shop: &ShopId, takes: &[(&str, i64)], now: DateTime<Utc>) -> StoreResult<usize> {
        let mut stmt = self.0.prepare_cached(
            "UPDATE stock SET reserved = reserved + ?3, updated_at = ?4 WHERE shop = ?1 AND sku = ?2 AND on_hand - reserved >= ?3",
        )?;
        let now = ts(now);
        let mut changed = 0;
        for (sku, qty) in takes {
            changed += stmt.execute(params![shop.as_str(), sku, qty, now])?;
        }
        Ok(changed)
    }

    async fn insert_orders(&self, orders: &[&Order]) -> StoreResult<()> {
        let c = self.0;
        let mut head = c.prepare_cached(
            "INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
        )?;
        let mut line = c.prepare_cached(
            "INSERT INTO order_lines (order_id, line_no, sku, name, qty, unit_price, line_total) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for o in orders {
            let created = ts(o.created_at);
            head.execute(params![
                o.id,
                o.shop.as_str(),
                o.customer_id,
                o.status.as_str(),
                o.total.amount,
                o.total.currency.as_str(),
                created,
                o.expires_at.map(ts)
            ])?;
            for (i, l) in o.lines.iter().enumerate() {
                line.execute(params![o.id, i as i64, l.sku, l.name, l.qty, l.unit_price.amount, l.line_total.amount])?;
            }
            append_history(c, &o.id, 1, o.status, &created, None)?;
        }
        Ok(())
    }

    async fn remember(&self, answers: &[Remembered<'_>], now: DateTime<Utc>) -> StoreResult<()> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at)
             VALUES (?1, ?2, ?3, 201, ?4, ?5)",
        )?;
        let now = ts(now);
        for a in answers {
            stmt.execute(params![a.shop.as_str(), a.key, &a.fingerprint[..], a.answer, now])?;
        }
        Ok(())
    }

    async fn status_for_update(&self, shop: &ShopId, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .0
            .prepare_cached("SELECT status FROM orders WHERE id = ?1 AND shop = ?2")?
            .query_row(params![id, shop.as_str()], |r| r.get(0))
            .optional()?)
    }

    async fn order_lines(&self, id: &str) -> StoreResult<Vec<(String, i64)>> {
        Ok(self
            .0
            .prepare_cached("SELECT sku, qty FROM order_lines WHERE order_id = ?1 ORDER BY sku")?
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    async fn settle(
        &self,
        shop: &ShopId,
        sku: &str,
        qty: i64,
        effect: StockEffect,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Stock>> {
        let sql = match effect {
            StockEffect::None => return Ok(None),
            StockEffect::Consume => {
                "UPDATE stock SET on_hand = on_hand - ?3, reserved = reserved - ?3, updated_at = ?4
                 WHERE shop = ?1 AND sku = ?2 AND reserved >= ?3 RETURNING on_hand, reserved"
            }
            StockEffect::Release => {
                "UPDATE stock SET reserved = reserved - ?3, updated_at = ?4
                 WHERE shop = ?1 AND sku = ?2 AND reserved >= ?3 RETURNING on_hand, reserved"
            }
        };
        let row = self
            .0
            .prepare_cached(sql)?
            .query_row(params![shop.as_str(), sku, qty, ts(now)], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        Ok(row.map(|(on_hand, reserved)| Stock::new(sku.to_owned(), on_hand, reserved)))
    }

    async fn record_status(&self, id: &str, to: OrderStatus, reason: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        let (c, now) = (self.0, ts(now));
        c.prepare_cached("UPDATE orders SET status = ?2, updated_at = ?3, expires_at = NULL WHERE id = ?1")?.execute(params![
            id,
            to.as_str(),
            now
        ])?;
        let seq: i64 = c
            .prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM order_history WHERE order_id = ?1")?
            .query_row([id], |r| r.get(0))?;
        append_history(c, id, seq, to, &now, reason)
    }

    async fn load_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        load(self.0, shop, id)
    }
}

pub fn idempotency_record(c: &Connection, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
    c.prepare_cached("SELECT request_hash, status_code, response FROM idempotency_keys WHERE shop = ?1 AND key = ?2")?
        .query_row(params![shop.as_str(), key], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u16>(1)?, r.get::<_, String>(2)?)))
        .optional()?
        .map(|(request_hash, status, body)| -> StoreResult<IdempotencyRecord> {
            Ok(IdempotencyRecord { request_hash, status, body: stored_answer(&body)? })
        })
        .transpose()
}

fn append_history(c: &Connection, id: &str, seq: i64, status: OrderStatus, at: &str, reason: Option<&str>) -> StoreResult<()> {
    c.prepare_cached("INSERT INTO order_history (order_id, seq, status, at, reason) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![id, seq, status.as_str(), at, reason])?;
    Ok(())
}

pub fn load(c: &Connection, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
    let head = c
        .prepare_cached(
            "SELECT customer_id, status, total_amount, currency, created_at, updated_at, expires_at
             FROM orders WHERE id = ?1 AND shop = ?2",
        )?
        .query_row(params![id, shop.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })
        .optional()?;
    let Some((customer_id, status, total, currency, created_at, updated_at, expires_at)) = head else {
        return Ok(None);
    };
    let corrupt = |what: &str| StoreError::Backend(format!("order {id} has a bad {what}"));
    let currency = Currency::parse(&currency).ok_or_else(|| corrupt("currency"))?;
    let lines = c
        .prepare_cached("SELECT sku, name, qty, unit_price, line_total FROM order_lines WHERE order_id = ?1 ORDER BY line_no")?
        .query_map([id], |r| {
            Ok(OrderLine {
                sku: r.get(0)?,
                name: r.get(1)?,
                qty: r.get(2)?,
                unit_price: Money::new(r.get(3)?, currency),
                line_total: Money::new(r.get(4)?, currency),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let history = c
        .prepare_cached("SELECT status, at, reason FROM order_history WHERE order_id = ?1 ORDER BY seq")?
        .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(s, at, reason)| {
            Ok(HistoryEntry { status: OrderStatus::parse(&s).ok_or_else(|| corrupt("history"))?, at: parse_ts(&at)?, reason })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(Order {
        id: id.to_owned(),
        shop: shop.clone(),
        customer_id,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        lines,
        total: Money::new(total, currency),
        history,
        created_at: parse_ts(&created_at)?,
        updated_at: parse_ts(&updated_at)?,
        expires_at: expires_at.as_deref().map(parse_ts).transpose()?,
    }))
}

/// One page of a shop's order ids, newest first, for one filter shape.
pub(crate) fn page_sql(f: &Filters) -> String {
    format!("SELECT id FROM orders WHERE shop = ?1{} ORDER BY id DESC LIMIT ?{}", f.sql, f.next(2))
}

pub fn list(c: &Connection, shop: &ShopId, q: &OrderQuery) -> StoreResult<Vec<Order>> {
    let f = filters(&[("status =", q.status.map(OrderStatus::as_str)), ("id <", q.before.as_deref())], 2, '?');
    let sql = page_sql(&f);
    let ids: Vec<String> = c
        .prepare_cached(&sql)?
        .query_map(params_from_iter(bind(shop.as_str(), &f.values, (q.limit + 1) as i64)), |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.iter().filter_map(|id| load(c, shop, id).transpose()).collect()
}

pub fn expired(c: &Connection, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
    Ok(c.prepare_cached("SELECT shop, id FROM orders WHERE status = 'placed' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2")?
        .query_map(params![ts(now), limit as i64], |r| Ok((ShopId::trusted(r.get(0)?), r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

#[async_trait]
impl Orders for SqliteStore {
    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome> {
        self.place(Placement::here(shop, order)).await
    }

    async fn place_orders(&self, group: Vec<Placement>) -> StoreResult<Vec<StoreResult<PlaceOutcome>>> {
        self.write(move |c| place_group(c, &group)).await
    }

    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        let (shop, key) = (shop.clone(), key.to_owned());
        self.read(move |c| idempotency_record(c, &shop, &key)).await
    }

    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.read(move |c| load(c, &shop, &id)).await
    }

    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>> {
        let shop = shop.clone();
        self.read(move |c| list(c, &shop, &query)).await
    }

    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.write(move |c| at_once(transactions::orders::transition(&Tx(c), &shop, &id, action, now))).await
    }

    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        self.read(move |c| expired(c, now, limit)).await
    }
}
