//! The embedded store: one SQLite file in WAL mode, a pool of readers and a single group-commit
//! writer. Acknowledged writes are durable (`synchronous=FULL` unless configured otherwise).

mod catalog;
mod collections;
mod moves;
mod orders;
mod outbox;
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
use super::dump::ShopDump;
use super::{
    Catalog, CollectionCount, Collections, EventPage, Events, Gathered, Inventory, Moves, NodeReport, Orders, Shard, ShardReport,
    Shops, StoreError, StoreReport, StoreResult, Upserted, Webhooks,
};
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::collections::UserDoc;
use crate::config::{SqliteConfig, Synchronous};
use crate::ingest::FeedOp;
use crate::inventory::Stock;
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, Order, OrderQuery, PlaceOrder, PlaceOutcome};
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};
use crate::store::outbox::{DeadLetter, Delivery, Outbox, Webhook};
use crate::store::transactions::webhooks::WebhookRows;
use crate::store::transactions::{self, at_once};

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
    pub fn open(path: &Path, cfg: &SqliteConfig, name: &str) -> anyhow::Result<SqliteStore> {
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
        let (writer, thread) = Writer::start(conn, cfg.queue_len.max(1), cfg.max_batch.max(1), cfg.wal_autocheckpoint_pages);
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
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let t0 = std::time::Instant::now();
        let result = match writer {
            Some(w) => w.write(op).await,
            None => Err(StoreError::Unavailable("the store is shutting down".into())),
        };
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
                    address: self.path.display().to_string(),
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

#[async_trait]
impl Shops for SqliteStore {
    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop> {
        self.write(move |c| at_once(transactions::shops::create(&Tx(c), &shop))).await
    }

    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
        let id = id.clone();
        self.read(move |c| shops::get(c, &id)).await
    }

    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>> {
        self.read(shops::live_ids).await
    }
}

#[async_trait]
impl Catalog for SqliteStore {
    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)> {
        let shop = shop.clone();
        self.write(move |c| at_once(transactions::catalog::upsert_product(&Tx(c), &shop, &input, now))).await
    }

    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.read(move |c| catalog::get_product(c, &shop, &sku)).await
    }

    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>> {
        let shop = shop.clone();
        self.read(move |c| catalog::list_products(c, &shop, &query)).await
    }

    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.write(move |c| at_once(transactions::catalog::delete_product(&Tx(c), &shop, &sku))).await
    }
}

#[async_trait]
impl Inventory for SqliteStore {
    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.write(move |c| at_once(transactions::catalog::set_stock(&Tx(c), &shop, &sku, on_hand, now))).await
    }

    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.write(move |c| at_once(transactions::catalog::adjust_stock(&Tx(c), &shop, &sku, delta, now))).await
    }

    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
        let (shop, sku) = (shop.clone(), sku.to_owned());
        self.read(move |c| catalog::get_stock(c, &shop, &sku)).await
    }

    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>> {
        let shop = shop.clone();
        self.write(move |c| at_once(transactions::catalog::apply_feed(&Tx(c), &shop, ops, now))).await
    }
}

#[async_trait]
impl Orders for SqliteStore {
    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome> {
        let shop = shop.clone();
        self.write(move |c| at_once(transactions::orders::place(&Tx(c), &shop, &order))).await
    }

    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        let (shop, key) = (shop.clone(), key.to_owned());
        self.read(move |c| orders::idempotency_record(c, &shop, &key)).await
    }

    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.read(move |c| orders::load(c, &shop, &id)).await
    }

    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>> {
        let shop = shop.clone();
        self.read(move |c| orders::list(c, &shop, &query)).await
    }

    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.write(move |c| at_once(transactions::orders::transition(&Tx(c), &shop, &id, action, now))).await
    }

    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        self.read(move |c| orders::expired(c, now, limit)).await
    }
}

#[async_trait]
impl Events for SqliteStore {
    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
        let (shop, after) = (shop.clone(), after.map(str::to_owned));
        self.read(move |c| outbox::events_after(c, &shop, after.as_deref(), limit)).await
    }

    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>> {
        let (shop, origin, position) = (shop.clone(), origin.to_owned(), position.to_owned());
        self.read(move |c| outbox::imported_position(c, &shop, &origin, &position)).await
    }
}

#[async_trait]
impl Webhooks for SqliteStore {
    async fn create_webhook(&self, shop: &ShopId, hook: Webhook) -> StoreResult<Webhook> {
        let shop = shop.clone();
        self.write(move |c| at_once(transactions::webhooks::create(&Tx(c), &shop, hook))).await
    }

    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>> {
        let shop = shop.clone();
        self.read(move |c| webhooks::list(c, shop.as_str())).await
    }

    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.write(move |c| at_once(transactions::webhooks::delete(&Tx(c), &shop, &id))).await
    }

    async fn webhook_deliveries(
        &self,
        shop: &ShopId,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let (shop, id, status) = (shop.clone(), id.to_owned(), status.map(str::to_owned));
        self.read(move |c| webhooks::deliveries(c, shop.as_str(), &id, status.as_deref(), limit)).await
    }

    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        let (shop, id) = (shop.clone(), id.to_owned());
        self.write(move |c| at_once(transactions::webhooks::replay(&Tx(c), &shop, &id, deliver_by, now))).await
    }

    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let shop = shop.clone();
        self.read(move |c| relay::dead_letters(c, shop.as_str(), limit)).await
    }

    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        let (shop, sink) = (shop.clone(), sink.map(str::to_owned));
        self.write(move |c| at_once(Tx(c).mark_for_replay(&shop, sink.as_deref()))).await
    }
}

#[async_trait]
impl Moves for SqliteStore {
    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>> {
        self.read(moves::directory).await
    }

    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        let (shop, shard) = (shop.clone(), shard.map(str::to_owned));
        self.write(move |c| moves::set_pin(c, &shop, shard.as_deref(), now)).await
    }

    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
        let (shop, moved_to) = (shop.clone(), moved_to.map(str::to_owned));
        self.write(move |c| at_once(transactions::moves::mark(&Tx(c), &shop, moved_to.as_deref()))).await
    }

    async fn export_shop(&self, shop: &ShopId) -> StoreResult<ShopDump> {
        let shop = shop.clone();
        // Through the writer: the export sees every write acknowledged before it.
        let mut dump = self.write(move |c| at_once(transactions::moves::export(&Tx(c), &shop))).await?;
        dump.origin = self.name.clone();
        Ok(dump)
    }

    async fn import_shop(&self, dump: ShopDump) -> StoreResult<()> {
        self.write(move |c| at_once(transactions::moves::import(&Tx(c), &dump))).await
    }
}

#[async_trait]
impl Collections for SqliteStore {
    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()> {
        let collection = collection.to_owned();
        self.write(move |c| at_once(transactions::collections::insert(&Tx(c), &collection, &docs))).await
    }

    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
        let (collection, name) = (collection.to_owned(), name.to_owned());
        self.read(move |c| collections::find(c, &collection, &name)).await
    }

    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>> {
        let collection = collection.to_owned();
        self.read(move |c| collections::list(c, &collection, limit)).await.map(Gathered::complete)
    }

    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>> {
        let collection = collection.to_owned();
        self.read(move |c| collections::count(c, &collection)).await.map(Gathered::complete)
    }

    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>> {
        let rows = self.read(collections::counts).await?;
        let shard = &self.name;
        Ok(Gathered::complete(
            rows.into_iter().map(|(collection, count)| CollectionCount { collection, shard: shard.clone(), count }).collect(),
        ))
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
