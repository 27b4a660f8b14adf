//! The relay's seam on PostgreSQL. Leadership is a session advisory lock held on a connection
//! taken out of the pool: when the leader dies its session ends and the lock is free. Positions
//! are `<xid8>.<position>` and the feed reads only below `pg_snapshot_xmin`, so an event whose
//! transaction commits late is read after it commits, never skipped.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::webhooks::{self, dead_letter_row, DEAD_LETTER_COLUMNS};
use super::{PgStore, Tx};
use crate::store::outbox::{
    lease_end, Claimed, DeadLetter, Delivery, DeliveryOutcome, FanOut, Leadership, Outbox, OutboxEvent, SinkState, Webhook,
};
use crate::store::transactions::relay::{self as steps, RelayRows, SinkRow};
use crate::store::{StoreError, StoreResult};

/// `(xid8 as text, position)`; the start of the feed when `None`.
fn position(p: Option<&str>) -> StoreResult<(String, i64)> {
    let Some(p) = p else { return Ok(("0".into(), 0)) };
    let bad = || StoreError::Backend(format!("bad outbox position {p:?}"));
    let (txid, pos) = p.split_once('.').ok_or_else(bad)?;
    txid.parse::<u64>().map_err(|_| bad())?;
    Ok((txid.to_owned(), pos.parse().map_err(|_| bad())?))
}

fn event_row(r: &Row) -> OutboxEvent {
    OutboxEvent {
        position: format!("{}.{}", r.get::<_, String>(0), r.get::<_, i64>(1)),
        id: r.get(2),
        shop: r.get(3),
        aggregate: r.get(4),
        kind: r.get(5),
        sequence: r.get(6),
        envelope: r.get(7),
        created_at: r.get(8),
    }
}

/// Events of every shop after `after`, in feed order, leaving out those a shop brought along
/// when it moved here (its old shard published them). Those are skipped after the read, not
/// in it: without statistics (a fresh day's partition) `origin IS NULL` is estimated to keep
/// one row in 200, and the planner then sorted every row after the cursor, envelopes and all,
/// for each batch, instead of walking the (txid, position) index to the limit.
async fn read(c: &impl GenericClient, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
    let stmt = c
        .prepare_cached(
            "SELECT txid::text, position, id, shop, aggregate, type, sequence, envelope, created_at, origin IS NOT NULL
             FROM outbox
             WHERE txid < pg_snapshot_xmin(pg_current_snapshot()) AND (txid, position) > ($1::text::xid8, $2)
             ORDER BY outbox.txid, position LIMIT $3",
        )
        .await?;
    let mut after = after.map(str::to_owned);
    loop {
        let (txid, pos) = position(after.as_deref())?;
        let rows = c.query(&stmt, &[&txid, &pos, &(limit.max(1) as i64)]).await?;
        let Some(last) = rows.last() else { return Ok(Vec::new()) };
        let events: Vec<OutboxEvent> = rows.iter().filter(|r| !r.get::<_, bool>(9)).map(event_row).collect();
        if !events.is_empty() {
            return Ok(events);
        }
        // Only moved-in events: read on past them rather than answer "nothing new".
        after = Some(event_row(last).position);
    }
}

/// The feed's last event, below every running transaction.
async fn head(c: &impl GenericClient) -> StoreResult<Option<String>> {
    let stmt = c
        .prepare_cached(
            "SELECT txid::text, position FROM outbox
             WHERE txid < pg_snapshot_xmin(pg_current_snapshot()) AND origin IS NULL
             ORDER BY outbox.txid DESC, position DESC LIMIT 1",
        )
        .await?;
    let row = c.query_opt(&stmt, &[]).await?;
    Ok(row.map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, i64>(1))))
}

async fn sink_row(c: &impl GenericClient, sink: &str) -> StoreResult<Option<SinkRow>> {
    let stmt = c
        .prepare_cached(
            "SELECT cursor, head_attempts, lease_owner, lease_until, last_error, delivered FROM relay_sinks WHERE sink = $1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&sink]).await?.map(|r| SinkRow {
        cursor: r.get(0),
        head_attempts: r.get::<_, i32>(1) as u32,
        lease_owner: r.get(2),
        lease_until: r.get(3),
        last_error: r.get(4),
        delivered: r.get::<_, i64>(5) as u64,
    }))
}

/// Moves `sink`'s cursor, if `owner` still holds its lease.
async fn advance(
    c: &impl GenericClient,
    sink: &str,
    owner: &str,
    upto: &str,
    count: u64,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let stmt = c
        .prepare_cached(
            "UPDATE relay_sinks SET cursor = $3, head_attempts = 0, delivered = delivered + $4, last_error = $5,
               lease_owner = NULL, lease_until = NULL, updated_at = $6
             WHERE sink = $1 AND lease_owner = $2",
        )
        .await?;
    Ok(c.execute(&stmt, &[&sink, &owner, &upto, &(count as i64), &error, &now]).await? == 1)
}

