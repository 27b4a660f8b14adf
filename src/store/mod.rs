//! The storage seam. Every backend (embedded SQLite, PostgreSQL) implements [`Store`]; nothing
//! above this module knows which one it talks to.
//!
//! Every call carries its routing key: a [`ShopId`] for shop data, the collection plus the
//! document's name for the seed API, so the sharded router implements `Store` itself by picking
//! a shard per call. Every business write is one store transaction that also writes its outbox
//! event.

pub mod dump;
pub mod guarded;
pub mod inbox;
pub mod moving;
pub mod outbox;
pub mod postgres;
pub mod sharded;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::collections::UserDoc;
use crate::ingest::FeedOp;
use crate::inventory::Stock;
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, Order, OrderQuery, PlaceOrder, PlaceOutcome};
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// A rule of the domain refused the write; nothing was changed.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// Some order lines cannot be served; nothing was reserved. `sold_out` names those of
    /// them with nothing available at all, for the sold-out memory.
    #[error("insufficient stock for {skus:?}")]
    InsufficientStock { skus: Vec<String>, sold_out: Vec<String> },
    /// Input that passed the edge checks but is inconsistent with stored data.
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    /// The backend cannot take the call now (shutting down, overloaded, unreachable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database cannot be reached or the connection broke: what opens a shard's breaker.
    #[error("store unreachable: {0}")]
    Unreachable(String),
    #[error("store failure: {0}")]
    Backend(String),
    /// The shop's data lives on another shard now; the router follows it.
    #[error("shop moved to shard {shard}")]
    Moved { shard: String },
}

/// `shops.moved_to` while a shop's rows are being copied: its writes wait for the move.
pub const MOVING: &str = "moving";

/// The mark a shop must carry for `next` to be set: a fence goes up on a live shop, and only a
/// fenced shop is released or sent on. Two moves of one shop can therefore never interleave.
pub fn mark_precondition(next: Option<&str>) -> Option<&'static str> {
    match next {
        Some(m) if m == MOVING => None,
        _ => Some(MOVING),
    }
}

/// Refusal when a shop's mark was not the one a step of a move expects.
pub fn mark_refused(shop: &ShopId, next: Option<&str>) -> StoreError {
    match next {
        Some(m) if m == MOVING => {
            StoreError::conflict("move_in_progress", format!("shop {shop} is being moved or has moved already"))
        }
        _ => StoreError::conflict("not_fenced", format!("shop {shop} is not fenced for a move")),
    }
}

/// Whether writes for a shop may proceed on this shard, from its `moved_to` mark.
pub fn home_check(shop: &ShopId, moved_to: Option<String>) -> StoreResult<()> {
    match moved_to {
        None => Ok(()),
        Some(m) if m == MOVING => Err(StoreError::Unavailable(format!("shop {shop} is being moved; retry shortly"))),
        Some(shard) => Err(StoreError::Moved { shard }),
    }
}

/// A domain rule's refusal, as the store reports it.
impl From<crate::refusal::Refusal> for StoreError {
    fn from(r: crate::refusal::Refusal) -> StoreError {
        match r {
            crate::refusal::Refusal::Conflict { code, detail } => StoreError::Conflict { code, detail },
            crate::refusal::Refusal::Invalid { code, detail } => StoreError::Invalid { code, detail },
        }
    }
}

/// The answer an idempotency record stored, read back; unreadable means the row is corrupt.
pub fn stored_answer(text: &str) -> StoreResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("stored response: {e}")))
}

impl StoreError {
    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        StoreError::NotFound { entity, id: id.into() }
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Conflict { code, detail: detail.into() }
    }
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Invalid { code, detail: detail.into() }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The store in force, swapped whole when the storage configuration is reloaded. Cheap to
/// clone; a caller keeps the store it got until it finishes, while new calls get the new one.
#[derive(Clone)]
pub struct Slot(std::sync::Arc<std::sync::RwLock<std::sync::Arc<dyn Store>>>);

impl Slot {
    pub fn new(store: std::sync::Arc<dyn Store>) -> Slot {
        Slot(std::sync::Arc::new(std::sync::RwLock::new(store)))
    }

    pub fn get(&self) -> std::sync::Arc<dyn Store> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `fresh` in force and returns the store it replaced.
    pub fn swap(&self, fresh: std::sync::Arc<dyn Store>) -> std::sync::Arc<dyn Store> {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(|p| p.into_inner()), fresh)
    }
}

