//! Webhook subscriptions, their deliveries, and dead letters on PostgreSQL.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::store::outbox::{DeadLetter, Delivery, DeliveryOutcome, OutboxEvent, Webhook};
use crate::store::{StoreError, StoreResult};

const WEBHOOK_COLUMNS: &str = "id, shop, url, events, secret, created_at";

fn webhook_row(r: &Row, at: usize) -> Webhook {
    Webhook {
        id: r.get(at),
        shop: r.get(at + 1),
        url: r.get(at + 2),
        events: serde_json::from_str(r.get::<_, &str>(at + 3)).unwrap_or_default(),
        secret: r.get(at + 4),
        created_at: r.get(at + 5),
    }
}

const DELIVERY_COLUMNS: &str = "d.id, d.webhook, d.event_id, d.type, d.aggregate, d.envelope, d.status, d.attempts,
    d.next_attempt_at, d.deliver_by, d.last_status, d.last_error, d.created_at, d.delivered_at";

fn delivery_row(r: &Row) -> Delivery {
    Delivery {
        id: r.get(0),
        webhook: r.get(1),
        event_id: r.get(2),
        kind: r.get(3),
        aggregate: r.get(4),
        envelope: r.get(5),
        status: r.get(6),
        attempts: r.get::<_, i32>(7) as u32,
        next_attempt_at: r.get(8),
        deliver_by: r.get(9),
        last_status: r.get::<_, Option<i32>>(10).map(|s| s as u16),
        last_error: r.get(11),
        created_at: r.get(12),
        delivered_at: r.get(13),
    }
}

pub const DEAD_LETTER_COLUMNS: &str = "sink, event_id, position, shop, type, envelope, attempts, error, dead_at, replay";

pub fn dead_letter_row(r: &Row) -> DeadLetter {
    let envelope: String = r.get(5);
    DeadLetter {
        sink: r.get(0),
        event_id: r.get(1),
        position: r.get(2),
        shop: r.get(3),
        kind: r.get(4),
        event: serde_json::from_str(&envelope).unwrap_or(serde_json::Value::String(envelope)),
        attempts: r.get::<_, i32>(6) as u32,
        error: r.get(7),
        dead_at: r.get(8),
        replay: r.get(9),
    }
}

pub async fn create(c: &impl GenericClient, w: &Webhook) -> StoreResult<()> {
    let events = serde_json::to_string(&w.events).map_err(|e| StoreError::Backend(e.to_string()))?;
    let stmt = c
        .prepare_cached("INSERT INTO webhooks (id, shop, url, events, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .await?;
    c.execute(&stmt, &[&w.id, &w.shop, &w.url, &events, &w.secret, &w.created_at]).await?;
    Ok(())
}

/// A moved shop's subscriptions arrive: those it had here from an earlier stay are updated,
/// those deleted meanwhile go with their delivery log.
pub async fn import(c: &impl GenericClient, shop: &str, hooks: &[Webhook]) -> StoreResult<()> {
    for old in list(c, shop).await? {
        if !hooks.iter().any(|h| h.id == old.id) {
            delete(c, shop, &old.id).await?;
        }
    }
    for w in hooks {
        let events = serde_json::to_string(&w.events).map_err(|e| StoreError::Backend(e.to_string()))?;
        c.execute(
            "INSERT INTO webhooks (id, shop, url, events, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events, secret = excluded.secret",
            &[&w.id, &shop, &w.url, &events, &w.secret, &w.created_at],
        )
        .await?;
    }
    Ok(())
}

pub async fn list(c: &impl GenericClient, shop: &str) -> StoreResult<Vec<Webhook>> {
    let stmt =
        c.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE shop = $1 ORDER BY created_at, id")).await?;
    Ok(c.query(&stmt, &[&shop]).await?.iter().map(|r| webhook_row(r, 0)).collect())
}

async fn exists(c: &impl GenericClient, shop: &str, id: &str) -> StoreResult<()> {
    let stmt = c.prepare_cached("SELECT 1 FROM webhooks WHERE shop = $1 AND id = $2").await?;
    match c.query_opt(&stmt, &[&shop, &id]).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::not_found("webhook", id)),
    }
}

pub async fn delete(c: &impl GenericClient, shop: &str, id: &str) -> StoreResult<()> {
    exists(c, shop, id).await?;
    c.execute("DELETE FROM webhook_deliveries WHERE webhook = $1", &[&id]).await?;
    c.execute("DELETE FROM webhooks WHERE id = $1", &[&id]).await?;
    Ok(())
}

pub async fn deliveries(
    c: &impl GenericClient,
    shop: &str,
    id: &str,
    status: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<Delivery>> {
    exists(c, shop, id).await?;
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.webhook = $1 AND ($2::text IS NULL OR d.status = $2)
             ORDER BY d.id DESC LIMIT $3"
        ))
        .await?;
    Ok(c.query(&stmt, &[&id, &status, &(limit as i64)]).await?.iter().map(delivery_row).collect())
}

