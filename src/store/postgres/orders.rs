//! Orders on PostgreSQL: the rows of `store::transactions::orders`, and the reads. Stock is taken
//! only by conditional updates, which the transaction makes in SKU order so two orders never
//! wait on each other's rows in opposite orders; a refusal anywhere rolls the whole transaction
//! back. An advisory lock on the idempotency key refuses a duplicate still in flight on another
//! instance, and a transition locks its order's row.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{PgStore, Tx};
use crate::inventory::Stock;
use crate::money::{Currency, Money};
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, HistoryEntry, Order, OrderLine, OrderQuery, OrderStatus, PlaceOrder, PlaceOutcome, StockEffect};
use crate::shops::ShopId;
use crate::store::transactions::orders::OrderRows;
use crate::store::{micros, transactions, Orders, StoreError, StoreResult};

impl<C: GenericClient + Sync> OrderRows for Tx<'_, C> {
    async fn claim_key(&self, shop: &ShopId, key: &str) -> StoreResult<bool> {
        let c = self.0;
        let stmt = c.prepare_cached("SELECT pg_try_advisory_xact_lock(hashtextextended($1::text || '/' || $2::text, 0))").await?;
        Ok(c.query_one(&stmt, &[&shop.as_str(), &key]).await?.get(0))
    }

    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        idempotency_record(self.0, shop, key).await
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

    async fn reserve(&self, shop: &ShopId, sku: &str, qty: i64, now: DateTime<Utc>) -> StoreResult<Option<Stock>> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "UPDATE stock SET reserved = reserved + $3, updated_at = $4
                 WHERE shop = $1 AND sku = $2 AND on_hand - reserved >= $3
                 RETURNING on_hand, reserved",
            )
            .await?;
        let row = c.query_opt(&stmt, &[&shop.as_str(), &sku, &qty, &micros(now)]).await?;
        Ok(row.map(|r| Stock::new(sku.to_owned(), r.get(0), r.get(1))))
    }

    async fn nothing_available(&self, shop: &ShopId, skus: &[String]) -> StoreResult<Vec<String>> {
        let c = self.0;
        let stmt = c.prepare_cached("SELECT sku FROM stock WHERE shop = $1 AND sku = ANY($2) AND on_hand - reserved > 0").await?;
        let available: Vec<String> = c.query(&stmt, &[&shop.as_str(), &skus]).await?.iter().map(|r| r.get(0)).collect();
        Ok(skus.iter().filter(|s| !available.contains(s)).cloned().collect())
    }

    /// The lines in one statement, whatever their number.
    async fn insert_order(&self, o: &Order) -> StoreResult<()> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
            )
            .await?;
        c.execute(
            &stmt,
            &[
                &o.id,
                &o.shop.as_str(),
                &o.customer_id,
                &o.status.as_str(),
                &o.total.amount,
                &o.total.currency.as_str(),
                &o.created_at,
                &o.expires_at,
            ],
        )
        .await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO order_lines (order_id, line_no, sku, name, qty, unit_price, line_total)
                 SELECT $1, n::int - 1, sku, name, qty, unit_price, line_total
                 FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) WITH ORDINALITY
                   AS l (sku, name, qty, unit_price, line_total, n)",
            )
            .await?;
        let col = |f: fn(&OrderLine) -> i64| o.lines.iter().map(f).collect::<Vec<i64>>();
        let names: Vec<&str> = o.lines.iter().map(|l| l.name.as_str()).collect();
        let skus: Vec<&str> = o.lines.iter().map(|l| l.sku.as_str()).collect();
        c.execute(&stmt, &[&o.id, &skus, &names, &col(|l| l.qty), &col(|l| l.unit_price.amount), &col(|l| l.line_total.amount)])
            .await?;
        append_history(c, &o.id, 1, o.status, o.created_at, None).await
    }

    async fn remember(
        &self,
        shop: &ShopId,
        key: &str,
        fingerprint: &[u8; 32],
        answer: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at)
                 VALUES ($1, $2, $3, 201, $4, $5)",
            )
            .await?;
        c.execute(&stmt, &[&shop.as_str(), &key, &&fingerprint[..], &answer, &micros(now)]).await?;
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
    let stmt = c
        .prepare_cached(
            "SELECT id FROM orders WHERE shop = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4",
        )
        .await?;
    let status = q.status.map(OrderStatus::as_str);
    let ids = c.query(&stmt, &[&shop.as_str(), &status, &q.before, &((q.limit + 1) as i64)]).await?;
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
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let outcome = transactions::orders::place(&Tx(&tx), shop, &order).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        idempotency_record(&*self.client().await?, shop, key).await
    }

    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        load(&*self.client().await?, shop, id).await
    }

    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>> {
        list(&*self.client().await?, shop, &query).await
    }

    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let order = transactions::orders::transition(&Tx(&tx), shop, id, action, now).await?;
        tx.commit().await?;
        Ok(order)
    }

    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        expired(&*self.client().await?, now, limit).await
    }
}