/// Opens the configured backend, migrated and ready.
pub async fn open(config: &crate::config::Config) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let mut shards = open_shards(config).await?;
    if shards.len() == 1 {
        return Ok(shards.pop().map(|(_, s)| s).expect("one shard"));
    }
    let timeout = std::time::Duration::from_millis(config.routing.gather_timeout_ms);
    let router = std::sync::Arc::new(sharded::ShardedStore::new(shards, config.routing.vnodes, timeout));
    router.refresh_directory().await?;
    router.refresh_every(std::time::Duration::from_millis(config.routing.directory_refresh_ms.max(50)));
    Ok(router)
}

/// Every configured shard, opened and migrated, by name in configuration order, each behind
/// its own breaker.
pub async fn open_shards(config: &crate::config::Config) -> anyhow::Result<Vec<(String, std::sync::Arc<dyn Store>)>> {
    use std::sync::Arc;

    use crate::config::StoreKind;
    let mut shards: Vec<(String, Arc<dyn Store>)> = Vec::new();
    match config.store {
        StoreKind::Sqlite => {
            std::fs::create_dir_all(&config.data_dir)?;
            let n = config.sqlite.shards.max(1);
            for i in 1..=n {
                // One shard keeps the historic file name; several are shard1.db, shard2.db, ...
                let (name, file) = if n == 1 {
                    (sqlite::SINGLE_SHARD.to_owned(), "vitrina.db".to_owned())
                } else {
                    (format!("shard{i}"), format!("shard{i}.db"))
                };
                let path = config.data_dir.join(file);
                let cfg = config.sqlite.clone();
                let shard_name = name.clone();
                let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path, &cfg, &shard_name)).await??;
                let guarded = guarded::Guarded::new(&name, Arc::new(store), config.breakers.store.clone());
                shards.push((name, Arc::new(guarded)));
            }
        }
        StoreKind::Postgres => {
            for shard in &config.postgres.shards {
                let store = postgres::PgStore::connect(&shard.name, &shard.primary, &shard.replicas, &config.postgres).await?;
                let guarded = guarded::Guarded::new(&shard.name, Arc::new(store), config.breakers.store.clone());
                shards.push((shard.name.clone(), Arc::new(guarded)));
            }
        }
    }
    Ok(shards)
}

/// Records one store call of `shard` for the per-shard metrics: how long it held its connection
/// (`role` says which kind), and whether it failed for a reason other than the domain's.
pub fn observe<T>(shard: &str, role: &'static str, started: std::time::Instant, result: &StoreResult<T>) {
    held_for(shard.to_owned(), role, started);
    if let Err(StoreError::Backend(_) | StoreError::Unavailable(_) | StoreError::Unreachable(_)) = result {
        metrics::counter!("vitrina_store_errors_total", "shard" => shard.to_owned(), "role" => role).increment(1);
    }
}

/// How long a call of `shard` held its connection, for `vitrina_store_seconds`.
pub fn held_for(shard: String, role: &'static str, started: std::time::Instant) {
    metrics::histogram!("vitrina_store_seconds", "shard" => shard, "role" => role).record(started.elapsed().as_secs_f64());
}

/// Time as every backend stores it: whole microseconds, so what a write returns equals what a
/// later read returns (ETags depend on it).
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Whether a product upsert created a new row or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Updated,
    Unchanged,
}

