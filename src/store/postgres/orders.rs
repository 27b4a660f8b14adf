//! Orders on PostgreSQL: the rows of `store::transactions::orders` and `placement`, and the
//! reads. A placement group locks its stock rows in SKU order (as transitions settle them), so
//! two groups never wait on each other's rows in opposite orders, and takes the stock with one
//! conditional update per SKU. An advisory lock on each idempotency key refuses a duplicate
//! still in flight on another instance, and a transition locks its order's row.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{bind, primary_or_replica, PgStore, Tx};
use crate::inventory::Stock;
use crate::money::{Currency, Money};
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, HistoryEntry, Order, OrderLine, OrderQuery, OrderStatus, PlaceOrder, PlaceOutcome, StockEffect};
use crate::shops::ShopId;
use crate::store::filters::filters;
use crate::store::transactions::orders::{OrderRows, Remembered};
use crate::store::transactions::placement::Placement;
use crate::store::{micros, transactions, Orders, StoreError, StoreResult};

impl<C: GenericClient + Sync> OrderRows for Tx<'_, C> {
    /// Transaction-scoped advisory locks on the keys, taken in the order given: a key another
    /// instance's transaction holds is refused, not waited for.
    async fn claim_keys(&self, shop: &ShopId, keys: &[&str]) -> StoreResult<Vec<bool>> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1::text || '/' || k, 0))
                 FROM unnest($2::text[]) WITH ORDINALITY AS t (k, n) ORDER BY n",
            )
            .await?;
        Ok(c.query(&stmt, &[&shop.as_str(), &keys]).await?.iter().map(|r| r.get(0)).collect())
    }

    async fn idempotency_records(&self, shop: &ShopId, keys: &[&str]) -> StoreResult<Vec<(String, IdempotencyRecord)>> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                // One primary-key probe per key. A join or `key = ANY` may be planned, on a
                // connection that first ran it while the table was nearly empty, as a scan of
                // the whole shop's keys, kept as the table grows (a flash sale's hottest
                // statement until this form); the LIMIT keeps the probe from being flattened.
                "SELECT k.key, i.request_hash, i.status_code, i.response FROM unnest($2::text[]) AS k (key)
                 CROSS JOIN LATERAL (SELECT request_hash, status_code, response FROM idempotency_keys
                                     WHERE shop = $1 AND key = k.key LIMIT 1) AS i",
            )
            .await?;
        c.query(&stmt, &[&shop.as_str(), &keys])
            .await?
            .iter()
            .map(|r| {
                let body = crate::store::stored_answer(r.get::<_, &str>(3))?;
                Ok((r.get(0), IdempotencyRecord { request_hash: r.get(1), status: r.get::<_, i32>(2) as u16, body }))
            })
            .collect()
    }

    async fn prices(&self, shop: &ShopId, skus: &[&str]) -> StoreResult<Vec<(String, String, Money)>> {
        let c = self.0;
        let stmt =
            c.prepare_cached("SELECT sku, name, price_amount, currency FROM products WHERE shop = $1 AND sku = ANY($2)").await?;
        c.query(&stmt, &[&shop.as_str(), &skus])
            .await?
            .iter()
            .map(|r| {
                let currency = Currency::parse(r.get::<_, &str>(3))
                    .ok_or_else(|| StoreError::Backend(format!("product {}: bad currency", r.get::<_, &str>(0))))?;
                Ok((r.get(0), r.get(1), Money::new(r.get(2), currency)))
            })
            .collect()
    }

    /// Locked in SKU order (the lock node sits above the sort), as every writer of stock locks.
    async fn stock_for_update(&self, shop: &ShopId, skus: &[&str]) -> StoreResult<Vec<Stock>> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "SELECT sku, on_hand, reserved FROM stock WHERE shop = $1 AND sku = ANY($2) ORDER BY sku FOR NO KEY UPDATE",
            )
            .await?;
        Ok(c.query(&stmt, &[&shop.as_str(), &skus]).await?.iter().map(|r| Stock::new(r.get(0), r.get(1), r.get(2))).collect())
    }

    async fn reserve(&self, shop: &ShopId, takes: &[(&str, i64)], now: DateTime<Utc>) -> StoreResult<usize> {
        if takes.is_empty() {
            return Ok(0);
        }
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "UPDATE stock s SET reserved = s.reserved + t.qty, updated_at = $4
                 FROM unnest($2::text[], $3::bigint[]) AS t (sku, qty)
                 WHERE s.shop = $1 AND s.sku = t.sku AND s.on_hand - s.reserved >= t.qty",
            )
            .await?;
        let (skus, qtys): (Vec<&str>, Vec<i64>) = takes.iter().copied().unzip();
        Ok(c.execute(&stmt, &[&shop.as_str(), &skus, &qtys, &micros(now)]).await? as usize)
    }

    /// Three statements whatever the number of orders and lines, sent together.
    async fn insert_orders(&self, orders: &[&Order]) -> StoreResult<()> {
        let c = self.0;
        let heads = c
            .prepare_cached(
                "INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at)
                 SELECT id, shop, customer_id, status, total, currency, created_at, created_at, expires_at
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::timestamptz[],
                             $8::timestamptz[])
                   AS o (id, shop, customer_id, status, total, currency, created_at, expires_at)",
            )
            .await?;
        let lines_stmt = c
            .prepare_cached(
                "INSERT INTO order_lines (order_id, line_no, sku, name, qty, unit_price, line_total)
                 SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])",
            )
            .await?;
        let history = c
            .prepare_cached(
                "INSERT INTO order_history (order_id, seq, status, at) SELECT id, 1, status, at
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS h (id, status, at)",
            )
            .await?;
        let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
        let shops: Vec<&str> = orders.iter().map(|o| o.shop.as_str()).collect();
        let customers: Vec<&str> = orders.iter().map(|o| o.customer_id.as_str()).collect();
        let statuses: Vec<&str> = orders.iter().map(|o| o.status.as_str()).collect();
        let totals: Vec<i64> = orders.iter().map(|o| o.total.amount).collect();
        let currencies: Vec<&str> = orders.iter().map(|o| o.total.currency.as_str()).collect();
        let created: Vec<DateTime<Utc>> = orders.iter().map(|o| o.created_at).collect();
        let expires: Vec<Option<DateTime<Utc>>> = orders.iter().map(|o| o.expires_at).collect();
        let lines: Vec<(&str, i32, &OrderLine)> =
            orders.iter().flat_map(|o| o.lines.iter().enumerate().map(|(n, l)| (o.id.as_str(), n as i32, l))).collect();
        let order_ids: Vec<&str> = lines.iter().map(|l| l.0).collect();
        let line_nos: Vec<i32> = lines.iter().map(|l| l.1).collect();
        let skus: Vec<&str> = lines.iter().map(|l| l.2.sku.as_str()).collect();
        let names: Vec<&str> = lines.iter().map(|l| l.2.name.as_str()).collect();
        let col = |f: fn(&OrderLine) -> i64| lines.iter().map(|l| f(l.2)).collect::<Vec<i64>>();
        let (qtys, prices, line_totals) = (col(|l| l.qty), col(|l| l.unit_price.amount), col(|l| l.line_total.amount));
        futures::future::try_join3(
            c.execute(&heads, &[&ids, &shops, &customers, &statuses, &totals, &currencies, &created, &expires]),
            c.execute(&lines_stmt, &[&order_ids, &line_nos, &skus, &names, &qtys, &prices, &line_totals]),
            c.execute(&history, &[&ids, &statuses, &created]),
        )
        .await?;
        Ok(())
    }

    async fn remember(&self, answers: &[Remembered<'_>], now: DateTime<Utc>) -> StoreResult<()> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at)
                 SELECT shop, key, hash, 201, response, $5 FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
                   AS k (shop, key, hash, response)",
            )
            .await?;
        let shops: Vec<&str> = answers.iter().map(|a| a.shop.as_str()).collect();
        let keys: Vec<&str> = answers.iter().map(|a| a.key).collect();
        let hashes: Vec<&[u8]> = answers.iter().map(|a| &a.fingerprint[..]).collect();
        let bodies: Vec<&str> = answers.iter().map(|a| a.answer.as_str()).collect();
        c.execute(&stmt, &[&shops, &keys, &hashes, &bodies, &micros(now)]).await?;
        Ok(())
    }

    /// Locked (`FOR UPDATE`): a concurrent transition of the same order waits, then sees this one's.
    async fn status_for_update(&self, shop: &ShopId, id: &str) -> StoreResult<Option<String>> {
        let c = self.0;
        let stmt = c.prepare_cached("SELECT status FROM orders WHERE id = $1 AND shop = $2 FOR UPDATE").await?;
        Ok(c.query_opt(&stmt, &[&id, &shop.as_str()]).await?.map(|r| r.get(0)))
    }

    async fn order_lines(&self, id: &str) -> StoreResult<Vec<(String, i64)>> {
        let c = self.0;
        let stmt = c.prepare_cached("SELECT sku, qty FROM order_lines WHERE order_id = $1 ORDER BY sku").await?;
        Ok(c.query(&stmt, &[&id]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
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
                "UPDATE stock SET on_hand = on_hand - $3, reserved = reserved - $3, updated_at = $4
                 WHERE shop = $1 AND sku = $2 AND reserved >= $3 RETURNING on_hand, reserved"
            }
            StockEffect::Release => {
                "UPDATE stock SET reserved = reserved - $3, updated_at = $4
                 WHERE shop = $1 AND sku = $2 AND reserved >= $3 RETURNING on_hand, reserved"
            }
        };
        let c = self.0;
        let stmt = c.prepare_cached(sql).await?;
        let row = c.query_opt(&stmt, &[&shop.as_str(), &sku, &qty, &micros(now)]).await?;
        Ok(row.map(|r| Stock::new(sku.to_owned(), r.get(0), r.get(1))))
    }

    async fn record_status(&self, id: &str, to: OrderStatus, reason: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        let (c, now) = (self.0, micros(now));
        let stmt = c.prepare_cached("UPDATE orders SET status = $2, updated_at = $3, expires_at = NULL WHERE id = $1").await?;
        c.execute(&stmt, &[&id, &to.as_str(), &now]).await?;
        let stmt = c.prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM order_history WHERE order_id = $1").await?;
        let seq: i32 = c.query_one(&stmt, &[&id]).await?.get(0);
        append_history(c, id, seq, to, now, reason).await
    }

    async fn load_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        load(self.0, shop, id).await
    }
}

