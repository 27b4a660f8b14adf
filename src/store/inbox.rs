//! The inbox: how a consumer applies an event's effect at most once although the relay
//! delivers at least once. The consumer records `(consumer, event id)` in the same transaction
//! as the effect; a redelivered event finds its row there and the effect is skipped.
//!
//! ```sql
//! CREATE TABLE inbox (consumer TEXT, event_id TEXT, processed_at TIMESTAMPTZ NOT NULL,
//!                     PRIMARY KEY (consumer, event_id));
//! BEGIN;
//!   INSERT INTO inbox VALUES ('crm', $event_id, now()) ON CONFLICT DO NOTHING;
//!   -- one row inserted: apply the effect; none: seen before, skip it
//! COMMIT;
//! ```
//!
//! vitrina's own consumers use the same table (the webhook fan-out is consumer `webhooks`).

/// On a SQLite connection, inside the caller's transaction.
pub mod sqlite {
    use chrono::{DateTime, Utc};
    use rusqlite::{params, Connection};

    use crate::store::StoreResult;

    /// True the first time `consumer` sees `event_id`; the row commits with the caller's effect.
    pub fn first_time(c: &Connection, consumer: &str, event_id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let n = c
            .prepare_cached("INSERT INTO inbox (consumer, event_id, processed_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
            .execute(params![consumer, event_id, crate::store::sqlite::ts(now)])?;
        Ok(n == 1)
    }

    /// Creates the inbox table in a database of the consumer's own (vitrina's stores have it).
    pub fn create_table(c: &Connection) -> rusqlite::Result<()> {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS inbox (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at TEXT NOT NULL,
               PRIMARY KEY (consumer, event_id)) WITHOUT ROWID",
        )
    }
}

/// On a PostgreSQL client or transaction.
pub mod postgres {
    use deadpool_postgres::GenericClient;

    use crate::store::StoreResult;

    /// True the first time `consumer` sees `event_id`; the row commits with the caller's effect.
    pub async fn first_time(c: &impl GenericClient, consumer: &str, event_id: &str) -> StoreResult<bool> {
        let stmt = c
            .prepare_cached("INSERT INTO inbox (consumer, event_id, processed_at) VALUES ($1, $2, now()) ON CONFLICT DO NOTHING")
            .await?;
        Ok(c.execute(&stmt, &[&consumer, &event_id]).await? == 1)
    }
}
