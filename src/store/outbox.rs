//! The relay's seam: what one shard's outbox offers the relay that publishes it. Each backend
//! store implements [`Outbox`] for itself; a sharded store hands out one per shard, because a
//! relay runs per shard (its position, its leader, its leases are all shard-local).
//!
//! Progress is kept per sink as a cursor over the feed order plus a lease: a relay *claims* the
//! events after its sink's cursor (taking the lease and counting an attempt on the first of
//! them), publishes, and moves the cursor only after the sink acknowledged. A relay that dies
//! holding a claim leaves a lease that expires; whoever leads next claims the same events again.
//! The feed order never skips a late commit (see each backend's `read`), so a cursor is safe.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;

/// One outbox row as the relay sees it.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Position in the shard's feed order, as the pull feed writes it.
    pub position: String,
    pub id: String,
    pub shop: Option<String>,
    pub aggregate: String,
    pub kind: String,
    pub sequence: i64,
    /// The CloudEvents JSON, exactly as stored.
    pub envelope: String,
    pub created_at: DateTime<Utc>,
}

/// Events a relay now holds a lease on, for one sink.
#[derive(Debug)]
pub struct Claimed {
    pub events: Vec<OutboxEvent>,
    /// Attempts at the first of `events`, this one included.
    pub attempts: u32,
}

/// What the webhook fan-out does next (`Outbox::pass_by`).
pub enum FanOut {
    /// The shard has subscriptions: claim and fan out as usual.
    Needed,
    /// No subscription: the cursor is at the feed's head, read before the subscriptions were
    /// looked at.
    Passed,
    /// Another relay's lease on the fan-out is running.
    Held,
}

/// A sink's progress on one shard, for metrics and `GET /`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SinkState {
    pub sink: String,
    /// The last position the sink acknowledged; null before the first.
    pub cursor: Option<String>,
    /// Events committed and not yet acknowledged by this sink.
    pub backlog: u64,
    /// Age of the oldest of them, in milliseconds.
    pub oldest_pending_ms: Option<u64>,
    /// Attempts made at the event the sink is stuck on (0 when it is not stuck).
    pub head_attempts: u32,
    pub delivered: u64,
    pub dead_letters: u64,
    pub lease_owner: Option<String>,
    pub last_error: Option<String>,
}

/// An event a sink gave up on after its attempts; kept whole so a replay needs nothing else.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub sink: String,
    pub event_id: String,
    pub position: String,
    pub shop: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempts: u32,
    pub error: String,
    pub dead_at: DateTime<Utc>,
    /// A replay was asked for and the relay has not taken it yet.
    pub replay: bool,
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// A shop's webhook subscription.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    #[serde(skip)]
    pub shop: String,
    pub url: String,
    /// Event types delivered (`vitrina.order.placed`, ...); `*` for all.
    pub events: Vec<String>,
    /// Key of the HMAC-SHA256 signature on every delivery.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

impl Webhook {
    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == kind)
    }
}

/// One event on its way to one webhook: the delivery log's row.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub webhook: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip)]
    pub aggregate: String,
    #[serde(skip)]
    pub envelope: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    /// After this the delivery stops being retried and goes dead.
    pub deliver_by: DateTime<Utc>,
    /// HTTP status of the last attempt; null when none answered.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// How an attempt at a delivery ended.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Delivered { status: u16 },
    Retry { status: Option<u16>, error: String, at: DateTime<Utc> },
    Dead { status: Option<u16>, error: String },
}

/// Leadership of a shard's relay; dropping it steps down.
#[async_trait]
pub trait Leadership: Send {
    /// Whether leadership still holds (on PostgreSQL: the session holding the lock is alive).
    async fn holds(&mut self) -> bool;
}

