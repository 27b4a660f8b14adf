//! What one shard can do, one trait per capability. The two backends (`sqlite`, `postgres`)
//! implement each; the router (`router.rs`) picks the shard and calls through `Shard`, which is
//! all of them. A new capability is its trait here, its two implementations, and a line in
//! `Shard`.
//!
//! Every call carries its routing key: a [`ShopId`] for shop data, the collection plus the
//! document's name for the seed API. Every business write is one transaction that also writes
//! its outbox event.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::dump::ShopDump;
use super::outbox::{DeadLetter, Delivery, Outbox, Webhook};
use super::transactions::placement::Placement;
use super::{CollectionCount, EventPage, Gathered, StoreReport, StoreResult, Upserted};
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::collections::UserDoc;
use crate::ingest::FeedOp;
use crate::inventory::Stock;
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, Order, OrderQuery, PlaceOrder, PlaceOutcome};
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};

#[async_trait]
pub trait Shops: Send + Sync {
    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop>;
    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>>;
    /// Ids of the shops whose data lives here (forwarding marks excluded).
    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>>;
}

#[async_trait]
pub trait Catalog: Send + Sync {
    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)>;
    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>>;
    /// At most `query.limit + 1` products after the cursor, so the caller can tell a next page exists.
    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>>;
    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()>;
}

#[async_trait]
pub trait Inventory: Send + Sync {
    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock>;
    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock>;
    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>>;
    /// Applies a batch of feed operations in one transaction, each in its own savepoint:
    /// one result per operation, in order; a failed operation leaves no trace.
    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>>;
}

#[async_trait]
pub trait Orders: Send + Sync {
    /// Places one order in the next group this shard commits (the orders that queued while its
    /// previous group committed); alone when nothing else is waiting.
    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome>;
    /// Places these orders together in one transaction, each answered as if placed alone one
    /// after the other in this order. The outer error means none of them was placed.
    async fn place_orders(&self, group: Vec<Placement>) -> StoreResult<Vec<StoreResult<PlaceOutcome>>>;
    /// The stored answer to an earlier placement with this Idempotency-Key, read from the primary.
    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>>;
    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>>;
    /// Newest first, at most `query.limit + 1`.
    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>>;
    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order>;
    /// Placed orders whose hold ended before `now`, across every shop here.
    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>>;
}

/// A shop's events as a pull feed.
#[async_trait]
pub trait Events: Send + Sync {
    /// A shop's events after `after` (a position this feed issued), in commit order.
    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage>;
    /// This shard's feed position of an event a shop brought along when it moved here, found by
    /// the position shard `origin`'s feed had issued for it.
    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>>;
}

#[async_trait]
pub trait Webhooks: Send + Sync {
    async fn create_webhook(&self, shop: &ShopId, hook: Webhook) -> StoreResult<Webhook>;
    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>>;
    /// Removes a subscription with its delivery log.
    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()>;
    /// A subscription's delivery log, newest first, optionally of one status.
    async fn webhook_deliveries(&self, shop: &ShopId, id: &str, status: Option<&str>, limit: usize)
        -> StoreResult<Vec<Delivery>>;
    /// Puts a subscription's dead deliveries back in line until `deliver_by`; how many.
    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Events of this shop that a sink gave up on.
    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<DeadLetter>>;
    /// Asks the relay to publish the shop's dead letters again (of one sink, or all); how many.
    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64>;
}

/// What moving a shop between shards needs of each shard.
#[async_trait]
pub trait Moves: Send + Sync {
    /// Shops pinned to a shard other than their ring owner (kept on the first shard).
    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>>;
    /// Pins `shop` to `shard`, or removes its pin with `None`.
    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()>;
    /// Marks a shop here: [`super::MOVING`] holds its writes, a shard name redirects them,
    /// `None` clears the mark.
    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()>;
    async fn export_shop(&self, shop: &ShopId) -> StoreResult<ShopDump>;
    /// Writes a shop's rows as exported, in one transaction. Rows a shop left behind here when it
    /// moved away earlier (a tombstone) are replaced; a shop living here is refused.
    async fn import_shop(&self, dump: ShopDump) -> StoreResult<()>;
}

/// The seed API's collections of user documents.
#[async_trait]
pub trait Collections: Send + Sync {
    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()>;
    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>>;
    /// The first `limit` documents in insertion order.
    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>>;
    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>>;
    /// Every collection with its document count.
    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>>;
}

/// One shard: every capability, and its life.
#[async_trait]
pub trait Shard: Shops + Catalog + Inventory + Orders + Events + Webhooks + Moves + Collections + Send + Sync + 'static {
    async fn report(&self) -> StoreReport;
    /// Stops taking writes and waits until everything acknowledged is durable. Blocking: call
    /// it from a blocking context.
    fn close(&self);
    async fn ping(&self) -> StoreResult<()>;
    /// The shard's outbox, for its relay.
    fn outbox(self: Arc<Self>) -> Arc<dyn Outbox>;
}