pub async fn idempotency_record(c: &impl GenericClient, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
    let stmt =
        c.prepare_cached("SELECT request_hash, status_code, response FROM idempotency_keys WHERE shop = $1 AND key = $2").await?;
    let Some(row) = c.query_opt(&stmt, &[&shop.as_str(), &key]).await? else { return Ok(None) };
    let body = crate::store::stored_answer(row.get::<_, &str>(2))?;
    Ok(Some(IdempotencyRecord { request_hash: row.get(0), status: row.get::<_, i32>(1) as u16, body }))
}

async fn append_history(
    c: &impl GenericClient,
    id: &str,
    seq: i32,
    status: OrderStatus,
    at: DateTime<Utc>,
    reason: Option<&str>,
) -> StoreResult<()> {
    let stmt =
        c.prepare_cached("INSERT INTO order_history (order_id, seq, status, at, reason) VALUES ($1, $2, $3, $4, $5)").await?;
    c.execute(&stmt, &[&id, &seq, &status.as_str(), &at, &reason]).await?;
    Ok(())
}

pub async fn load(c: &impl GenericClient, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
    let stmt = c
        .prepare_cached(
            "SELECT customer_id, status, total_amount, currency, created_at, updated_at, expires_at
             FROM orders WHERE id = $1 AND shop = $2",
        )
        .await?;
    let Some(head) = c.query_opt(&stmt, &[&id, &shop.as_str()]).await? else { return Ok(None) };
    let corrupt = |what: &str| StoreError::Backend(format!("order {id} has a bad {what}"));
    let currency = Currency::parse(head.get::<_, &str>(3)).ok_or_else(|| corrupt("currency"))?;
    let stmt = c
        .prepare_cached("SELECT sku, name, qty, unit_price, line_total FROM order_lines WHERE order_id = $1 ORDER BY line_no")
        .await?;
    let lines = c
        .query(&stmt, &[&id])
        .await?
        .iter()
        .map(|r| OrderLine {
            sku: r.get(0),
            name: r.get(1),
            qty: r.get(2),
            unit_price: Money::new(r.get(3), currency),
            line_total: Money::new(r.get(4), currency),
        })
        .collect();
    let stmt = c.prepare_cached("SELECT status, at, reason FROM order_history WHERE order_id = $1 ORDER BY seq").await?;
    let history = c
        .query(&stmt, &[&id])
        .await?
        .iter()
        .map(|r| {
            let status = OrderStatus::parse(r.get::<_, &str>(0)).ok_or_else(|| corrupt("history"))?;
            Ok(HistoryEntry { status, at: r.get(1), reason: r.get(2) })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(Order {
        id: id.to_owned(),
        shop: shop.clone(),
        customer_id: head.get(0),
        status: OrderStatus::parse(head.get::<_, &str>(1)).ok_or_else(|| corrupt("status"))?,
        lines,
        total: Money::new(head.get(2), currency),
        history,
        created_at: head.get(4),
        updated_at: head.get(5),
        expires_at: head.get(6),
    }))
}

pub async fn list(c: &impl GenericClient, shop: &ShopId, q: &OrderQuery) -> StoreResult<Vec<Order>> {
    let f = filters(&[("status =", q.status.map(OrderStatus::as_str)), ("id <", q.before.as_deref())], 2, '$');
    let sql = format!("SELECT id FROM orders WHERE shop = $1{} ORDER BY id DESC LIMIT ${}", f.sql, f.next(2));
    let stmt = c.prepare_cached(&sql).await?;
    let ids = c.query(&stmt, &bind(&shop.as_str(), &f.values, &((q.limit + 1) as i64))).await?;
    let mut out = Vec::with_capacity(ids.len());
    for row in ids {
        if let Some(o) = load(c, shop, row.get::<_, &str>(0)).await? {
            out.push(o);
        }
    }
    Ok(out)
}

pub async fn expired(c: &impl GenericClient, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
    let stmt = c
        .prepare_cached("SELECT shop, id FROM orders WHERE status = 'placed' AND expires_at <= $1 ORDER BY expires_at LIMIT $2")
        .await?;
    Ok(c.query(&stmt, &[&now, &(limit as i64)]).await?.iter().map(|r| (ShopId::trusted(r.get(0)), r.get(1))).collect())
}

#[async_trait]
impl Orders for PgStore {
    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome> {
        self.replicas.after_write(shop.as_str(), async { self.placements.place(Placement::here(shop, order)).await }).await
    }

    async fn place_orders(&self, group: Vec<Placement>) -> StoreResult<Vec<StoreResult<PlaceOutcome>>> {
        let answers = super::groups::transaction(&self.pool, &self.name, &group).await;
        if let Ok(answers) = &answers {
            group.iter().zip(answers).filter(|(_, a)| a.is_ok()).for_each(|(p, _)| self.replicas.wrote(p.shop.as_str()));
        }
        answers
    }

    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        idempotency_record(&*self.client().await?, shop, key).await
    }

    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        primary_or_replica!(self, |c| load(c, shop, id))
    }

    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>> {
        primary_or_replica!(self, |c| list(c, shop, &query))
    }

    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let order = transactions::orders::transition(&Tx(&tx), shop, id, action, now).await?;
                tx.commit().await?;
                Ok(order)
            })
            .await
    }

    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        expired(&*self.client().await?, now, limit).await
    }
}