pub async fn replay(
    c: &impl GenericClient,
    shop: &str,
    id: &str,
    deliver_by: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    exists(c, shop, id).await?;
    let stmt = c
        .prepare_cached(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2, deliver_by = $3,
               lease_owner = NULL, lease_until = NULL
             WHERE webhook = $1 AND status = 'dead'",
        )
        .await?;
    Ok(c.execute(&stmt, &[&id, &now, &deliver_by]).await?)
}

pub async fn dead_letters(c: &impl GenericClient, shop: &str, limit: usize) -> StoreResult<Vec<DeadLetter>> {
    let stmt = c
        .prepare_cached(&format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE shop = $1 ORDER BY dead_at DESC LIMIT $2"))
        .await?;
    Ok(c.query(&stmt, &[&shop, &(limit as i64)]).await?.iter().map(dead_letter_row).collect())
}

pub async fn replay_dead_letters(c: &impl GenericClient, shop: &str, sink: Option<&str>) -> StoreResult<u64> {
    let stmt =
        c.prepare_cached("UPDATE dead_letters SET replay = TRUE WHERE shop = $1 AND ($2::text IS NULL OR sink = $2)").await?;
    Ok(c.execute(&stmt, &[&shop, &sink]).await?)
}

/// A delivery per subscription that wants each event; the inbox makes an event's fan-out happen
/// once even if its batch is claimed again.
pub async fn enqueue(
    c: &impl GenericClient,
    events: &[OutboxEvent],
    deliver_by: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let mut hooks: std::collections::HashMap<String, Vec<Webhook>> = Default::default();
    let insert = c
        .prepare_cached(
            "INSERT INTO webhook_deliveries (webhook, shop, event_id, aggregate, type, envelope, next_attempt_at, deliver_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7) ON CONFLICT (webhook, event_id) DO NOTHING",
        )
        .await?;
    for e in events {
        let Some(shop) = &e.shop else { continue };
        if !hooks.contains_key(shop) {
            hooks.insert(shop.clone(), list(c, shop).await?);
        }
        // A subscription receives what happened from its creation on.
        let wanted: Vec<&Webhook> = hooks[shop].iter().filter(|w| w.wants(&e.kind) && e.created_at >= w.created_at).collect();
        if wanted.is_empty() || !crate::store::inbox::postgres::first_time(c, "webhooks", &e.id).await? {
            continue;
        }
        for w in wanted {
            c.execute(&insert, &[&w.id, shop, &e.id, &e.aggregate, &e.kind, &e.envelope, &now, &deliver_by]).await?;
        }
    }
    Ok(())
}

/// Due deliveries, leased with `FOR UPDATE SKIP LOCKED` so dispatchers never take the same one.
pub async fn claim(
    c: &impl GenericClient,
    owner: &str,
    lease_until: DateTime<Utc>,
    limit: usize,
    now: DateTime<Utc>,
) -> StoreResult<Vec<(Delivery, Webhook)>> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH due AS (
               SELECT d.id FROM webhook_deliveries d
               WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND (d.lease_until IS NULL OR d.lease_until <= $1)
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.status = 'pending' AND e.webhook = d.webhook
                                 AND e.aggregate = d.aggregate AND e.id < d.id)
               ORDER BY d.id LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries d SET lease_owner = $3, lease_until = $4, attempts = d.attempts + 1
             FROM due WHERE d.id = due.id
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .await?;
    let mut claimed: Vec<Delivery> =
        c.query(&stmt, &[&now, &(limit as i64), &owner, &lease_until]).await?.iter().map(delivery_row).collect();
    claimed.sort_by_key(|d| d.id);
    let ids: Vec<&str> = claimed.iter().map(|d| d.webhook.as_str()).collect();
    let stmt = c.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ANY($1)")).await?;
    let hooks: std::collections::HashMap<String, Webhook> =
        c.query(&stmt, &[&ids]).await?.iter().map(|r| webhook_row(r, 0)).map(|w| (w.id.clone(), w)).collect();
    Ok(claimed.into_iter().filter_map(|d| hooks.get(&d.webhook).cloned().map(|w| (d, w))).collect())
}

pub async fn finish(c: &impl GenericClient, id: i64, outcome: &DeliveryOutcome, now: DateTime<Utc>) -> StoreResult<()> {
    let (status, last_status, error, next, delivered) = match outcome {
        DeliveryOutcome::Delivered { status } => ("delivered", Some(*status), None, None, Some(now)),
        DeliveryOutcome::Retry { status, error, at } => ("pending", *status, Some(error.as_str()), Some(*at), None),
        DeliveryOutcome::Dead { status, error } => ("dead", *status, Some(error.as_str()), None, None),
    };
    let stmt = c
        .prepare_cached(
            "UPDATE webhook_deliveries SET status = $2, last_status = $3, last_error = $4,
               next_attempt_at = coalesce($5, next_attempt_at), delivered_at = $6, lease_owner = NULL, lease_until = NULL
             WHERE id = $1",
        )
        .await?;
    c.execute(&stmt, &[&id, &status, &last_status.map(i32::from), &error, &next, &delivered]).await?;
    Ok(())
}
