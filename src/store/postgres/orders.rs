//! Orders on PostgreSQL. Placement takes stock only by conditional updates, in SKU order so two
//! orders never wait on each other's rows in opposite orders; a refusal anywhere rolls the whole
//! transaction back. An advisory lock on the idempotency key refuses a duplicate still in flight
//! on another instance.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::shops::check_home;
use crate::inventory::Stock;
use crate::money::{Currency, Money};
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{
    price_lines, Action, HistoryEntry, Order, OrderLine, OrderQuery, OrderStatus, PlaceOrder, PlaceOutcome,
    StockEffect,
};
use crate::refusal::Refusal;
use crate::shops::ShopId;
use crate::store::{micros, StoreError, StoreResult};

pub async fn place(c: &impl GenericClient, shop: &ShopId, p: &PlaceOrder) -> StoreResult<PlaceOutcome> {
    check_home(c, shop).await?;
    let stmt = c.prepare_cached("SELECT pg_try_advisory_xact_lock(hashtextextended($1::text || '/' || $2::text, 0))").await?;
    let free: bool = c.query_one(&stmt, &[&shop.as_str(), &p.idempotency_key]).await?.get(0);
    if !free {
        return Err(StoreError::conflict(
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed",
        ));
    }
    if let Some(record) = idempotency_record(c, shop, &p.idempotency_key).await? {
        return Ok(record.outcome(&p.fingerprint));
    }

    let skus: Vec<&str> = p.lines.iter().map(|l| l.sku.as_str()).collect();
    let stmt =
        c.prepare_cached("SELECT sku, name, price_amount, currency FROM products WHERE shop = $1 AND sku = ANY($2)").await?;
    let catalog = c.query(&stmt, &[&shop.as_str(), &skus]).await?;
    let (lines, total) = price_lines(p.currency, &p.lines, |sku| {
        let row = catalog.iter().find(|r| r.get::<_, &str>(0) == sku)?;
        Some((row.get::<_, String>(1), Money::new(row.get(2), Currency::parse(row.get::<_, &str>(3))?)))
    })
    .map_err(Refusal::from)?;

    let now = micros(p.now);
    let take = c
        .prepare_cached(
            "UPDATE stock SET reserved = reserved + $3, updated_at = $4
             WHERE shop = $1 AND sku = $2 AND on_hand - reserved >= $3
             RETURNING on_hand, reserved",
        )
        .await?;
    let mut in_lock_order: Vec<_> = p.lines.iter().collect();
    in_lock_order.sort_by(|a, b| a.sku.cmp(&b.sku));
    let mut short = Vec::new();
    let mut drained = Vec::new();
    for line in in_lock_order {
        match c.query_opt(&take, &[&shop.as_str(), &line.sku, &line.qty, &now]).await? {
            None => short.push(line.sku.clone()),
            // Available reached 0: other instances can refuse this SKU from memory from now on.
            Some(row) if row.get::<_, i64>(0) == row.get::<_, i64>(1) => {
                drained.push(Stock::new(line.sku.clone(), row.get(0), row.get(1)))
            }
            Some(_) => {}
        }
    }
    if !short.is_empty() {
        // Report in the order the client sent the lines.
        short.sort_by_key(|s| p.lines.iter().position(|l| &l.sku == s));
        let stmt = c.prepare_cached("SELECT sku FROM stock WHERE shop = $1 AND sku = ANY($2) AND on_hand - reserved > 0").await?;
        let available: Vec<String> = c.query(&stmt, &[&shop.as_str(), &short]).await?.iter().map(|r| r.get(0)).collect();
        let sold_out = short.iter().filter(|s| !available.contains(s)).cloned().collect();
        return Err(StoreError::InsufficientStock { skus: short, sold_out });
    }

    let stmt = c
        .prepare_cached(
            "INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at)
             VALUES ($1, $2, $3, 'placed', $4, $5, $6, $6, $7)",
        )
        .await?;
    c.execute(
        &stmt,
        &[&p.id, &shop.as_str(), &p.customer_id, &total.amount, &total.currency.as_str(), &now, &micros(p.expires_at)],
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
    let col = |f: fn(&OrderLine) -> i64| lines.iter().map(f).collect::<Vec<i64>>();
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    let line_skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    c.execute(&stmt, &[&p.id, &line_skus, &names, &col(|l| l.qty), &col(|l| l.unit_price.amount), &col(|l| l.line_total.amount)])
        .await?;
    append_history(c, &p.id, 1, OrderStatus::Placed, now, None).await?;

    let order = load(c, shop, &p.id).await?.ok_or_else(|| StoreError::Backend("order vanished after insert".into()))?;
    let body = serde_json::to_string(&order).map_err(|e| StoreError::Backend(e.to_string()))?;
    let stmt = c
        .prepare_cached(
            "INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at) VALUES ($1, $2, $3, 201, $4, $5)",
        )
        .await?;
    c.execute(&stmt, &[&shop.as_str(), &p.idempotency_key, &&p.fingerprint[..], &body, &now]).await?;
    super::outbox::emit(c, crate::events::envelope::order_changed(&order), now).await?;
    for stock in &drained {
        super::outbox::emit(c, crate::events::envelope::stock_changed(shop, stock), now).await?;
    }
    Ok(PlaceOutcome::Created(order))
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

pub async fn transition(
    c: &impl GenericClient,
    shop: &ShopId,
    id: &str,
    action: Action,
    now: DateTime<Utc>,
) -> StoreResult<Order> {
    check_home(c, shop).await?;
    let stmt = c.prepare_cached("SELECT status FROM orders WHERE id = $1 AND shop = $2 FOR UPDATE").await?;
    let row = c.query_opt(&stmt, &[&id, &shop.as_str()]).await?.ok_or_else(|| StoreError::not_found("order", id))?;
    let status: String = row.get(0);
    let from = OrderStatus::parse(&status).ok_or_else(|| StoreError::Backend(format!("order {id} has status {status}")))?;
    let to = action.apply(from).ok_or_else(|| {
        StoreError::conflict("invalid_transition", format!("cannot {} an order that is {}", action.verb(), from.as_str()))
    })?;

    let now = micros(now);
    let effect_sql = match action.stock_effect() {
        StockEffect::None => None,
        StockEffect::Consume => Some(
            "UPDATE stock SET on_hand = on_hand - $3, reserved = reserved - $3, updated_at = $4
             WHERE shop = $1 AND sku = $2 AND reserved >= $3",
        ),
        StockEffect::Release => {
            Some("UPDATE stock SET reserved = reserved - $3, updated_at = $4 WHERE shop = $1 AND sku = $2 AND reserved >= $3")
        }
    };
    let mut refilled = Vec::new();
    if let Some(sql) = effect_sql {
        let stmt = c.prepare_cached("SELECT sku, qty FROM order_lines WHERE order_id = $1 ORDER BY sku").await?;
        let lines = c.query(&stmt, &[&id]).await?;
        let update = c.prepare_cached(&format!("{sql} RETURNING on_hand, reserved")).await?;
        for line in lines {
            let (sku, qty): (String, i64) = (line.get(0), line.get(1));
            let Some(after) = c.query_opt(&update, &[&shop.as_str(), &sku, &qty, &now]).await? else {
                return Err(StoreError::Backend(format!("reservation for {sku} in order {id} is missing")));
            };
            let stock = Stock::new(sku, after.get(0), after.get(1));
            // Available rose from 0: whoever remembers the SKU as sold out must hear of it.
            if action.stock_effect() == StockEffect::Release && stock.available == qty {
                refilled.push(stock);
            }
        }
    }
    let stmt = c.prepare_cached("UPDATE orders SET status = $2, updated_at = $3, expires_at = NULL WHERE id = $1").await?;
    c.execute(&stmt, &[&id, &to.as_str(), &now]).await?;
    let stmt = c.prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM order_history WHERE order_id = $1").await?;
    let seq: i32 = c.query_one(&stmt, &[&id]).await?.get(0);
    append_history(c, id, seq, to, now, action.reason()).await?;
    let order = load(c, shop, id).await?.ok_or_else(|| StoreError::Backend("order vanished after update".into()))?;
    super::outbox::emit(c, crate::events::envelope::order_changed(&order), now).await?;
    for stock in &refilled {
        super::outbox::emit(c, crate::events::envelope::stock_changed(shop, stock), now).await?;
    }
    Ok(order)
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