#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    fn shard(&self) -> &str;
    /// Becomes this shard's relay leader, or `None` while another relay leads.
    async fn lead(&self) -> StoreResult<Option<Box<dyn Leadership>>>;
    /// The newest position readable now; a tail that starts here sees only what comes next.
    async fn head(&self) -> StoreResult<Option<String>>;
    /// Events of every shop after `after`, in feed order.
    async fn read(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>>;

    /// Takes the lease on `sink`'s next events, unless another owner's lease is still running.
    /// Counts an attempt on the first event. `None`: nothing to do or someone else's lease.
    async fn claim(
        &self,
        sink: &str,
        owner: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Claimed>>;
    /// The sink acknowledged everything up to `upto` (`count` events); false if the lease was
    /// lost meanwhile, and then nothing changed.
    async fn ack(&self, sink: &str, owner: &str, upto: &str, count: u64, now: DateTime<Utc>) -> StoreResult<bool>;
    /// The events after `after` (which this owner's lease covers up to), read under its lease,
    /// and with them the acknowledgement of a whole earlier batch (up to `acked.0`, `acked.1`
    /// events) that renews the lease and counts a first attempt on what follows it. One step,
    /// so a relay that keeps up pays one round trip per batch, sent while its sink publishes.
    /// `None` if the lease was lost: then nothing changed.
    #[allow(clippy::too_many_arguments)]
    async fn ack_and_read(
        &self,
        sink: &str,
        owner: &str,
        acked: Option<(&str, u64)>,
        after: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<OutboxEvent>>>;
    /// The attempt failed; the lease is released so the next claim retries. An attempt that
    /// does not `count` (the sink was unreachable, the event itself was not refused) is not
    /// held against the event.
    async fn fail(&self, sink: &str, owner: &str, error: &str, counts: bool, now: DateTime<Utc>) -> StoreResult<()>;
    /// Gives up on `event` for `sink`: a dead letter, and the cursor moves past it.
    async fn bury(&self, sink: &str, owner: &str, event: &OutboxEvent, error: &str, now: DateTime<Utc>) -> StoreResult<bool>;
    /// Dead letters whose replay was asked for.
    async fn replays(&self, sink: &str, limit: usize) -> StoreResult<Vec<DeadLetter>>;
    /// A replay's result: delivered (the dead letter goes) or failed again (it stays, counted).
    async fn replayed(&self, sink: &str, event_id: &str, result: Result<(), String>, now: DateTime<Utc>) -> StoreResult<()>;
    async fn sink_states(&self, sinks: &[String], now: DateTime<Utc>) -> StoreResult<Vec<SinkState>>;

    /// The webhook fan-out's step when the shard may have no subscription
    /// (`transactions::relay::pass_by`).
    async fn pass_by(&self, sink: &str, owner: &str, now: DateTime<Utc>) -> StoreResult<FanOut>;
    /// The webhook sink's publish: a delivery for each subscription that wants each event,
    /// recorded with the cursor move in one transaction.
    async fn fan_out(
        &self,
        sink: &str,
        owner: &str,
        events: &[OutboxEvent],
        deliver_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Due deliveries, leased to `owner`; never one whose aggregate has an earlier delivery to
    /// the same webhook still pending, so each webhook sees an aggregate's events in order.
    async fn claim_deliveries(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<(Delivery, Webhook)>>;
    async fn finish_delivery(&self, id: i64, outcome: DeliveryOutcome, now: DateTime<Utc>) -> StoreResult<()>;

    /// Deletes events older than `before` that every sink in `sinks` has acknowledged; the
    /// number of events removed.
    async fn prune(&self, before: DateTime<Utc>, sinks: &[String], now: DateTime<Utc>) -> StoreResult<u64>;
}

/// When a lease taken at `now` runs out.
pub fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30))
}

/// Exponential backoff with jitter: a random wait between half and all of `base * 2^(attempt-1)`,
/// capped, so retries of many deliveries spread out instead of arriving together.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(cap).as_millis().max(1) as u64;
    Duration::from_millis(rand::random_range(ceiling / 2..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_with_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(60);
        for _ in 0..100 {
            let first = backoff(1, base, cap);
            assert!(first >= Duration::from_millis(50) && first <= base);
            let fifth = backoff(5, base, cap);
            assert!(fifth >= Duration::from_millis(800) && fifth <= Duration::from_millis(1600));
            assert!(backoff(40, base, cap) <= cap);
        }
    }
}
