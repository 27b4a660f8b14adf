//! The outbox on SQLite: events written by the same transaction as the business write, with a
//! per-aggregate sequence taken under the writer's lock. One writer means commit order is
//! insertion order, so the feed's position never skips a late commit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{parse_ts, ts, SqliteStore};
use crate::events::envelope::{envelope, NewEvent};
use crate::shops::ShopId;
use crate::store::dump::{EventRow, ShopDump, ShopEvents};
use crate::store::{EventPage, Events, StoreError, StoreResult};

pub fn emit(c: &Connection, e: NewEvent, now: DateTime<Utc>) -> StoreResult<()> {
    let _span = tracing::info_span!("outbox", otel.name = %format_args!("outbox {}", e.kind), event = e.kind).entered();
    let seq: i64 = c
        .prepare_cached(
            "INSERT INTO aggregate_sequences (aggregate, seq) VALUES (?1, 1)
             ON CONFLICT (aggregate) DO UPDATE SET seq = seq + 1 RETURNING seq",
        )?
        .query_row([&e.aggregate], |r| r.get(0))?;
    let id = uuid::Uuid::now_v7().to_string();
    let tp = e.traceparent.clone().or_else(crate::telemetry::context::current_header);
    let env = envelope(&id, &e, seq, now, tp.as_deref());
    let text = serde_json::to_string(&env).map_err(|e| StoreError::Backend(e.to_string()))?;
    c.prepare_cached(
        "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![id, e.shop, e.aggregate, e.kind, seq, text, ts(now)])?;
    Ok(())
}

pub fn events_after(c: &Connection, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
    let after_pos: i64 = match after {
        None => 0,
        Some(p) => {
            p.parse().map_err(|_| StoreError::invalid("invalid_position", format!("{p:?} is not a position of this feed")))?
        }
    };
    let rows: Vec<(i64, String)> = c
        .prepare_cached("SELECT position, envelope FROM outbox WHERE shop = ?1 AND position > ?2 ORDER BY position LIMIT ?3")?
        .query_map(params![shop.as_str(), after_pos, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let next = rows.last().map(|(p, _)| p.to_string()).or_else(|| after.map(str::to_owned));
    let events = rows
        .into_iter()
        .map(|(_, text)| serde_json::from_str(&text).map_err(|e| StoreError::Backend(format!("outbox envelope: {e}"))))
        .collect::<StoreResult<_>>()?;
    Ok(EventPage { events, next })
}

/// The shop's outbox rows in feed order and the last sequence of each of its aggregates.
pub fn export_events(c: &Connection, shop: &ShopId) -> StoreResult<ShopEvents> {
    let events = c
        .prepare_cached(
            "SELECT position, id, aggregate, type, sequence, envelope, created_at FROM outbox WHERE shop = ?1 ORDER BY position",
        )?
        .query_map([shop.as_str()], |r| {
            Ok(EventRow {
                position: r.get::<_, i64>(0)?.to_string(),
                id: r.get(1)?,
                aggregate: r.get(2)?,
                kind: r.get(3)?,
                sequence: r.get(4)?,
                envelope: r.get(5)?,
                created_at: parse_ts(&r.get::<_, String>(6)?)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    // A shop's aggregates are the shop itself and the ids under `shop/`; '0' sorts right after '/'.
    let s = shop.as_str();
    let sequences = c
        .prepare_cached(
            "SELECT aggregate, seq FROM aggregate_sequences
             WHERE aggregate = ?1 OR (aggregate >= ?1 || '/' AND aggregate < ?1 || '0') ORDER BY aggregate",
        )?
        .query_map([s], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((events, sequences))
}

/// Writes a moved shop's events as history (`origin` set: the relay skips them) and carries its
/// sequences on. An event already here, left from an earlier stay of the shop, is kept as is.
pub fn import_events(c: &Connection, shop: &ShopId, d: &ShopDump) -> StoreResult<()> {
    for e in &d.events {
        c.prepare_cached(
            "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at, origin, origin_position)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            e.id,
            shop.as_str(),
            e.aggregate,
            e.kind,
            e.sequence,
            e.envelope,
            ts(e.created_at),
            d.origin,
            e.position
        ])?;
    }
    for (aggregate, seq) in &d.sequences {
        c.prepare_cached(
            "INSERT INTO aggregate_sequences (aggregate, seq) VALUES (?1, ?2)
             ON CONFLICT (aggregate) DO UPDATE SET seq = max(seq, excluded.seq)",
        )?
        .execute(params![aggregate, seq])?;
    }
    Ok(())
}

/// Where this shard's feed holds the event that shard `origin`'s feed issued `position` for.
pub fn imported_position(c: &Connection, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>> {
    Ok(c.prepare_cached("SELECT position FROM outbox WHERE shop = ?1 AND origin = ?2 AND origin_position = ?3")?
        .query_row(params![shop.as_str(), origin, position], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|p| p.to_string()))
}

#[async_trait]
impl Events for SqliteStore {
    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
        let (shop, after) = (shop.clone(), after.map(str::to_owned));
        self.read(move |c| events_after(c, &shop, after.as_deref(), limit)).await
    }

    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>> {
        let (shop, origin, position) = (shop.clone(), origin.to_owned(), position.to_owned());
        self.read(move |c| imported_position(c, &shop, &origin, &position)).await
    }
}
