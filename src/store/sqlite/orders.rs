//! Orders on SQLite. Placement and transitions run inside the writer's savepoint, so a refusal
//! anywhere (unknown SKU, short stock) undoes every reservation already taken.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::shops::check_home;
use super::{parse_ts, ts};
use crate::inventory::Stock;
use crate::money::{Currency, Money};
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{
    price_lines, Action, HistoryEntry, Order, OrderLine, OrderQuery, OrderStatus, PlaceOrder, PlaceOutcome,
    StockEffect,
};
use crate::refusal::Refusal;
use crate::shops::ShopId;
use crate::store::{stored_answer, StoreError, StoreResult};

pub fn place(c: &Connection, shop: &ShopId, p: &PlaceOrder) -> StoreResult<PlaceOutcome> {
    check_home(c, shop)?;
    if let Some(record) = idempotency_record(c, shop, &p.idempotency_key)? {
        return Ok(record.outcome(&p.fingerprint));
    }

    let mut price_stmt = c.prepare_cached("SELECT name, price_amount, currency FROM products WHERE shop = ?1 AND sku = ?2")?;
    let (lines, total) = price_lines(p.currency, &p.lines, |sku| {
        price_stmt
            .query_row(params![shop.as_str(), sku], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))
            .ok()
            .and_then(|(name, amount, cur)| Some((name, Money::new(amount, Currency::parse(&cur)?))))
    })
    .map_err(Refusal::from)?;

    // The only way stock is taken: a conditional update that cannot pass below zero available.
    let mut take = c.prepare_cached(
        "UPDATE stock SET reserved = reserved + ?3, updated_at = ?4
         WHERE shop = ?1 AND sku = ?2 AND on_hand - reserved >= ?3
         RETURNING on_hand, reserved",
    )?;
    let now = ts(p.now);
    let mut short = Vec::new();
    let mut drained = Vec::new();
    for line in &p.lines {
        let left = take
            .query_row(params![shop.as_str(), line.sku, line.qty, now], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        match left {
            None => short.push(line.sku.clone()),
            // Available reached 0: other instances can refuse this SKU from memory from now on.
            Some((on_hand, reserved)) if on_hand == reserved => drained.push(Stock::new(line.sku.clone(), on_hand, reserved)),
            Some(_) => {}
        }
    }
    if !short.is_empty() {
        let sold_out = nothing_available(c, shop, &short)?;
        return Err(StoreError::InsufficientStock { skus: short, sold_out });
    }

    c.prepare_cached(
        "INSERT INTO orders (id, shop, customer_id, status, total_amount, currency, created_at, updated_at, expires_at)
         VALUES (?1, ?2, ?3, 'placed', ?4, ?5, ?6, ?6, ?7)",
    )?
    .execute(params![p.id, shop.as_str(), p.customer_id, total.amount, total.currency.as_str(), now, ts(p.expires_at)])?;
    let mut ins_line = c.prepare_cached(
        "INSERT INTO order_lines (order_id, line_no, sku, name, qty, unit_price, line_total) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (i, l) in lines.iter().enumerate() {
        ins_line.execute(params![p.id, i as i64, l.sku, l.name, l.qty, l.unit_price.amount, l.line_total.amount])?;
    }
    append_history(c, &p.id, 1, OrderStatus::Placed, &now, None)?;

    // The order as `load` would read it back (times at the stored precision), without reading it
    // back: three queries fewer per order inside the one writer every order waits for.
    let stored = |t: DateTime<Utc>| parse_ts(&ts(t));
    let created = stored(p.now)?;
    let order = Order {
        id: p.id.clone(),
        shop: shop.clone(),
        customer_id: p.customer_id.clone(),
        status: OrderStatus::Placed,
        lines,
        total,
        history: vec![HistoryEntry { status: OrderStatus::Placed, at: created, reason: None }],
        created_at: created,
        updated_at: created,
        expires_at: Some(stored(p.expires_at)?),
    };
    let body = serde_json::to_string(&order).map_err(|e| StoreError::Backend(e.to_string()))?;
    c.prepare_cached(
        "INSERT INTO idempotency_keys (shop, key, request_hash, status_code, response, created_at) VALUES (?1, ?2, ?3, 201, ?4, ?5)",
    )?
    .execute(params![shop.as_str(), p.idempotency_key, &p.fingerprint[..], body, now])?;
    super::outbox::emit(c, crate::events::envelope::order_changed(&order), p.now)?;
    for stock in &drained {
        super::outbox::emit(c, crate::events::envelope::stock_changed(shop, stock), p.now)?;
    }
    Ok(PlaceOutcome::Created(order))
}

