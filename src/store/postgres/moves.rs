//! What moving a shop needs on PostgreSQL: its `moved_to` mark, the pin directory, and the
//! shop's rows exported and imported whole.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{catalog, orders, outbox, shops, webhooks};
use crate::shops::ShopId;
use crate::store::dump::{IdempotencyRow, ShopDump, StockRow};
use crate::store::{mark_precondition, mark_refused, StoreError, StoreResult};

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

/// Run inside a transaction: the exclusive fence lock is held until it commits.
pub async fn mark_shop(c: &impl GenericClient, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
    c.execute("SELECT pg_advisory_xact_lock(hashtextextended('fence/' || $1::text, 0))", &[&shop.as_str()]).await?;
    let expected = mark_precondition(moved_to);
    let n = c
        .execute(
            "UPDATE shops SET moved_to = $2 WHERE id = $1 AND moved_to IS NOT DISTINCT FROM $3",
            &[&shop.as_str(), &moved_to, &expected],
        )
        .await?;
    if n == 0 {
        return Err(match shops::get(c, shop).await? {
            None => StoreError::not_found("shop", shop.as_str()),
            Some(_) => mark_refused(shop, moved_to),
        });
    }
    Ok(())
}

pub async fn export_shop(c: &impl GenericClient, shop: &ShopId) -> StoreResult<ShopDump> {
    let record = shops::get(c, shop).await?.ok_or_else(|| StoreError::not_found("shop", shop.as_str()))?;
    let products = catalog::all_products(c, shop).await?;
    let stock = c
        .query("SELECT sku, on_hand, reserved, updated_at FROM stock WHERE shop = $1 ORDER BY sku", &[&shop.as_str()])
        .await?
        .iter()
        .map(|r| StockRow { sku: r.get(0), on_hand: r.get(1), reserved: r.get(2), updated_at: r.get(3) })
        .collect();
    let ids = c.query("SELECT id FROM orders WHERE shop = $1 ORDER BY id", &[&shop.as_str()]).await?;
    let mut all_orders = Vec::with_capacity(ids.len());
    for row in ids {
        if let Some(o) = orders::load(c, shop, row.get::<_, &str>(0)).await? {
            all_orders.push(o);
        }
    }
    let idempotency = c
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
        .collect();
    let (events, sequences) = outbox::export_events(c, shop).await?;
    let webhooks = webhooks::list(c, shop.as_str()).await?;
    Ok(ShopDump {
        shop: record,
        products,
        stock,
        orders: all_orders,
        idempotency,
        events,
        sequences,
        webhooks,
        origin: String::new(),
    })
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

pub async fn import_shop(c: &impl GenericClient, d: &ShopDump) -> StoreResult<()> {
    let shop = &d.shop.shop.id;
    let here = c.query_opt("SELECT moved_to FROM shops WHERE id = $1 FOR UPDATE", &[&shop.as_str()]).await?;
    match here.map(|r| r.get::<_, Option<String>>(0)) {
        None => {}
        Some(Some(_)) => purge(c, shop).await?,
        Some(None) => return Err(StoreError::conflict("shop_exists", format!("shop {shop} already lives on this shard"))),
    }
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
    outbox::import_events(c, shop, d).await?;
    webhooks::import(c, shop.as_str(), &d.webhooks).await
}
