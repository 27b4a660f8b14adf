//! Webhook subscriptions and their deliveries on SQLite: the rows of
//! `store::transactions::webhooks`, the reads, and the dispatcher's claim (the one writer hands
//! each due delivery to one dispatcher).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::{bind, parse_ts, ts, SqliteStore, Tx};
use crate::shops::ShopId;
use crate::store::filters::{filters, Filters};
use crate::store::outbox::{DeadLetter, Delivery, OutboxEvent, Webhook};
use crate::store::transactions::at_once;
use crate::store::transactions::webhooks::{DeliveryUpdate, WebhookRows};
use crate::store::{transactions, StoreError, StoreResult, Webhooks};

const WEBHOOK_COLUMNS: &str = "id, shop, url, events, secret, created_at";

fn webhook_row(r: &rusqlite::Row, at: usize) -> rusqlite::Result<Webhook> {
    let events: String = r.get(at + 3)?;
    Ok(Webhook {
        id: r.get(at)?,
        shop: r.get(at + 1)?,
        url: r.get(at + 2)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        secret: r.get(at + 4)?,
        created_at: parse_ts(&r.get::<_, String>(at + 5)?)?,
    })
}

const DELIVERY_COLUMNS: &str = "d.id, d.webhook, d.event_id, d.type, d.aggregate, d.envelope, d.status, d.attempts,
    d.next_attempt_at, d.deliver_by, d.last_status, d.last_error, d.created_at, d.delivered_at";

fn delivery_row(r: &rusqlite::Row) -> rusqlite::Result<Delivery> {
    let opt_ts = |s: Option<String>| s.map(|s| parse_ts(&s)).transpose();
    Ok(Delivery {
        id: r.get(0)?,
        webhook: r.get(1)?,
        event_id: r.get(2)?,
        kind: r.get(3)?,
        aggregate: r.get(4)?,
        envelope: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_attempt_at: parse_ts(&r.get::<_, String>(8)?)?,
        deliver_by: parse_ts(&r.get::<_, String>(9)?)?,
        last_status: r.get::<_, Option<i64>>(10)?.map(|s| s as u16),
        last_error: r.get(11)?,
        created_at: parse_ts(&r.get::<_, String>(12)?)?,
        delivered_at: opt_ts(r.get(13)?)?,
    })
}

/// A moved shop's subscriptions arrive: those it had here from an earlier stay are updated,
/// those deleted meanwhile go with their delivery log.
pub fn import(c: &Connection, shop: &str, hooks: &[Webhook]) -> StoreResult<()> {
    for old in list(c, shop)? {
        if !hooks.iter().any(|h| h.id == old.id) {
            delete(c, &old.id)?;
        }
    }
    for w in hooks {
        let events = serde_json::to_string(&w.events).map_err(|e| StoreError::Backend(e.to_string()))?;
        c.execute(
            "INSERT INTO webhooks (id, shop, url, events, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events, secret = excluded.secret",
            params![w.id, shop, w.url, events, w.secret, ts(w.created_at)],
        )?;
    }
    Ok(())
}

pub fn list(c: &Connection, shop: &str) -> StoreResult<Vec<Webhook>> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE shop = ?1 ORDER BY created_at, id");
    Ok(c.prepare_cached(&sql)?.query_map([shop], |r| webhook_row(r, 0))?.collect::<rusqlite::Result<_>>()?)
}

/// Removes the subscription and its delivery log: nothing more is sent to it.
fn delete(c: &Connection, id: &str) -> StoreResult<()> {
    c.execute("DELETE FROM webhook_deliveries WHERE webhook = ?1", [id])?;
    c.execute("DELETE FROM webhooks WHERE id = ?1", [id])?;
    Ok(())
}

/// One page of a subscription's delivery log, newest first, for one filter shape.
/// `f` filters by status; that index is named, as SQLite without statistics prefers the log's.
pub(crate) fn page_sql(f: &Filters) -> String {
    let index = if f.given.first() == Some(&true) { "INDEXED BY webhook_deliveries_by_hook_status " } else { "" };
    format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d {index}WHERE d.webhook = ?1{} ORDER BY d.id DESC LIMIT ?{}",
        f.sql,
        f.next(2)
    )
}

