//! A shop's webhook subscriptions and their deliveries: subscribing and unsubscribing, the
//! fan-out of events into deliveries, a delivery's outcome, and replays.

use chrono::{DateTime, Utc};

use super::Rows;
use crate::shops::ShopId;
use crate::store::outbox::{DeliveryOutcome, OutboxEvent, Webhook};
use crate::store::{StoreError, StoreResult};

/// What a delivery's row says after an attempt.
pub struct DeliveryUpdate<'a> {
    pub status: &'static str,
    pub last_status: Option<u16>,
    pub error: Option<&'a str>,
    /// When to try again; unchanged when `None`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The rows of subscriptions and deliveries.
#[allow(async_fn_in_trait)]
pub trait WebhookRows: Rows {
    async fn webhook_exists(&self, shop: &ShopId, id: &str) -> StoreResult<bool>;
    async fn insert_webhook(&self, hook: &Webhook) -> StoreResult<()>;
    /// Removes a subscription and its delivery log.
    async fn delete_webhook_rows(&self, id: &str) -> StoreResult<()>;
    async fn list_webhooks(&self, shop: &str) -> StoreResult<Vec<Webhook>>;
    /// Whether any shop of the shard has a subscription.
    async fn any_webhooks(&self) -> StoreResult<bool>;
    /// Puts a subscription's dead deliveries back in line with fresh attempts; how many.
    async fn requeue_dead(&self, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64>;
    /// The inbox: true the first time `consumer` sees `event_id`, in this transaction.
    async fn first_time(&self, consumer: &str, event_id: &str, now: DateTime<Utc>) -> StoreResult<bool>;
    /// A delivery of `event` to `hook`, unless it has one.
    async fn add_delivery(
        &self,
        hook: &Webhook,
        event: &OutboxEvent,
        deliver_by: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn update_delivery(&self, id: i64, update: &DeliveryUpdate<'_>) -> StoreResult<()>;
    /// Marks a shop's dead letters (of one sink, or all) for the relay to publish again; how many.
    async fn mark_for_replay(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64>;
}

pub async fn create(rows: &impl WebhookRows, shop: &ShopId, hook: Webhook) -> StoreResult<Webhook> {
    rows.home(shop).await?;
    rows.insert_webhook(&hook).await?;
    Ok(hook)
}

/// Removes a subscription with its delivery log: nothing more is sent to it.
pub async fn delete(rows: &impl WebhookRows, shop: &ShopId, id: &str) -> StoreResult<()> {
    rows.home(shop).await?;
    exists(rows, shop, id).await?;
    rows.delete_webhook_rows(id).await
}

/// Puts a subscription's dead deliveries back in line until `deliver_by`; how many.
pub async fn replay(
    rows: &impl WebhookRows,
    shop: &ShopId,
    id: &str,
    deliver_by: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    exists(rows, shop, id).await?;
    rows.requeue_dead(id, deliver_by, now).await
}

async fn exists(rows: &impl WebhookRows, shop: &ShopId, id: &str) -> StoreResult<()> {
    match rows.webhook_exists(shop, id).await? {
        true => Ok(()),
        false => Err(StoreError::not_found("webhook", id)),
    }
}

/// A delivery per subscription that wants each event. A subscription receives what happened
/// from its creation on; the inbox makes the fan-out of one event happen once even if its
/// batch is claimed again.
pub async fn enqueue(
    rows: &impl WebhookRows,
    events: &[OutboxEvent],
    deliver_by: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let mut hooks: std::collections::HashMap<String, Vec<Webhook>> = Default::default();
    for e in events {
        let Some(shop) = &e.shop else { continue };
        if !hooks.contains_key(shop) {
            hooks.insert(shop.clone(), rows.list_webhooks(shop).await?);
        }
        let wanted: Vec<&Webhook> = hooks[shop].iter().filter(|w| w.wants(&e.kind) && e.created_at >= w.created_at).collect();
        if wanted.is_empty() || !rows.first_time("webhooks", &e.id, now).await? {
            continue;
        }
        for w in wanted {
            rows.add_delivery(w, e, deliver_by, now).await?;
        }
    }
    Ok(())
}

/// Records how an attempt went: delivered, to be retried at a time, or dead.
pub async fn finish(rows: &impl WebhookRows, id: i64, outcome: &DeliveryOutcome, now: DateTime<Utc>) -> StoreResult<()> {
    let update = match outcome {
        DeliveryOutcome::Delivered { status } => DeliveryUpdate {
            status: "delivered",
            last_status: Some(*status),
            error: None,
            next_attempt_at: None,
            delivered_at: Some(now),
        },
        DeliveryOutcome::Retry { status, error, at } => DeliveryUpdate {
            status: "pending",
            last_status: *status,
            error: Some(error),
            next_attempt_at: Some(*at),
            delivered_at: None,
        },
        DeliveryOutcome::Dead { status, error } => {
            DeliveryUpdate { status: "dead", last_status: *status, error: Some(error), next_attempt_at: None, delivered_at: None }
        }
    };
    rows.update_delivery(id, &update).await
}
