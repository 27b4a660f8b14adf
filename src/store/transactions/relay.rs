//! The relay's steps on a shard's outbox: a sink claims its next events under a lease, then
//! acknowledges them, buries one it gave up on, or (the webhook sink) fans them out into
//! deliveries. Each step checks the lease it was given, so a relay that lost its lease changes
//! nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::webhooks::WebhookRows;
use crate::store::outbox::{lease_end, Claimed, FanOut, OutboxEvent};
use crate::store::{StoreError, StoreResult};

/// A sink's row: where it is in the feed and who holds its lease.
pub struct SinkRow {
    pub cursor: Option<String>,
    pub head_attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub delivered: u64,
}

/// The rows the relay reads and writes.
#[allow(async_fn_in_trait)]
pub trait RelayRows {
    async fn sink_row(&self, sink: &str) -> StoreResult<Option<SinkRow>>;
    /// Adds the sink's row if it has none.
    async fn add_sink(&self, sink: &str, now: DateTime<Utc>) -> StoreResult<()>;
    /// The position of the feed's last event (`Outbox::head`).
    async fn feed_head(&self) -> StoreResult<Option<String>>;
    /// Moves the sink's cursor to `to` without an attempt or a delivery counted, unless another
    /// owner's lease is running.
    async fn pass_to(&self, sink: &str, owner: &str, to: &str, now: DateTime<Utc>) -> StoreResult<bool>;
    /// Events of every shop after `after`, in feed order.
    async fn events_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>>;
    /// Takes the sink's lease and counts an attempt, only if its row is still as `seen`; the
    /// attempts counted then.
    async fn take_lease(
        &self,
        sink: &str,
        owner: &str,
        seen: &SinkRow,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<u32>>;
    /// Moves the sink's cursor to `upto` and keeps its lease until `until`, counting a first
    /// attempt on what follows, if `owner` still holds it.
    #[allow(clippy::too_many_arguments)]
    async fn advance_holding(
        &self,
        sink: &str,
        owner: &str,
        upto: &str,
        count: u64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Moves the sink's cursor to `upto` and releases its lease, if `owner` still holds it.
    async fn advance(
        &self,
        sink: &str,
        owner: &str,
        upto: &str,
        count: u64,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Keeps an event the sink gave up on (again, if it was replayed and failed once more).
    async fn add_dead_letter(
        &self,
        sink: &str,
        event: &OutboxEvent,
        attempts: u32,
        error: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// The sink's row, added the first time the sink is seen.
async fn sink_row_or_add(rows: &impl RelayRows, sink: &str, now: DateTime<Utc>) -> StoreResult<SinkRow> {
    if let Some(row) = rows.sink_row(sink).await? {
        return Ok(row);
    }
    rows.add_sink(sink, now).await?;
    rows.sink_row(sink).await?.ok_or_else(|| StoreError::Backend("relay sink row vanished".into()))
}

/// Takes the lease on `sink`'s next events, unless another owner's lease is still running.
/// Optimistic: the row is read, then the lease taken only if the row is as it was read.
pub async fn claim(
    rows: &impl RelayRows,
    sink: &str,
    owner: &str,
    lease: Duration,
    limit: usize,
    now: DateTime<Utc>,
) -> StoreResult<Option<Claimed>> {
    let row = sink_row_or_add(rows, sink, now).await?;
    if row.lease_owner.as_deref().is_some_and(|o| o != owner) && row.lease_until.is_some_and(|t| t > now) {
        return Ok(None);
    }
    let events = rows.events_after(row.cursor.as_deref(), limit).await?;
    if events.is_empty() {
        return Ok(None);
    }
    let attempts = rows.take_lease(sink, owner, &row, lease_end(now, lease), now).await?;
    Ok(attempts.map(|attempts| Claimed { events, attempts }))
}

/// Reads the events after `after` and, when a whole batch was acknowledged, moves the cursor to
/// it, keeping the lease (`Outbox::ack_and_read`). The cursor move and the read do not depend on
/// each other, so a backend that can sends both at once.
#[allow(clippy::too_many_arguments)]
pub async fn ack_and_read(
    rows: &impl RelayRows,
    sink: &str,
    owner: &str,
    acked: Option<(&str, u64)>,
    after: &str,
    lease: Duration,
    limit: usize,
    now: DateTime<Utc>,
) -> StoreResult<Option<Vec<OutboxEvent>>> {
    let held = async {
        match acked {
            Some((upto, count)) => rows.advance_holding(sink, owner, upto, count, lease_end(now, lease), now).await,
            None => Ok(true),
        }
    };
    let (held, events) = futures::future::try_join(held, rows.events_after(Some(after), limit)).await?;
    Ok(held.then_some(events))
}

/// With no subscription on the shard the fan-out has nothing to queue, so its cursor moves to
/// the feed's head without the events being read: reading and fanning out every event for
/// nobody cost the relay a third of its rate. The head is read first; a subscription made
/// after that only wants events created after it (`webhooks::enqueue`), which lie past it.
pub async fn pass_by(rows: &(impl RelayRows + WebhookRows), sink: &str, owner: &str, now: DateTime<Utc>) -> StoreResult<FanOut> {
    let head = rows.feed_head().await?;
    if rows.any_webhooks().await? {
        return Ok(FanOut::Needed);
    }
    let Some(to) = &head else { return Ok(FanOut::Passed) };
    sink_row_or_add(rows, sink, now).await?;
    Ok(match rows.pass_to(sink, owner, to, now).await? {
        true => FanOut::Passed,
        false => FanOut::Held,
    })
}

/// Gives up on `event`: the cursor moves past it and it is kept as a dead letter.
pub async fn bury(
    rows: &impl RelayRows,
    sink: &str,
    owner: &str,
    event: &OutboxEvent,
    error: &str,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let attempts = rows.sink_row(sink).await?.map_or(0, |r| r.head_attempts);
    if !rows.advance(sink, owner, &event.position, 0, Some(error), now).await? {
        return Ok(false);
    }
    rows.add_dead_letter(sink, event, attempts, error, now).await?;
    Ok(true)
}

/// The webhook sink's step: its cursor moves past `events` and their deliveries are queued, in
/// one transaction, so each event is fanned out exactly once.
pub async fn fan_out(
    rows: &(impl RelayRows + WebhookRows),
    sink: &str,
    owner: &str,
    events: &[OutboxEvent],
    deliver_for: Duration,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let Some(last) = events.last() else { return Ok(true) };
    if !rows.advance(sink, owner, &last.position, events.len() as u64, None, now).await? {
        return Ok(false);
    }
    super::webhooks::enqueue(rows, events, lease_end(now, deliver_for), now).await?;
    Ok(true)
}
