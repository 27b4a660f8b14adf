//! The outbox on PostgreSQL. Events are inserted by the business write's own transaction; the
//! per-aggregate sequence is an upsert that holds the aggregate's row lock until commit. The
//! feed orders by (transaction id, position) and serves only transactions older than every one
//! still running (`pg_snapshot_xmin`), so a transaction that commits late is never skipped.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tracing::Instrument;

use super::PgStore;
use crate::events::envelope::{envelope, NewEvent};
use crate::shops::ShopId;
use crate::store::dump::{EventRow, ShopDump, ShopEvents};
use crate::store::{EventPage, Events, StoreError, StoreResult};

pub async fn emit(c: &impl GenericClient, e: NewEvent, now: DateTime<Utc>) -> StoreResult<()> {
    let span = tracing::info_span!("outbox", otel.name = %format_args!("outbox {}", e.kind), event = e.kind);
    emit_traced(c, e, now).instrument(span).await
}

async fn emit_traced(c: &impl GenericClient, e: NewEvent, now: DateTime<Utc>) -> StoreResult<()> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO aggregate_sequences (aggregate, seq) VALUES ($1, 1)
             ON CONFLICT (aggregate) DO UPDATE SET seq = aggregate_sequences.seq + 1 RETURNING seq",
        )
        .await?;
    let seq: i64 = c.query_one(&stmt, &[&e.aggregate]).await?.get(0);
    let id = uuid::Uuid::now_v7().to_string();
    let tp = e.traceparent.clone().or_else(crate::telemetry::context::current_header);
    let env = envelope(&id, &e, seq, now, tp.as_deref());
    let text = serde_json::to_string(&env).map_err(|e| StoreError::Backend(e.to_string()))?;
    let stmt = c
        .prepare_cached(
            "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    c.execute(&stmt, &[&id, &e.shop, &e.aggregate, &e.kind, &seq, &text, &crate::store::micros(now)]).await?;
    Ok(())
}

/// Many events in two round trips (the seed's 1000 documents, a feed batch).
pub async fn emit_all(c: &impl GenericClient, events: Vec<NewEvent>, now: DateTime<Utc>) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let aggregates: Vec<&str> = events.iter().map(|e| e.aggregate.as_str()).collect();
    let stmt = c
        .prepare_cached(
            "INSERT INTO aggregate_sequences (aggregate, seq) SELECT a, count(*) FROM unnest($1::text[]) AS a GROUP BY a
             ON CONFLICT (aggregate) DO UPDATE SET seq = aggregate_sequences.seq + excluded.seq RETURNING aggregate, seq",
        )
        .await?;
    // The last sequence per aggregate; events of one aggregate in this batch count up to it.
    let mut last: std::collections::HashMap<String, i64> =
        c.query(&stmt, &[&aggregates]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut seqs = vec![0i64; events.len()];
    for (i, e) in events.iter().enumerate().rev() {
        let s = last.get_mut(&e.aggregate).ok_or_else(|| StoreError::Backend("sequence missing".into()))?;
        seqs[i] = *s;
        *s -= 1;
    }
    let tp = crate::telemetry::context::current_header();
    let (mut ids, mut shops, mut kinds, mut texts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (e, seq) in events.iter().zip(&seqs) {
        let id = uuid::Uuid::now_v7().to_string();
        let env = envelope(&id, e, *seq, now, e.traceparent.as_deref().or(tp.as_deref()));
        texts.push(serde_json::to_string(&env).map_err(|e| StoreError::Backend(e.to_string()))?);
        ids.push(id);
        shops.push(e.shop.clone());
        kinds.push(e.kind);
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at)
             SELECT id, shop, aggregate, type, sequence, envelope, $7
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[]) WITH ORDINALITY
               AS e (id, shop, aggregate, type, sequence, envelope, n) ORDER BY n",
        )
        .await?;
    c.execute(&stmt, &[&ids, &shops, &aggregates, &kinds, &seqs, &texts, &crate::store::micros(now)]).await?;
    Ok(())
}

/// Positions are `<transaction id>.<row position>`.
fn parse_position(p: &str) -> Option<(String, i64)> {
    let (txid, pos) = p.split_once('.')?;
    txid.parse::<u64>().ok()?;
    Some((txid.to_owned(), pos.parse().ok()?))
}