impl<C: GenericClient + Sync> RelayRows for Tx<'_, C> {
    async fn feed_head(&self) -> StoreResult<Option<String>> {
        head(self.0).await
    }

    async fn pass_to(&self, sink: &str, owner: &str, to: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let stmt = self
            .0
            .prepare_cached(
                "UPDATE relay_sinks SET cursor = $3, head_attempts = 0, last_error = NULL, updated_at = $4
                 WHERE sink = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until <= $4)",
            )
            .await?;
        Ok(self.0.execute(&stmt, &[&sink, &owner, &to, &now]).await? == 1)
    }

    async fn advance_holding(
        &self,
        sink: &str,
        owner: &str,
        upto: &str,
        count: u64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let stmt = self
            .0
            .prepare_cached(
                "UPDATE relay_sinks SET cursor = $3, head_attempts = 1, delivered = delivered + $4, last_error = NULL,
                   lease_until = $5, updated_at = $6
                 WHERE sink = $1 AND lease_owner = $2",
            )
            .await?;
        Ok(self.0.execute(&stmt, &[&sink, &owner, &upto, &(count as i64), &until, &now]).await? == 1)
    }

    async fn sink_row(&self, sink: &str) -> StoreResult<Option<SinkRow>> {
        sink_row(self.0, sink).await
    }

    async fn add_sink(&self, sink: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.0
            .execute("INSERT INTO relay_sinks (sink, updated_at) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&sink, &now])
            .await?;
        Ok(())
    }

    /// No transaction id is taken before this read, so the claim's own transaction never holds
    /// back the snapshot it reads below.
    async fn events_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        read(self.0, after, limit).await
    }

    async fn take_lease(
        &self,
        sink: &str,
        owner: &str,
        seen: &SinkRow,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<u32>> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "UPDATE relay_sinks SET head_attempts = head_attempts + 1, lease_owner = $2, lease_until = $3, updated_at = $4
                 WHERE sink = $1 AND cursor IS NOT DISTINCT FROM $5 AND head_attempts = $6
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until <= $4)
                 RETURNING head_attempts",
            )
            .await?;
        let row = c.query_opt(&stmt, &[&sink, &owner, &until, &now, &seen.cursor, &(seen.head_attempts as i32)]).await?;
        Ok(row.map(|r| r.get::<_, i32>(0) as u32))
    }

    async fn advance(
        &self,
        sink: &str,
        owner: &str,
        upto: &str,
        count: u64,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        advance(self.0, sink, owner, upto, count, error, now).await
    }

    async fn add_dead_letter(
        &self,
        sink: &str,
        e: &OutboxEvent,
        attempts: u32,
        error: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.0
            .execute(
                "INSERT INTO dead_letters (sink, event_id, position, shop, type, envelope, attempts, error, dead_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (sink, event_id) DO UPDATE SET attempts = excluded.attempts, error = excluded.error,
                   dead_at = excluded.dead_at, replay = FALSE",
                &[&sink, &e.id, &e.position, &e.shop, &e.kind, &e.envelope, &(attempts as i32), &error, &now],
            )
            .await?;
        Ok(())
    }
}

/// The session holding the shard's relay lock.
struct SessionLock(deadpool_postgres::ClientWrapper);

#[async_trait]
impl Leadership for SessionLock {
    async fn holds(&mut self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(2), self.0.simple_query("SELECT 1")).await, Ok(Ok(_)))
    }
}

#[async_trait]
impl Outbox for PgStore {
    fn shard(&self) -> &str {
        &self.name
    }

    async fn lead(&self) -> StoreResult<Option<Box<dyn Leadership>>> {
        // Out of the pool: the lock lives as long as this session, not a pooled connection's.
        let client = deadpool_postgres::Object::take(self.client().await?.into_client());
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock(hashtextextended('relay/' || $1::text, 0))", &[&self.name])
            .await?
            .get(0);
        Ok(got.then(|| Box::new(SessionLock(client)) as Box<dyn Leadership>))
    }

    async fn head(&self) -> StoreResult<Option<String>> {
        head(&*self.client().await?).await
    }

    /// Optimistic, outside a transaction, as `claim`.
    async fn pass_by(&self, sink: &str, owner: &str, now: DateTime<Utc>) -> StoreResult<FanOut> {
        steps::pass_by(&Tx(&*self.client().await?), sink, owner, now).await
    }