/// One node of the storage topology, as reported by `GET /`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeReport {
    pub name: String,
    pub role: String,
    pub address: String,
    pub reachable: bool,
    pub replay_lag_ms: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ShardReport {
    pub name: String,
    pub nodes: Vec<NodeReport>,
    /// Shops whose data lives here; null when the shard did not answer.
    pub shops: Option<u64>,
    /// The shard's circuit breaker: `closed`, `open` (calls refused at once) or `half_open`.
    pub breaker: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RingShare {
    pub shard: String,
    /// Share of the hash space (of virtual nodes) the shard owns, 0-1.
    pub share: f64,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StoreReport {
    /// `sqlite` or `postgres`.
    pub kind: String,
    pub shards: Vec<ShardReport>,
    /// Durability setting in force for acknowledged writes.
    pub durability: String,
    /// Ownership of the shard ring; empty when there is one shard.
    pub ring: Vec<RingShare>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn report(&self) -> StoreReport;
    /// Stops taking writes and waits until everything acknowledged is durable. Blocking: call
    /// it from a blocking context.
    fn close(&self);
    async fn ping(&self) -> StoreResult<()>;

    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop>;
    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>>;

    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)>;
    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>>;
    /// At most `query.limit + 1` products after the cursor, so the caller can tell a next page exists.
    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>>;
    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()>;

    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock>;
    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock>;
    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>>;
    /// Applies a batch of feed operations in one transaction, each in its own savepoint:
    /// one result per operation, in order; a failed operation leaves no trace.
    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>>;

    /// The name of the shard holding a shop's data, from memory (no round trip).
    fn shard_of(&self, shop: &ShopId) -> String;

    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome>;
    /// The stored answer to an earlier placement with this Idempotency-Key, read from the primary.
    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>>;
    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>>;
    /// Newest first, at most `query.limit + 1`.
    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>>;
    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order>;
    /// Placed orders whose hold ended before `now`, across every shop of every shard.
    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>>;

    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()>;
    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>>;
    /// The first `limit` documents in insertion order (across shards: by id, which is time-ordered).
    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>>;
    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>>;
    /// Every collection with its document count per shard.
    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>>;

    /// A shop's events after `after` (a position this feed issued), in commit order.
    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage>;
    /// This store's feed position of an event a shop brought along when it moved here, found by
    /// the position shard `origin`'s feed had issued for it.
    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>>;
    /// Ids of the shops whose data lives here (forwarding marks excluded).
    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>>;
    /// Shops pinned to a shard other than their ring owner (kept on the first shard).
    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>>;
    /// Pins `shop` to `shard`, or removes its pin with `None`.
    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()>;
    /// Marks a shop on this shard: [`MOVING`] holds its writes, a shard name redirects them,
    /// `None` clears the mark.
    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()>;
    async fn export_shop(&self, shop: &ShopId) -> StoreResult<dump::ShopDump>;
    /// Writes a shop's rows as exported, in one transaction. Rows a shop left behind here when it
    /// moved away earlier (a tombstone) are replaced; a shop living here is refused.
    async fn import_shop(&self, dump: dump::ShopDump) -> StoreResult<()>;

    async fn create_webhook(&self, shop: &ShopId, hook: outbox::Webhook) -> StoreResult<outbox::Webhook>;
    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<outbox::Webhook>>;
    /// Removes a subscription with its delivery log.
    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()>;
    /// A subscription's delivery log, newest first, optionally of one status.
    async fn webhook_deliveries(
        &self,
        shop: &ShopId,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<outbox::Delivery>>;
    /// Puts a subscription's dead deliveries back in line until `deliver_by`; how many.
    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Events of this shop that a sink gave up on.
    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<outbox::DeadLetter>>;
    /// Asks the relay to publish the shop's dead letters again (of one sink, or all); how many.
    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64>;
    /// The outbox of every shard, each for its own relay.
    fn outboxes(self: std::sync::Arc<Self>) -> Vec<std::sync::Arc<dyn outbox::Outbox>>;

    /// Moves a shop's data to another shard; only a sharded store can.
    async fn move_shop(&self, shop: &ShopId, to: &str, now: DateTime<Utc>) -> StoreResult<moving::MoveReport> {
        let _ = (shop, to, now);
        Err(StoreError::invalid("not_sharded", "this store has a single shard: there is nowhere to move a shop"))
    }

    /// Moves every shop living off its ring owner to it; only a sharded store has any.
    async fn rebalance(&self, now: DateTime<Utc>) -> StoreResult<moving::RebalanceReport> {
        let _ = now;
        Ok(moving::RebalanceReport { moved: Vec::new(), failed: Vec::new() })
    }
}

/// Events of one shop in feed order, and the position to continue after.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EventPage {
    /// CloudEvents 1.0 envelopes.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` to continue; the same as the request's `after` when nothing new arrived.
    pub next: Option<String>,
}

/// A read gathered from every shard. Shards that did not answer in time are named here
/// instead of failing the whole read.
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered<T> {
    pub value: T,
    pub unavailable: Vec<String>,
}

impl<T> Gathered<T> {
    pub fn complete(value: T) -> Gathered<T> {
        Gathered { value, unavailable: Vec::new() }
    }
}

#[derive(Debug, Clone)]
pub struct CollectionCount {
    pub collection: String,
    pub shard: String,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_goes_live_then_fenced_then_released_or_sent_on() {
        assert_eq!(mark_precondition(Some(MOVING)), None, "a fence goes up on a live shop");
        assert_eq!(mark_precondition(None), Some(MOVING), "only a fenced shop is released");
        assert_eq!(mark_precondition(Some("shard2")), Some(MOVING), "only a fenced shop is sent on");
        let shop = ShopId::parse("acme").unwrap();
        assert!(matches!(home_check(&shop, None), Ok(())));
        assert!(matches!(home_check(&shop, Some(MOVING.into())), Err(StoreError::Unavailable(_))));
        assert!(matches!(home_check(&shop, Some("shard2".into())), Err(StoreError::Moved { .. })));
    }
}