pub async fn events_after(c: &impl GenericClient, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
    let (txid, pos) = match after {
        None => ("0".to_owned(), 0),
        Some(p) => parse_position(p)
            .ok_or_else(|| StoreError::invalid("invalid_position", format!("{p:?} is not a position of this feed")))?,
    };
    let stmt = c
        .prepare_cached(
            "SELECT txid::text, position, envelope FROM outbox
             WHERE shop = $1 AND txid < pg_snapshot_xmin(pg_current_snapshot())
               AND (txid, position) > ($2::text::xid8, $3)
             ORDER BY outbox.txid, position LIMIT $4",
        )
        .await?;
    let rows = c.query(&stmt, &[&shop.as_str(), &txid, &pos, &(limit as i64)]).await?;
    let next =
        rows.last().map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, i64>(1))).or_else(|| after.map(str::to_owned));
    let events = rows
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(2)).map_err(|e| StoreError::Backend(format!("outbox envelope: {e}"))))
        .collect::<StoreResult<_>>()?;
    Ok(EventPage { events, next })
}

/// The shop's outbox rows in feed order and the last sequence of each of its aggregates. Run
/// while the shop is fenced: none of its transactions is in flight, so none is left out.
pub async fn export_events(c: &impl GenericClient, shop: &ShopId) -> StoreResult<ShopEvents> {
    let events = c
        .query(
            "SELECT txid::text, position, id, aggregate, type, sequence, envelope, created_at FROM outbox
             WHERE shop = $1 ORDER BY outbox.txid, position",
            &[&shop.as_str()],
        )
        .await?
        .iter()
        .map(|r| EventRow {
            position: format!("{}.{}", r.get::<_, String>(0), r.get::<_, i64>(1)),
            id: r.get(2),
            aggregate: r.get(3),
            kind: r.get(4),
            sequence: r.get(5),
            envelope: r.get(6),
            created_at: r.get(7),
        })
        .collect();
    // A shop's aggregates are the shop itself and the ids under `shop/`.
    let sequences = c
        .query(
            "SELECT aggregate, seq FROM aggregate_sequences
             WHERE aggregate = $1 OR starts_with(aggregate, $1 || '/') ORDER BY aggregate COLLATE \"C\"",
            &[&shop.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok((events, sequences))
}

/// Writes a moved shop's events as history (`origin` set: the relay skips them) and carries its
/// sequences on. An event already here, left from an earlier stay of the shop, is kept as is.
pub async fn import_events(c: &impl GenericClient, shop: &ShopId, d: &ShopDump) -> StoreResult<()> {
    let here: std::collections::HashSet<String> =
        c.query("SELECT id FROM outbox WHERE shop = $1", &[&shop.as_str()]).await?.iter().map(|r| r.get(0)).collect();
    let new: Vec<&EventRow> = d.events.iter().filter(|e| !here.contains(&e.id)).collect();
    let col = |f: fn(&EventRow) -> String| new.iter().map(|e| f(e)).collect::<Vec<String>>();
    let (ids, aggregates, kinds, envelopes, positions) = (
        col(|e| e.id.clone()),
        col(|e| e.aggregate.clone()),
        col(|e| e.kind.clone()),
        col(|e| e.envelope.clone()),
        col(|e| e.position.clone()),
    );
    let sequences: Vec<i64> = new.iter().map(|e| e.sequence).collect();
    let times: Vec<DateTime<Utc>> = new.iter().map(|e| e.created_at).collect();
    c.execute(
        "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at, origin, origin_position)
         SELECT id, $1, aggregate, type, sequence, envelope, created_at, $2, origin_position
         FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::timestamptz[], $9::text[])
           WITH ORDINALITY AS e (id, aggregate, type, sequence, envelope, created_at, origin_position, n) ORDER BY n",
        &[&shop.as_str(), &d.origin, &ids, &aggregates, &kinds, &sequences, &envelopes, &times, &positions],
    )
    .await?;
    let (names, seqs): (Vec<&str>, Vec<i64>) = d.sequences.iter().map(|(a, s)| (a.as_str(), *s)).unzip();
    c.execute(
        "INSERT INTO aggregate_sequences (aggregate, seq) SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (aggregate) DO UPDATE SET seq = greatest(aggregate_sequences.seq, excluded.seq)",
        &[&names, &seqs],
    )
    .await?;
    Ok(())
}

/// Where this shard's feed holds the event that shard `origin`'s feed issued `position` for.
pub async fn imported_position(
    c: &impl GenericClient,
    shop: &ShopId,
    origin: &str,
    position: &str,
) -> StoreResult<Option<String>> {
    let row = c
        .query_opt(
            "SELECT txid::text, position FROM outbox WHERE shop = $1 AND origin = $2 AND origin_position = $3",
            &[&shop.as_str(), &origin, &position],
        )
        .await?;
    Ok(row.map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, i64>(1))))
}

#[async_trait]
impl Events for PgStore {
    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
        events_after(&*self.client().await?, shop, after, limit).await
    }

    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>> {
        imported_position(&*self.client().await?, shop, origin, position).await
    }
}
