//! The embedded store: one SQLite file in WAL mode, a pool of readers and a single group-commit
//! writer. Acknowledged writes are durable (`synchronous=FULL` unless configured otherwise).

mod catalog;
mod collections;
mod moves;
mod orders;
mod outbox;
#[cfg(test)]
mod plans;
mod readers;
mod relay;
mod schema;
mod shops;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags};

use self::readers::Readers;
use self::writer::{Writer, WriterThread};
use super::{NodeReport, Shard, ShardReport, StoreError, StoreReport, StoreResult};
use crate::config::{SqliteConfig, Synchronous};
use crate::shops::ShopId;
use crate::store::outbox::Outbox;

/// The shard name of an unsharded embedded store.
pub const SINGLE_SHARD: &str = "local";

pub struct SqliteStore {
    name: String,
    path: PathBuf,
    /// Held while the store is open: one process per data file, because the single-writer
    /// guarantees (and in-flight idempotency keys) live in this process.
    lock: Mutex<Option<std::fs::File>>,
    synchronous: Synchronous,
    writer: Mutex<Option<Writer>>,
    writer_thread: Mutex<Option<WriterThread>>,
    readers: Readers,
    /// One relay leads this shard at a time within the process that owns the file.
    relay_leader: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    /// `max_group`: at most how many placements the writer decides together.
    pub fn open(path: &Path, cfg: &SqliteConfig, name: &str, max_group: usize) -> anyhow::Result<SqliteStore> {
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        if let Err(e) = lock.try_lock() {
            anyhow::bail!("{} is in use by another vitrina process ({e})", path.display());
        }
        let mut conn = Connection::open(path)?;
        configure(&conn, cfg, false)?;
        let applied = schema::migrate(&mut conn)?;
        if !applied.is_empty() {
            tracing::info!(?applied, latest = schema::latest(), "applied schema migrations");
        }
        let readers = (0..cfg.readers.max(1))
            .map(|_| {
                let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
                configure(&c, cfg, true)?;
                Ok(c)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let placements = writer::Placements { group: orders::place_group, max_group };
        let (writer, thread) =
            Writer::start(conn, cfg.queue_len.max(1), cfg.max_batch.max(1), cfg.wal_autocheckpoint_pages, placements);
        Ok(SqliteStore {
            name: name.to_owned(),
            path: path.to_owned(),
            lock: Mutex::new(Some(lock)),
            synchronous: cfg.synchronous,
            writer: Mutex::new(Some(writer)),
            writer_thread: Mutex::new(Some(thread)),
            readers: Readers::new(readers),
            relay_leader: Default::default(),
        })
    }

    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let writer = self.writer()?;
        let t0 = std::time::Instant::now();
        let result = writer.write(op).await;
        crate::store::observe(&self.name, "writer", t0, &result);
        result
    }

    fn writer(&self) -> StoreResult<Writer> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        writer.ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))
    }

    async fn place(
        &self,
        placement: crate::store::transactions::placement::Placement,
    ) -> StoreResult<crate::orders::PlaceOutcome> {
        let writer = self.writer()?;
        let t0 = std::time::Instant::now();
        let result = writer.place(placement).await;
        crate::store::observe(&self.name, "writer", t0, &result);
        result
    }

    async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let t0 = std::time::Instant::now();
        let result = self.readers.read(op).await;
        crate::store::observe(&self.name, "reader", t0, &result);
        result
    }

    fn shut(&self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.writer_thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.join();
        }
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.shut();
    }
}

fn configure(conn: &Connection, cfg: &SqliteConfig, read_only: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))?;
    // Room for every statement the store prepares (about 80): with rusqlite's 16, the statements of
    // the writer's other work (the relay's among them) pushed an order's out between two orders,
    // and the one writer parsed them again (parsing fell from 3.0 % to 1.2 % of its time at the
    // saturating rate, docs/benchmarks.md).
    conn.set_prepared_statement_cache_capacity(128);
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The writer thread's commit hook checkpoints instead, timing each (writer.rs).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    conn.pragma_update(None, "synchronous", cfg.synchronous.pragma())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    Ok(())
}

/// A transaction's rows on the writer's connection (`store::transactions`).
pub(crate) struct Tx<'c>(pub &'c Connection);

/// A list query's values: its key, the filters it was given (`store::filters`), its limit.
pub(crate) fn bind(key: &str, filters: &[&str], limit: i64) -> Vec<rusqlite::types::Value> {
    let mut values = vec![rusqlite::types::Value::Text(key.to_owned())];
    values.extend(filters.iter().map(|v| rusqlite::types::Value::Text((*v).to_owned())));
    values.push(rusqlite::types::Value::Integer(limit));
    values
}

impl crate::store::transactions::Rows for Tx<'_> {
    async fn home(&self, shop: &ShopId) -> StoreResult<()> {
        shops::check_home(self.0, shop)
    }

    async fn emit(&self, event: crate::events::envelope::NewEvent, now: DateTime<Utc>) -> StoreResult<()> {
        outbox::emit(self.0, event, now)
    }
}

/// Timestamps are stored as fixed-width RFC 3339 UTC text, so they sort as they compare.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
                StoreError::Unavailable(format!("database busy: {e}"))
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

#[async_trait]
impl Shard for SqliteStore {
    /// Lets the writer commit what is queued, then waits for its thread to exit.
    fn close(&self) {
        self.shut();
    }

    async fn report(&self) -> StoreReport {
        let shops = self
            .read(|c| Ok(c.query_row("SELECT count(*) FROM shops WHERE moved_to IS NULL", [], |r| r.get::<_, i64>(0))? as u64))
            .await
            .ok();
        StoreReport {
            kind: "sqlite".into(),
            durability: format!("synchronous={}, group commit", self.synchronous.pragma()),
            shards: vec![ShardReport {
                name: self.name.clone(),
                nodes: vec![NodeReport {
                    name: self.name.clone(),
                    role: "primary".into(),
                    // The file's name only: `GET /` is public, the data directory's path is not.
                    address: self.path.file_name().map_or_else(|| self.name.clone(), |f| f.to_string_lossy().into_owned()),
                    reachable: shops.is_some(),
                    replay_lag_ms: None,
                }],
                shops,
                breaker: None,
            }],
            ring: Vec::new(),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        let writer_alive = self.writer.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(Writer::is_alive);
        if !writer_alive {
            return Err(StoreError::Unavailable("the writer is not running".into()));
        }
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ())?)).await
    }

    fn outbox(self: Arc<Self>) -> Arc<dyn Outbox> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_connection_takes_the_configured_durability_and_leaves_checkpoints_to_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        let cfg = SqliteConfig { wal_autocheckpoint_pages: 250, ..SqliteConfig::default() };
        configure(&conn, &cfg, false).unwrap();
        let number = |name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0)).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(number("wal_autocheckpoint"), 0, "the writer thread's hook checkpoints at 250 pages");
        assert_eq!(number("synchronous"), 2, "FULL");
    }
}