    async fn read(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        read(&*self.client().await?, after, limit).await
    }

    /// Optimistic, outside a transaction (`transactions::relay::claim`).
    async fn claim(
        &self,
        sink: &str,
        owner: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Claimed>> {
        steps::claim(&Tx(&*self.client().await?), sink, owner, lease, limit, now).await
    }

    async fn ack(&self, sink: &str, owner: &str, upto: &str, count: u64, now: DateTime<Utc>) -> StoreResult<bool> {
        advance(&*self.client().await?, sink, owner, upto, count, None, now).await
    }

    /// Outside a transaction: the cursor move commits by itself, and the read is sent with it on
    /// the same connection.
    async fn ack_and_read(
        &self,
        sink: &str,
        owner: &str,
        acked: Option<(&str, u64)>,
        after: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<OutboxEvent>>> {
        steps::ack_and_read(&Tx(&*self.client().await?), sink, owner, acked, after, lease, limit, now).await
    }

    async fn fail(&self, sink: &str, owner: &str, error: &str, counts: bool, now: DateTime<Utc>) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE relay_sinks SET last_error = $3, lease_owner = NULL, lease_until = NULL, updated_at = $4,
                   head_attempts = head_attempts - $5
                 WHERE sink = $1 AND lease_owner = $2",
                &[&sink, &owner, &error, &now, &i32::from(!counts)],
            )
            .await?;
        Ok(())
    }

    async fn bury(&self, sink: &str, owner: &str, e: &OutboxEvent, error: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if !steps::bury(&Tx(&tx), sink, owner, e, error, now).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn replays(&self, sink: &str, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE sink = $1 AND replay ORDER BY dead_at LIMIT $2");
        Ok(self.client().await?.query(&sql, &[&sink, &(limit as i64)]).await?.iter().map(dead_letter_row).collect())
    }

    async fn replayed(&self, sink: &str, event_id: &str, result: Result<(), String>, now: DateTime<Utc>) -> StoreResult<()> {
        let c = self.client().await?;
        match result {
            Ok(()) => c.execute("DELETE FROM dead_letters WHERE sink = $1 AND event_id = $2", &[&sink, &event_id]).await?,
            Err(e) => {
                c.execute(
                    "UPDATE dead_letters SET replay = FALSE, attempts = attempts + 1, error = $3, dead_at = $4
                     WHERE sink = $1 AND event_id = $2",
                    &[&sink, &event_id, &e, &now],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn sink_states(&self, sinks: &[String], now: DateTime<Utc>) -> StoreResult<Vec<SinkState>> {
        let c = self.client().await?;
        let mut out = Vec::new();
        for sink in sinks {
            let row = sink_row(&*c, sink).await?;
            let cursor = row.as_ref().and_then(|r| r.cursor.clone());
            let (txid, pos) = position(cursor.as_deref())?;
            let r = c
                .query_one(
                    "SELECT count(*), min(created_at) FROM outbox
                     WHERE (txid, position) > ($1::text::xid8, $2) AND origin IS NULL",
                    &[&txid, &pos],
                )
                .await?;
            let oldest: Option<DateTime<Utc>> = r.get(1);
            let dead: i64 = c.query_one("SELECT count(*) FROM dead_letters WHERE sink = $1", &[sink]).await?.get(0);
            out.push(SinkState {
                sink: sink.clone(),
                cursor,
                backlog: r.get::<_, i64>(0) as u64,
                oldest_pending_ms: oldest.map(|t| (now - t).num_milliseconds().max(0) as u64),
                head_attempts: row.as_ref().map_or(0, |r| r.head_attempts),
                delivered: row.as_ref().map_or(0, |r| r.delivered),
                dead_letters: dead as u64,
                lease_owner: row.as_ref().and_then(|r| r.lease_owner.clone()),
                last_error: row.and_then(|r| r.last_error),
            });
        }
        Ok(out)
    }

    async fn fan_out(
        &self,
        sink: &str,
        owner: &str,
        events: &[OutboxEvent],
        deliver_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if !steps::fan_out(&Tx(&tx), sink, owner, events, deliver_for, now).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<(Delivery, Webhook)>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let claimed = webhooks::claim(&tx, owner, lease_end(now, lease), limit, now).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn finish_delivery(&self, id: i64, outcome: DeliveryOutcome, now: DateTime<Utc>) -> StoreResult<()> {
        crate::store::transactions::webhooks::finish(&Tx(&*self.client().await?), id, &outcome, now).await
    }

    async fn prune(&self, before: DateTime<Utc>, sinks: &[String], now: DateTime<Utc>) -> StoreResult<u64> {
        super::partitions::prune(&*self.client().await?, &self.name, before, sinks, now).await
    }
}
