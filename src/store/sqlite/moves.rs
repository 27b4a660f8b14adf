//! What moving a shop needs on SQLite: its `moved_to` mark, the pin directory, and the shop's
//! rows exported and imported whole.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{catalog, orders, outbox, parse_ts, shops, ts, webhooks};
use crate::shops::ShopId;
use crate::store::dump::{IdempotencyRow, ShopDump, StockRow};
use crate::store::{mark_precondition, mark_refused, StoreError, StoreResult};

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

pub fn mark_shop(c: &Connection, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
    let expected = mark_precondition(moved_to);
    let n = c.prepare_cached("UPDATE shops SET moved_to = ?2 WHERE id = ?1 AND moved_to IS ?3")?.execute(params![
        shop.as_str(),
        moved_to,
        expected
    ])?;
    if n == 0 {
        return Err(match shops::get(c, shop)? {
            None => StoreError::not_found("shop", shop.as_str()),
            Some(_) => mark_refused(shop, moved_to),
        });
    }
    Ok(())
}

pub fn export_shop(c: &Connection, shop: &ShopId) -> StoreResult<ShopDump> {
    let record = shops::get(c, shop)?.ok_or_else(|| StoreError::not_found("shop", shop.as_str()))?;
    let products = catalog::all_products(c, shop)?;
    let stock = c
        .prepare_cached("SELECT sku, on_hand, reserved, updated_at FROM stock WHERE shop = ?1 ORDER BY sku")?
        .query_map([shop.as_str()], |r| {
            Ok(StockRow {
                sku: r.get(0)?,
                on_hand: r.get(1)?,
                reserved: r.get(2)?,
                updated_at: parse_ts(&r.get::<_, String>(3)?)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let ids: Vec<String> = c
        .prepare_cached("SELECT id FROM orders WHERE shop = ?1 ORDER BY id")?
        .query_map([shop.as_str()], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let orders = ids.iter().filter_map(|id| orders::load(c, shop, id).transpose()).collect::<StoreResult<Vec<_>>>()?;
    let idempotency = c
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
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let (events, sequences) = outbox::export_events(c, shop)?;
    let webhooks = webhooks::list(c, shop.as_str())?;
    Ok(ShopDump { shop: record, products, stock, orders, idempotency, events, sequences, webhooks, origin: String::new() })
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

pub fn import_shop(c: &Connection, d: &ShopDump) -> StoreResult<()> {
    let shop = &d.shop.shop.id;
    let here: Option<Option<String>> =
        c.prepare_cached("SELECT moved_to FROM shops WHERE id = ?1")?.query_row([shop.as_str()], |r| r.get(0)).optional()?;
    match here {
        None => {}
        Some(Some(_)) => purge(c, shop)?,
        Some(None) => return Err(StoreError::conflict("shop_exists", format!("shop {shop} already lives on this shard"))),
    }
    let s = &d.shop.shop;
    c.execute(
        "INSERT INTO shops (id, name, currency, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![s.id.as_str(), s.name, s.currency.as_str(), &d.shop.api_key_hash[..], ts(s.created_at)],
    )?;
    for p in &d.products {
        catalog::write_product(c, p)?;
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
    outbox::import_events(c, shop, d)?;
    webhooks::import(c, shop.as_str(), &d.webhooks)
}