pub fn idempotency_record(c: &Connection, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
    Ok(c.prepare_cached("SELECT request_hash, status_code, response FROM idempotency_keys WHERE shop = ?1 AND key = ?2")?
        .query_row(params![shop.as_str(), key], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u16>(1)?, r.get::<_, String>(2)?))
        })
        .optional()?
        .map(|(request_hash, status, body)| -> StoreResult<IdempotencyRecord> {
            Ok(IdempotencyRecord { request_hash, status, body: stored_answer(&body)? })
        })
        .transpose()?)
}

/// Which of `skus` have nothing available (rather than less than was asked).
fn nothing_available(c: &Connection, shop: &ShopId, skus: &[String]) -> StoreResult<Vec<String>> {
    let mut stmt = c.prepare_cached("SELECT on_hand - reserved FROM stock WHERE shop = ?1 AND sku = ?2")?;
    let mut out = Vec::new();
    for sku in skus {
        let available: Option<i64> = stmt.query_row(params![shop.as_str(), sku], |r| r.get(0)).optional()?;
        if available.is_none_or(|a| a <= 0) {
            out.push(sku.clone());
        }
    }
    Ok(out)
}

fn append_history(c: &Connection, id: &str, seq: i64, status: OrderStatus, at: &str, reason: Option<&str>) -> StoreResult<()> {
    c.prepare_cached("INSERT INTO order_history (order_id, seq, status, at, reason) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![id, seq, status.as_str(), at, reason])?;
    Ok(())
}

pub fn transition(c: &Connection, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
    check_home(c, shop)?;
    let status: Option<String> = c
        .prepare_cached("SELECT status FROM orders WHERE id = ?1 AND shop = ?2")?
        .query_row(params![id, shop.as_str()], |r| r.get(0))
        .optional()?;
    let status = status.ok_or_else(|| StoreError::not_found("order", id))?;
    let from = OrderStatus::parse(&status).ok_or_else(|| StoreError::Backend(format!("order {id} has status {status}")))?;
    let to = action.apply(from).ok_or_else(|| {
        StoreError::conflict("invalid_transition", format!("cannot {} an order that is {}", action.verb(), from.as_str()))
    })?;

    let now_s = ts(now);
    let effect_sql = match action.stock_effect() {
        StockEffect::None => None,
        StockEffect::Consume => Some(
            "UPDATE stock SET on_hand = on_hand - ?3, reserved = reserved - ?3, updated_at = ?4
             WHERE shop = ?1 AND sku = ?2 AND reserved >= ?3",
        ),
        StockEffect::Release => {
            Some("UPDATE stock SET reserved = reserved - ?3, updated_at = ?4 WHERE shop = ?1 AND sku = ?2 AND reserved >= ?3")
        }
    };
    let mut refilled = Vec::new();
    if let Some(sql) = effect_sql {
        let lines: Vec<(String, i64)> = c
            .prepare_cached("SELECT sku, qty FROM order_lines WHERE order_id = ?1 ORDER BY sku")?
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = c.prepare_cached(&format!("{sql} RETURNING on_hand, reserved"))?;
        for (sku, qty) in lines {
            let after = stmt
                .query_row(params![shop.as_str(), sku, qty, now_s], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .optional()?;
            let Some((on_hand, reserved)) = after else {
                return Err(StoreError::Backend(format!("reservation for {sku} in order {id} is missing")));
            };
            let stock = Stock::new(sku, on_hand, reserved);
            // Available rose from 0: whoever remembers the SKU as sold out must hear of it.
            if action.stock_effect() == StockEffect::Release && stock.available == qty {
                refilled.push(stock);
            }
        }
    }
    c.prepare_cached("UPDATE orders SET status = ?2, updated_at = ?3, expires_at = NULL WHERE id = ?1")?.execute(params![
        id,
        to.as_str(),
        now_s
    ])?;
    let seq: i64 = c.query_row("SELECT coalesce(max(seq), 0) + 1 FROM order_history WHERE order_id = ?1", [id], |r| r.get(0))?;
    append_history(c, id, seq, to, &now_s, action.reason())?;
    let order = load(c, shop, id)?.ok_or_else(|| StoreError::Backend("order vanished after update".into()))?;
    super::outbox::emit(c, crate::events::envelope::order_changed(&order), now)?;
    for stock in &refilled {
        super::outbox::emit(c, crate::events::envelope::stock_changed(shop, stock), now)?;
    }
    Ok(order)
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

pub fn list(c: &Connection, shop: &ShopId, q: &OrderQuery) -> StoreResult<Vec<Order>> {
    let ids: Vec<String> = c
        .prepare_cached(
            "SELECT id FROM orders WHERE shop = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4",
        )?
        .query_map(params![shop.as_str(), q.status.map(OrderStatus::as_str), q.before, (q.limit + 1) as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.iter().filter_map(|id| load(c, shop, id).transpose()).collect()
}

pub fn expired(c: &Connection, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
    Ok(c.prepare_cached("SELECT shop, id FROM orders WHERE status = 'placed' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2")?
        .query_map(params![ts(now), limit as i64], |r| Ok((ShopId::trusted(r.get(0)?), r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}