/// The delivery log of one subscription, newest first.
pub fn deliveries(c: &Connection, shop: &str, id: &str, status: Option<&str>, limit: usize) -> StoreResult<Vec<Delivery>> {
    if !exists(c, shop, id)? {
        return Err(StoreError::not_found("webhook", id));
    }
    let f = filters(&[("d.status =", status)], 2, '?');
    let mut stmt = c.prepare_cached(&page_sql(&f))?;
    let rows = stmt.query_map(params_from_iter(bind(id, &f.values, limit as i64)), delivery_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn claim(
    c: &Connection,
    owner: &str,
    lease_until: DateTime<Utc>,
    limit: usize,
    now: DateTime<Utc>,
) -> StoreResult<Vec<(Delivery, Webhook)>> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS}, w.id, w.shop, w.url, w.events, w.secret, w.created_at
         FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook
         WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 AND (d.lease_until IS NULL OR d.lease_until <= ?1)
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.status = 'pending' AND e.webhook = d.webhook
                           AND e.aggregate = d.aggregate AND e.id < d.id)
         ORDER BY d.id LIMIT ?2"
    );
    let claimed: Vec<(Delivery, Webhook)> = c
        .prepare_cached(&sql)?
        .query_map(params![ts(now), limit as i64], |r| Ok((delivery_row(r)?, webhook_row(r, 14)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (d, _) in &claimed {
        c.prepare_cached(
            "UPDATE webhook_deliveries SET lease_owner = ?2, lease_until = ?3, attempts = attempts + 1 WHERE id = ?1",
        )?
        .execute(params![d.id, owner, ts(lease_until)])?;
    }
    Ok(claimed
        .into_iter()
        .map(|(mut d, w)| {
            d.attempts += 1;
            (d, w)
        })
        .collect())
}

fn exists(c: &Connection, shop: &str, id: &str) -> StoreResult<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM webhooks WHERE shop = ?1 AND id = ?2")?
        .query_row([shop, id], |_| Ok(()))
        .optional()?
        .is_some())
}

impl WebhookRows for Tx<'_> {
    async fn webhook_exists(&self, shop: &ShopId, id: &str) -> StoreResult<bool> {
        exists(self.0, shop.as_str(), id)
    }

    async fn insert_webhook(&self, w: &Webhook) -> StoreResult<()> {
        let events = serde_json::to_string(&w.events).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.0.execute(
            "INSERT INTO webhooks (id, shop, url, events, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![w.id, w.shop, w.url, events, w.secret, ts(w.created_at)],
        )?;
        Ok(())
    }

    async fn delete_webhook_rows(&self, id: &str) -> StoreResult<()> {
        delete(self.0, id)
    }

    async fn list_webhooks(&self, shop: &str) -> StoreResult<Vec<Webhook>> {
        list(self.0, shop)
    }

    async fn any_webhooks(&self) -> StoreResult<bool> {
        Ok(self.0.prepare_cached("SELECT EXISTS (SELECT 1 FROM webhooks)")?.query_row([], |r| r.get(0))?)
    }

    async fn requeue_dead(&self, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        let n = self.0.execute(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2, deliver_by = ?3,
               lease_owner = NULL, lease_until = NULL
             WHERE webhook = ?1 AND status = 'dead'",
            params![id, ts(now), ts(deliver_by)],
        )?;
        Ok(n as u64)
    }

    async fn first_time(&self, consumer: &str, event_id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        crate::store::inbox::sqlite::first_time(self.0, consumer, event_id, now)
    }

    async fn add_delivery(&self, w: &Webhook, e: &OutboxEvent, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO webhook_deliveries (webhook, shop, event_id, aggregate, type, envelope, next_attempt_at, deliver_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7) ON CONFLICT (webhook, event_id) DO NOTHING",
            )?
            .execute(params![w.id, w.shop, e.id, e.aggregate, e.kind, e.envelope, ts(now), ts(deliver_by)])?;
        Ok(())
    }

    async fn update_delivery(&self, id: i64, u: &DeliveryUpdate<'_>) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "UPDATE webhook_deliveries SET status = ?2, last_status = ?3, last_error = ?4,
                   next_attempt_at = coalesce(?5, next_attempt_at), delivered_at = ?6, lease_owner = NULL, lease_until = NULL
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                u.status,
                u.last_status.map(i64::from),
                u.error,
                u.next_attempt_at.map(ts),
                u.delivered_at.map(ts)
            ])?;
        Ok(())
    }

    async fn mark_for_replay(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        let n = self.0.execute(
            "UPDATE dead_letters SET replay = TRUE WHERE shop = ?1 AND (?2 IS NULL OR sink = ?2)",
            params![shop.as_str(), sink],
        )?;
        Ok(n as u64)
    }
}

#[async_trait]
impl Webhooks for SqliteStore {
    async fn create_webhook(&self, shop: &ShopId, hook: Webhook) -> StoreResult<Webhook> {
        let shop = shop.clone();
        self.write(move |c| at_once(transactions::webhooks::create(&Tx(c), &shop, hook))).await
    }

    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>> {
        let shop = shop.clone();
        self.read(move |c| list(c, shop.as_str())).await
    }

    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.write(move |c| at_once(transactions::webhooks::delete(&Tx(c), &shop, &id))).await
    }

    async fn webhook_deliveries(
        &self,
        shop: &ShopId,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let (shop, id, status) = (shop.clone(), id.to_owned(), status.map(str::to_owned));
        self.read(move |c| deliveries(c, shop.as_str(), &id, status.as_deref(), limit)).await
    }

    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.write(move |c| at_once(transactions::webhooks::replay(&Tx(c), &shop, &id, deliver_by, now))).await
    }

    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let shop = shop.clone();
        self.read(move |c| super::relay::dead_letters(c, shop.as_str(), limit)).await
    }

    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        let (shop, sink) = (shop.clone(), sink.map(str::to_owned));
        self.write(move |c| at_once(Tx(c).mark_for_replay(&shop, sink.as_deref()))).await
    }
}
