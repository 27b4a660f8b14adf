//! The relay's seam on SQLite. The process owns the data file, so leadership is a lock in this
//! process; positions are the outbox's integer keys, whose order is commit order because one
//! writer assigns them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{parse_ts, ts, webhooks, SqliteStore, Tx};
use crate::store::outbox::{
    lease_end, Claimed, DeadLetter, Delivery, DeliveryOutcome, FanOut, Leadership, Outbox, OutboxEvent, SinkState, Webhook,
};
use crate::store::transactions::relay::{self as steps, RelayRows, SinkRow};
use crate::store::transactions::{self, at_once};
use crate::store::{StoreError, StoreResult};

fn position(p: Option<&str>) -> StoreResult<i64> {
    match p {
        None => Ok(0),
        Some(p) => p.parse().map_err(|_| StoreError::Backend(format!("bad outbox position {p:?}"))),
    }
}

pub(super) fn read(c: &Connection, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
    let rows = c
        .prepare_cached(
            "SELECT position, id, shop, aggregate, type, sequence, envelope, created_at FROM outbox
             WHERE position > ?1 AND origin IS NULL ORDER BY position LIMIT ?2",
        )?
        .query_map(params![position(after)?, limit as i64], |r| {
            Ok(OutboxEvent {
                position: r.get::<_, i64>(0)?.to_string(),
                id: r.get(1)?,
                shop: r.get(2)?,
                aggregate: r.get(3)?,
                kind: r.get(4)?,
                sequence: r.get(5)?,
                envelope: r.get(6)?,
                created_at: parse_ts(&r.get::<_, String>(7)?)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

fn sink_row(c: &Connection, sink: &str) -> StoreResult<Option<SinkRow>> {
    Ok(c.prepare_cached(
        "SELECT cursor, head_attempts, lease_owner, lease_until, last_error, delivered FROM relay_sinks WHERE sink = ?1",
    )?
    .query_row([sink], |r| {
        Ok(SinkRow {
            cursor: r.get(0)?,
            head_attempts: r.get(1)?,
            lease_owner: r.get(2)?,
            lease_until: r.get::<_, Option<String>>(3)?.map(|s| parse_ts(&s)).transpose()?,
            last_error: r.get(4)?,
            delivered: r.get::<_, i64>(5)? as u64,
        })
    })
    .optional()?)
}

/// Moves `sink`'s cursor, if `owner` still holds its lease.
/// The feed's last event. Every relay worker and the bus look at it each poll (20 ms): a cached
/// statement.
fn head(c: &Connection) -> StoreResult<Option<String>> {
    Ok(c.prepare_cached("SELECT max(position) FROM outbox WHERE origin IS NULL")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))?
        .map(|p| p.to_string()))
}

fn advance(
    c: &Connection,
    sink: &str,
    owner: &str,
    upto: &str,
    count: u64,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let n = c
        .prepare_cached(
            "UPDATE relay_sinks SET cursor = ?3, head_attempts = 0, delivered = delivered + ?4, last_error = ?5,
               lease_owner = NULL, lease_until = NULL, updated_at = ?6
             WHERE sink = ?1 AND lease_owner = ?2",
        )?
        .execute(params![sink, owner, upto, count as i64, error, ts(now)])?;
    Ok(n == 1)
}

pub(super) fn dead_letter_row(r: &rusqlite::Row) -> rusqlite::Result<DeadLetter> {
    let envelope: String = r.get(5)?;
    Ok(DeadLetter {
        sink: r.get(0)?,
        event_id: r.get(1)?,
        position: r.get(2)?,
        shop: r.get(3)?,
        kind: r.get(4)?,
        event: serde_json::from_str(&envelope).unwrap_or(serde_json::Value::String(envelope)),
        attempts: r.get(6)?,
        error: r.get(7)?,
        dead_at: parse_ts(&r.get::<_, String>(8)?)?,
        replay: r.get(9)?,
    })
}

pub(super) const DEAD_LETTER_COLUMNS: &str = "sink, event_id, position, shop, type, envelope, attempts, error, dead_at, replay";

pub(super) fn dead_letters(c: &Connection, shop: &str, limit: usize) -> StoreResult<Vec<DeadLetter>> {
    let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE shop = ?1 ORDER BY dead_at DESC LIMIT ?2");
    Ok(c.prepare_cached(&sql)?.query_map(params![shop, limit as i64], dead_letter_row)?.collect::<rusqlite::Result<_>>()?)
}

fn sink_state(c: &Connection, sink: &str, now: DateTime<Utc>) -> StoreResult<SinkState> {
    let row = sink_row(c, sink)?;
    let cursor = row.as_ref().and_then(|r| r.cursor.clone());
    let (backlog, oldest): (i64, Option<String>) = c
        .prepare_cached("SELECT count(*), min(created_at) FROM outbox WHERE position > ?1 AND origin IS NULL")?
        .query_row([position(cursor.as_deref())?], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let dead: i64 = c.prepare_cached("SELECT count(*) FROM dead_letters WHERE sink = ?1")?.query_row([sink], |r| r.get(0))?;
    let oldest = oldest.map(|t| parse_ts(&t)).transpose()?;
    Ok(SinkState {
        sink: sink.to_owned(),
        cursor,
        backlog: backlog as u64,
        oldest_pending_ms: oldest.map(|t| (now - t).num_milliseconds().max(0) as u64),
        head_attempts: row.as_ref().map_or(0, |r| r.head_attempts),
        delivered: row.as_ref().map_or(0, |r| r.delivered),
        dead_letters: dead as u64,
        lease_owner: row.as_ref().and_then(|r| r.lease_owner.clone()),
        last_error: row.and_then(|r| r.last_error),
    })
}

/// Deletes acknowledged events older than `before` in batches small enough not to hold the
/// writer long; returns how many went in this batch.
fn prune_batch(c: &Connection, before: DateTime<Utc>, upto: i64, batch: usize) -> StoreResult<u64> {
    let n = c
        .prepare_cached(
            "DELETE FROM outbox WHERE position IN
               (SELECT position FROM outbox WHERE position <= ?1 AND created_at < ?2 ORDER BY position LIMIT ?3)",
        )?
        .execute(params![upto, ts(before), batch as i64])?;
    c.prepare_cached(
        "DELETE FROM webhook_deliveries WHERE id IN
           (SELECT id FROM webhook_deliveries WHERE status = 'delivered' AND created_at < ?1 LIMIT ?2)",
    )?
    .execute(params![ts(before), batch as i64])?;
    c.prepare_cached(
        "DELETE FROM inbox WHERE (consumer, event_id) IN
           (SELECT consumer, event_id FROM inbox WHERE processed_at < ?1 LIMIT ?2)",
    )?
    .execute(params![ts(before), batch as i64])?;
    Ok(n as u64)
}

impl RelayRows for Tx<'_> {
    async fn feed_head(&self) -> StoreResult<Option<String>> {
        head(self.0)
    }

    async fn pass_to(&self, sink: &str, owner: &str, to: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let n = self
            .0
            .prepare_cached(
                "UPDATE relay_sinks SET cursor = ?3, head_attempts = 0, last_error = NULL, updated_at = ?4
                 WHERE sink = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until <= ?4)",
            )?
            .execute(params![sink, owner, to, ts(now)])?;
        Ok(n == 1)
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
        let n = self
            .0
            .prepare_cached(
                "UPDATE relay_sinks SET cursor = ?3, head_attempts = 1, delivered = delivered + ?4, last_error = NULL,
                   lease_until = ?5, updated_at = ?6
                 WHERE sink = ?1 AND lease_owner = ?2",
            )?
            .execute(params![sink, owner, upto, count as i64, ts(until), ts(now)])?;
        Ok(n == 1)
    }

    async fn sink_row(&self, sink: &str) -> StoreResult<Option<SinkRow>> {
        sink_row(self.0, sink)
    }

    async fn add_sink(&self, sink: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.0.execute(
            "INSERT INTO relay_sinks (sink, updated_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![sink, ts(now)],
        )?;
        Ok(())
    }

    async fn events_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        read(self.0, after, limit)
    }

    async fn take_lease(
        &self,
        sink: &str,
        owner: &str,
        seen: &SinkRow,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<u32>> {
        Ok(self
            .0
            .prepare_cached(
                "UPDATE relay_sinks SET head_attempts = head_attempts + 1, lease_owner = ?2, lease_until = ?3, updated_at = ?4
                 WHERE sink = ?1 AND cursor IS ?5 AND head_attempts = ?6
                   AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until <= ?4)
                 RETURNING head_attempts",
            )?
            .query_row(params![sink, owner, ts(until), ts(now), seen.cursor, seen.head_attempts], |r| r.get(0))
            .optional()?)
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
        advance(self.0, sink, owner, upto, count, error, now)
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
            .prepare_cached(
                "INSERT INTO dead_letters (sink, event_id, position, shop, type, envelope, attempts, error, dead_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (sink, event_id) DO UPDATE SET attempts = excluded.attempts, error = excluded.error,
                   dead_at = excluded.dead_at, replay = FALSE",
            )?
            .execute(params![sink, e.id, e.position, e.shop, e.kind, e.envelope, attempts, error, ts(now)])?;
        Ok(())
    }
}

/// Leadership within this process: the data-dir lock already keeps other processes out.
struct LocalLeader(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

#[async_trait]
impl Leadership for LocalLeader {
    async fn holds(&mut self) -> bool {
        true
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    fn shard(&self) -> &str {
        &self.name
    }

    async fn lead(&self) -> StoreResult<Option<Box<dyn Leadership>>> {
        Ok(Arc::clone(&self.relay_leader).try_lock_owned().ok().map(|g| Box::new(LocalLeader(g)) as Box<dyn Leadership>))
    }

    async fn head(&self) -> StoreResult<Option<String>> {
        self.read(head).await
    }

    async fn pass_by(&self, sink: &str, owner: &str, now: DateTime<Utc>) -> StoreResult<FanOut> {
        let (sink, owner) = (sink.to_owned(), owner.to_owned());
        self.write(move |c| at_once(steps::pass_by(&Tx(c), &sink, &owner, now))).await
    }

    async fn read(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        let after = after.map(str::to_owned);
        SqliteStore::read(self, move |c| read(c, after.as_deref(), limit)).await
    }

    async fn claim(
        &self,
        sink: &str,
        owner: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Claimed>> {
        let (sink, owner) = (sink.to_owned(), owner.to_owned());
        self.write(move |c| at_once(steps::claim(&Tx(c), &sink, &owner, lease, limit, now))).await
    }

    async fn ack(&self, sink: &str, owner: &str, upto: &str, count: u64, now: DateTime<Utc>) -> StoreResult<bool> {
        let (sink, owner, upto) = (sink.to_owned(), owner.to_owned(), upto.to_owned());
        self.write(move |c| advance(c, &sink, &owner, &upto, count, None, now)).await
    }

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
        let (sink, owner, after) = (sink.to_owned(), owner.to_owned(), after.to_owned());
        let acked = acked.map(|(upto, count)| (upto.to_owned(), count));
        self.write(move |c| {
            let acked = acked.as_ref().map(|(upto, count)| (upto.as_str(), *count));
            at_once(steps::ack_and_read(&Tx(c), &sink, &owner, acked, &after, lease, limit, now))
        })
        .await
    }

    async fn fail(&self, sink: &str, owner: &str, error: &str, counts: bool, now: DateTime<Utc>) -> StoreResult<()> {
        let (sink, owner, error) = (sink.to_owned(), owner.to_owned(), error.to_owned());
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE relay_sinks SET last_error = ?3, lease_owner = NULL, lease_until = NULL, updated_at = ?4,
                   head_attempts = head_attempts - ?5
                 WHERE sink = ?1 AND lease_owner = ?2",
            )?
            .execute(params![sink, owner, error, ts(now), i64::from(!counts)])?;
            Ok(())
        })
        .await
    }

    async fn bury(&self, sink: &str, owner: &str, event: &OutboxEvent, error: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let (sink, owner, event, error) = (sink.to_owned(), owner.to_owned(), event.clone(), error.to_owned());
        self.write(move |c| at_once(steps::bury(&Tx(c), &sink, &owner, &event, &error, now))).await
    }

    async fn replays(&self, sink: &str, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let sink = sink.to_owned();
        SqliteStore::read(self, move |c| {
            let sql =
                format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE sink = ?1 AND replay ORDER BY position LIMIT ?2");
            Ok(c.prepare_cached(&sql)?
                .query_map(params![sink, limit as i64], dead_letter_row)?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn replayed(&self, sink: &str, event_id: &str, result: Result<(), String>, now: DateTime<Utc>) -> StoreResult<()> {
        let (sink, event_id) = (sink.to_owned(), event_id.to_owned());
        self.write(move |c| {
            match result {
                Ok(()) => c.execute("DELETE FROM dead_letters WHERE sink = ?1 AND event_id = ?2", params![sink, event_id])?,
                Err(e) => c.execute(
                    "UPDATE dead_letters SET replay = FALSE, attempts = attempts + 1, error = ?3, dead_at = ?4
                     WHERE sink = ?1 AND event_id = ?2",
                    params![sink, event_id, e, ts(now)],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn sink_states(&self, sinks: &[String], now: DateTime<Utc>) -> StoreResult<Vec<SinkState>> {
        let sinks = sinks.to_vec();
        SqliteStore::read(self, move |c| sinks.iter().map(|s| sink_state(c, s, now)).collect()).await
    }

    async fn fan_out(
        &self,
        sink: &str,
        owner: &str,
        events: &[OutboxEvent],
        deliver_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (sink, owner, events) = (sink.to_owned(), owner.to_owned(), events.to_vec());
        self.write(move |c| at_once(steps::fan_out(&Tx(c), &sink, &owner, &events, deliver_for, now))).await
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<(Delivery, Webhook)>> {
        // Most of the time nothing is due: find that out on a reader, not the writer.
        let due = SqliteStore::read(self, move |c| {
            Ok(c.prepare_cached("SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?1 LIMIT 1")?
                .exists([ts(now)])?)
        })
        .await?;
        if !due {
            return Ok(Vec::new());
        }
        let owner = owner.to_owned();
        self.write(move |c| webhooks::claim(c, &owner, lease_end(now, lease), limit, now)).await
    }

    async fn finish_delivery(&self, id: i64, outcome: DeliveryOutcome, now: DateTime<Utc>) -> StoreResult<()> {
        self.write(move |c| at_once(transactions::webhooks::finish(&Tx(c), id, &outcome, now))).await
    }

    async fn prune(&self, before: DateTime<Utc>, sinks: &[String], _now: DateTime<Utc>) -> StoreResult<u64> {
        let cursors = {
            let sinks = sinks.to_vec();
            SqliteStore::read(self, move |c| {
                sinks.iter().map(|s| Ok(sink_row(c, s)?.and_then(|r| r.cursor))).collect::<StoreResult<Vec<_>>>()
            })
            .await?
        };
        // Only what every sink has acknowledged may go; a sink that never ran holds everything.
        let mut upto = i64::MAX;
        for cursor in cursors {
            upto = upto.min(match cursor {
                Some(c) => position(Some(&c))?,
                None => return Ok(0),
            });
        }
        let mut total = 0;
        loop {
            let n = self.write(move |c| prune_batch(c, before, upto, 500)).await?;
            total += n;
            if n < 500 {
                return Ok(total);
            }
        }
    }
}
