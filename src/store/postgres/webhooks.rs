//! Webhook subscriptions, their deliveries, and dead letters on PostgreSQL: the rows of
//! `store::transactions::webhooks`, the reads, and the dispatchers' claim (`SKIP LOCKED`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{bind, primary_or_replica, PgStore, Tx};
use crate::shops::ShopId;
use crate::store::filters::filters;
use crate::store::outbox::{DeadLetter, Delivery, OutboxEvent, Webhook};
use crate::store::transactions::webhooks::{DeliveryUpdate, WebhookRows};
use crate::store::{transactions, StoreError, StoreResult, Webhooks};

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

/// A moved shop's subscriptions arrive: those it had here from an earlier stay are updated,
/// those deleted meanwhile go with their delivery log.
pub async fn import(c: &impl GenericClient, shop: &str, hooks: &[Webhook]) -> StoreResult<()> {
    for old in list(c, shop).await? {
        if !hooks.iter().any(|h| h.id == old.id) {
            delete(c, &old.id).await?;
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

async fn exists(c: &impl GenericClient, shop: &str, id: &str) -> StoreResult<bool> {
    let stmt = c.prepare_cached("SELECT 1 FROM webhooks WHERE shop = $1 AND id = $2").await?;
    Ok(c.query_opt(&stmt, &[&shop, &id]).await?.is_some())
}

async fn delete(c: &impl GenericClient, id: &str) -> StoreResult<()> {
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
    if !exists(c, shop, id).await? {
        return Err(StoreError::not_found("webhook", id));
    }
    let f = filters(&[("d.status =", status)], 2, '$');
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.webhook = $1{} ORDER BY d.id DESC LIMIT ${}",
        f.sql,
        f.next(2)
    );
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query(&stmt, &bind(&id, &f.values, &(limit as i64))).await?.iter().map(delivery_row).collect())
}

pub async fn dead_letters(c: &impl GenericClient, shop: &str, limit: usize) -> StoreResult<Vec<DeadLetter>> {
    let stmt = c
        .prepare_cached(&format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE shop = $1 ORDER BY dead_at DESC LIMIT $2"))
        .await?;
    Ok(c.query(&stmt, &[&shop, &(limit as i64)]).await?.iter().map(dead_letter_row).collect())
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

impl<C: GenericClient + Sync> WebhookRows for Tx<'_, C> {
    async fn webhook_exists(&self, shop: &ShopId, id: &str) -> StoreResult<bool> {
        exists(self.0, shop.as_str(), id).await
    }

    async fn insert_webhook(&self, w: &Webhook) -> StoreResult<()> {
        let c = self.0;
        let events = serde_json::to_string(&w.events).map_err(|e| StoreError::Backend(e.to_string()))?;
        let stmt = c
            .prepare_cached("INSERT INTO webhooks (id, shop, url, events, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .await?;
        c.execute(&stmt, &[&w.id, &w.shop, &w.url, &events, &w.secret, &w.created_at]).await?;
        Ok(())
    }

    async fn delete_webhook_rows(&self, id: &str) -> StoreResult<()> {
        delete(self.0, id).await
    }

    async fn list_webhooks(&self, shop: &str) -> StoreResult<Vec<Webhook>> {
        list(self.0, shop).await
    }

    async fn any_webhooks(&self) -> StoreResult<bool> {
        let stmt = self.0.prepare_cached("SELECT EXISTS (SELECT 1 FROM webhooks)").await?;
        Ok(self.0.query_one(&stmt, &[]).await?.get(0))
    }

    async fn requeue_dead(&self, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2, deliver_by = $3,
                   lease_owner = NULL, lease_until = NULL
                 WHERE webhook = $1 AND status = 'dead'",
            )
            .await?;
        Ok(c.execute(&stmt, &[&id, &now, &deliver_by]).await?)
    }

    async fn first_time(&self, consumer: &str, event_id: &str, _now: DateTime<Utc>) -> StoreResult<bool> {
        crate::store::inbox::postgres::first_time(self.0, consumer, event_id).await
    }

    async fn add_delivery(&self, w: &Webhook, e: &OutboxEvent, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<()> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "INSERT INTO webhook_deliveries (webhook, shop, event_id, aggregate, type, envelope, next_attempt_at, deliver_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7) ON CONFLICT (webhook, event_id) DO NOTHING",
            )
            .await?;
        c.execute(&stmt, &[&w.id, &w.shop, &e.id, &e.aggregate, &e.kind, &e.envelope, &now, &deliver_by]).await?;
        Ok(())
    }

    async fn update_delivery(&self, id: i64, u: &DeliveryUpdate<'_>) -> StoreResult<()> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "UPDATE webhook_deliveries SET status = $2, last_status = $3, last_error = $4,
                   next_attempt_at = coalesce($5, next_attempt_at), delivered_at = $6, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1",
            )
            .await?;
        c.execute(&stmt, &[&id, &u.status, &u.last_status.map(i32::from), &u.error, &u.next_attempt_at, &u.delivered_at]).await?;
        Ok(())
    }

    async fn mark_for_replay(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        let c = self.0;
        let stmt =
            c.prepare_cached("UPDATE dead_letters SET replay = TRUE WHERE shop = $1 AND ($2::text IS NULL OR sink = $2)").await?;
        Ok(c.execute(&stmt, &[&shop.as_str(), &sink]).await?)
    }
}

#[async_trait]
impl Webhooks for PgStore {
    async fn create_webhook(&self, shop: &ShopId, hook: Webhook) -> StoreResult<Webhook> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let hook = transactions::webhooks::create(&Tx(&tx), shop, hook).await?;
                tx.commit().await?;
                Ok(hook)
            })
            .await
    }

    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>> {
        primary_or_replica!(self, |c| list(c, shop.as_str()))
    }

    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()> {
        self.replicas
            .after_write(shop.as_str(), async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                transactions::webhooks::delete(&Tx(&tx), shop, id).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn webhook_deliveries(
        &self,
        shop: &ShopId,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        deliveries(&*self.client().await?, shop.as_str(), id, status, limit).await
    }

    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        self.replicas
            .after_write(shop.as_str(), async {
                transactions::webhooks::replay(&Tx(&*self.client().await?), shop, id, deliver_by, now).await
            })
            .await
    }

    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        dead_letters(&*self.client().await?, shop.as_str(), limit).await
    }

    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        self.replicas.after_write(shop.as_str(), async { Tx(&*self.client().await?).mark_for_replay(shop, sink).await }).await
    }
}
