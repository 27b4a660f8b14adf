//! Outbox retention on PostgreSQL: one partition per UTC day, created ahead of time and dropped
//! whole once it is older than the retention and every sink has acknowledged all of it. Rows
//! that landed in the default partition (a day nobody created in time) are deleted in batches.

use chrono::{DateTime, Days, NaiveDate, Utc};
use deadpool_postgres::GenericClient;

use crate::store::StoreResult;

const PREFIX: &str = "outbox_";

fn partition_name(day: NaiveDate) -> String {
    format!("{PREFIX}{}", day.format("%Y%m%d"))
}

/// Creates the partitions of today and the next two days if missing. A day whose rows already
/// sit in the default partition cannot get its own; it stays in the default and is logged.
pub async fn ensure_ahead(c: &impl GenericClient, shard: &str, now: DateTime<Utc>) {
    for ahead in 0..3u64 {
        let Some(day) = now.date_naive().checked_add_days(Days::new(ahead)) else { continue };
        let Some(next) = day.succ_opt() else { continue };
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF outbox FOR VALUES FROM ('{}T00:00:00Z') TO ('{}T00:00:00Z')",
            partition_name(day),
            day,
            next
        );
        if let Err(e) = c.batch_execute(&sql).await {
            tracing::warn!(shard, %day, error = %e, "cannot create the outbox partition; its rows go to the default");
        }
    }
}

/// The lowest cursor over `sinks`, as (xid8 text, position); `None` when some sink has none yet.
async fn acknowledged_by_all(c: &impl GenericClient, sinks: &[String]) -> StoreResult<Option<(String, i64)>> {
    let rows = c.query("SELECT sink, cursor FROM relay_sinks WHERE sink = ANY($1)", &[&sinks]).await?;
    if rows.len() < sinks.len() {
        return Ok(None);
    }
    let mut low: Option<(u64, i64)> = None;
    for r in rows {
        let Some(cursor) = r.get::<_, Option<String>>(1) else { return Ok(None) };
        let Some((t, p)) = cursor.split_once('.') else { return Ok(None) };
        let (Ok(t), Ok(p)) = (t.parse::<u64>(), p.parse::<i64>()) else { return Ok(None) };
        low = Some(match low {
            Some(l) if l <= (t, p) => l,
            _ => (t, p),
        });
    }
    Ok(low.map(|(t, p)| (t.to_string(), p)))
}

pub async fn prune(
    c: &impl GenericClient,
    shard: &str,
    before: DateTime<Utc>,
    sinks: &[String],
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    ensure_ahead(c, shard, now).await;
    let Some((txid, pos)) = acknowledged_by_all(c, sinks).await? else { return Ok(0) };
    let parts = c
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'outbox' AND c.relname <> 'outbox_default' ORDER BY c.relname",
            &[],
        )
        .await?;
    let mut removed = 0u64;
    for r in parts {
        let name: String = r.get(0);
        let Some(day) = name.strip_prefix(PREFIX).and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok()) else { continue };
        let Some(end) = day.succ_opt().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()) else { continue };
        if end > before {
            break;
        }
        let sql = format!(
            "SELECT count(*), count(*) FILTER (WHERE (txid, position) > ($1::text::xid8, $2)) FROM {}",
            partition_name(day)
        );
        let counts = c.query_one(&sql, &[&txid, &pos]).await?;
        if counts.get::<_, i64>(1) > 0 {
            break;
        }
        c.batch_execute(&format!("DROP TABLE {}", partition_name(day))).await?;
        tracing::info!(shard, partition = %name, events = counts.get::<_, i64>(0), "dropped an expired outbox partition");
        removed += counts.get::<_, i64>(0) as u64;
    }
    loop {
        let n = c
            .execute(
                "DELETE FROM outbox_default WHERE ctid = ANY(ARRAY(SELECT ctid FROM outbox_default
                   WHERE created_at < $1 AND (txid, position) <= ($2::text::xid8, $3) LIMIT 1000))",
                &[&before, &txid, &pos],
            )
            .await?;
        removed += n;
        if n < 1000 {
            break;
        }
    }
    c.execute(
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'delivered' AND created_at < $1 LIMIT 5000)",
        &[&before],
    )
    .await?;
    c.execute(
        "DELETE FROM inbox WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM inbox WHERE processed_at < $1 LIMIT 5000)",
        &[&before],
    )
    .await?;
    Ok(removed)
}
