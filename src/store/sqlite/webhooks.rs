//! Webhook subscriptions and their deliveries on SQLite.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{parse_ts, ts};
use crate::store::outbox::{Delivery, DeliveryOutcome, OutboxEvent, Webhook};
use crate::store::{StoreError, StoreResult};

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

pub fn create(c: &Connection, w: &Webhook) -> StoreResult<()> {
    let events = serde_json::to_string(&w.events).map_err(|e| StoreError::Backend(e.to_string()))?;
    c.execute(
        "INSERT INTO webhooks (id, shop, url, events, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![w.id, w.shop, w.url, events, w.secret, ts(w.created_at)],
    )?;
    Ok(())
}

/// A moved shop's subscriptions arrive: those it had here from an earlier stay are updated,
/// those deleted meanwhile go with their delivery log.
pub fn import(c: &Connection, shop: &str, hooks: &[Webhook]) -> StoreResult<()> {
    for old in list(c, shop)? {
        if !hooks.iter().any(|h| h.id == old.id) {
            delete(c, shop, &old.id)?;
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

fn exists(c: &Connection, shop: &str, id: &str) -> StoreResult<()> {
    let found =
        c.prepare_cached("SELECT 1 FROM webhooks WHERE shop = ?1 AND id = ?2")?.query_row([shop, id], |_| Ok(())).optional()?;
    found.ok_or_else(|| StoreError::not_found("webhook", id))
}

/// Removes the subscription and its delivery log: nothing more is sent to it.
pub fn delete(c: &Connection, shop: &str, id: &str) -> StoreResult<()> {
    exists(c, shop, id)?;
    c.execute("DELETE FROM webhook_deliveries WHERE webhook = ?1", [id])?;
    c.execute("DELETE FROM webhooks WHERE id = ?1", [id])?;
    Ok(())
}

/// The delivery log of one subscription, newest first.
pub fn deliveries(c: &Connection, shop: &str, id: &str, status: Option<&str>, limit: usize) -> StoreResult<Vec<Delivery>> {
    exists(c, shop, id)?;
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.webhook = ?1 AND (?2 IS NULL OR d.status = ?2)
         ORDER BY d.id DESC LIMIT ?3"
    );
    Ok(c.prepare_cached(&sql)?.query_map(params![id, status, limit as i64], delivery_row)?.collect::<rusqlite::Result<_>>()?)
}

/// Puts a subscription's dead deliveries back in line, with fresh attempts and deadline.
pub fn replay(c: &Connection, shop: &str, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
    exists(c, shop, id)?;
    let n = c.execute(
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2, deliver_by = ?3,
           lease_owner = NULL, lease_until = NULL
         WHERE webhook = ?1 AND status = 'dead'",
        params![id, ts(now), ts(deliver_by)],
    )?;
    Ok(n as u64)
}

/// A delivery per subscription that wants each event. The inbox makes the fan-out of one event
/// happen once even if its batch is claimed again.
pub fn enqueue(c: &Connection, events: &[OutboxEvent], deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<()> {
    let mut hooks: std::collections::HashMap<String, Vec<Webhook>> = Default::default();
    for e in events {
        let Some(shop) = &e.shop else { continue };
        if !hooks.contains_key(shop) {
            hooks.insert(shop.clone(), list(c, shop)?);
        }
        // A subscription receives what happened from its creation on.
        let wanted: Vec<&Webhook> = hooks[shop].iter().filter(|w| w.wants(&e.kind) && e.created_at >= w.created_at).collect();
        if wanted.is_empty() || !crate::store::inbox::sqlite::first_time(c, "webhooks", &e.id, now)? {
            continue;
        }
        for w in wanted {
            c.prepare_cached(
                "INSERT INTO webhook_deliveries (webhook, shop, event_id, aggregate, type, envelope, next_attempt_at, deliver_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7) ON CONFLICT (webhook, event_id) DO NOTHING",
            )?
            .execute(params![w.id, shop, e.id, e.aggregate, e.kind, e.envelope, ts(now), ts(deliver_by)])?;
        }
    }
    Ok(())
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

pub fn finish(c: &Connection, id: i64, outcome: &DeliveryOutcome, now: DateTime<Utc>) -> StoreResult<()> {
    let (status, last_status, error, next, delivered) = match outcome {
        DeliveryOutcome::Delivered { status } => ("delivered", Some(*status), None, None, Some(ts(now))),
        DeliveryOutcome::Retry { status, error, at } => ("pending", *status, Some(error.as_str()), Some(ts(*at)), None),
        DeliveryOutcome::Dead { status, error } => ("dead", *status, Some(error.as_str()), None, None),
    };
    c.prepare_cached(
        "UPDATE webhook_deliveries SET status = ?2, last_status = ?3, last_error = ?4,
           next_attempt_at = coalesce(?5, next_attempt_at), delivered_at = ?6, lease_owner = NULL, lease_until = NULL
         WHERE id = ?1",
    )?
    .execute(params![id, status, last_status.map(i64::from), error, next, delivered])?;
    Ok(())
}
