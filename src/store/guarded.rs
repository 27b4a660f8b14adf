//! What every call to one shard passes through, whatever its backend: a `store` span (the link
//! between a request's span and the outbox span of the event it writes) and the shard's circuit
//! breaker. When a shard's database cannot be reached, the first calls fail on their connect
//! timeout and open the breaker; then calls to that shard are refused at once with 503 while
//! other shards keep serving, and one probe a moment later finds out whether it is back.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::Instrument;

use super::*;
use crate::breaker::{Breaker, BreakerConfig, BreakerState};

pub struct Guarded {
    name: String,
    inner: Arc<dyn Store>,
    breaker: Breaker,
}

impl Guarded {
    pub fn new(name: &str, inner: Arc<dyn Store>, cfg: BreakerConfig) -> Guarded {
        Guarded { name: name.to_owned(), inner, breaker: Breaker::new("store", name, cfg) }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    async fn call<T>(&self, op: &'static str, fut: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let span =
            tracing::debug_span!("store", otel.name = %format_args!("store {op}"), otel.kind = "client", shard = %self.name, op);
        let unreachable = |r: &StoreResult<T>| matches!(r, Err(StoreError::Unreachable(_)));
        match self.breaker.call(fut.instrument(span), unreachable).await {
            Some(result) => result,
            None => {
                metrics::counter!("vitrina_store_refused_total", "shard" => self.name.clone()).increment(1);
                Err(StoreError::Unreachable(format!(
                    "shard {} is failing; calls wait for its recovery (breaker open)",
                    self.name
                )))
            }
        }
    }
}

#[async_trait]
impl Store for Guarded {
    async fn report(&self) -> StoreReport {
        let mut report = self.inner.report().await;
        for shard in &mut report.shards {
            shard.breaker = Some(self.breaker_state().as_str().to_owned());
        }
        report
    }
    fn close(&self) {
        self.inner.close()
    }
    /// Readiness asks the database itself, breaker or not: it is how a balancer learns.
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop> {
        self.call("create_shop", self.inner.create_shop(shop)).await
    }
    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
        self.call("get_shop", self.inner.get_shop(id)).await
    }

    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)> {
        self.call("upsert_product", self.inner.upsert_product(shop, input, now)).await
    }
    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        self.call("get_product", self.inner.get_product(shop, sku)).await
    }
    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>> {
        self.call("list_products", self.inner.list_products(shop, query)).await
    }
    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()> {
        self.call("delete_product", self.inner.delete_product(shop, sku)).await
    }

    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        self.call("set_stock", self.inner.set_stock(shop, sku, on_hand, now)).await
    }
    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        self.call("adjust_stock", self.inner.adjust_stock(shop, sku, delta, now)).await
    }
    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
        self.call("get_stock", self.inner.get_stock(shop, sku)).await
    }
    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>> {
        self.call("apply_feed", self.inner.apply_feed(shop, ops, now)).await
    }

    fn shard_of(&self, shop: &ShopId) -> String {
        self.inner.shard_of(shop)
    }

    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome> {
        self.call("place_order", self.inner.place_order(shop, order)).await
    }
    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        self.call("idempotency_record", self.inner.idempotency_record(shop, key)).await
    }
    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        self.call("get_order", self.inner.get_order(shop, id)).await
    }
    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>> {
        self.call("list_orders", self.inner.list_orders(shop, query)).await
    }
    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
        self.call("transition_order", self.inner.transition_order(shop, id, action, now)).await
    }
    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        self.call("expired_orders", self.inner.expired_orders(now, limit)).await
    }

    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()> {
        self.call("insert_users", self.inner.insert_users(collection, docs)).await
    }
    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
        self.call("find_user", self.inner.find_user(collection, name)).await
    }
    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>> {
        self.call("list_users", self.inner.list_users(collection, limit)).await
    }
    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>> {
        self.call("count_users", self.inner.count_users(collection)).await
    }
    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>> {
        self.call("collection_counts", self.inner.collection_counts()).await
    }

    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
        self.call("events_after", self.inner.events_after(shop, after, limit)).await
    }
    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>> {
        self.call("imported_position", self.inner.imported_position(shop, origin, position)).await
    }
    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>> {
        self.call("shop_ids", self.inner.shop_ids()).await
    }
    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>> {
        self.call("directory", self.inner.directory()).await
    }
    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        self.call("set_pin", self.inner.set_pin(shop, shard, now)).await
    }
    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
        self.call("mark_shop", self.inner.mark_shop(shop, moved_to)).await
    }
    async fn export_shop(&self, shop: &ShopId) -> StoreResult<dump::ShopDump> {
        self.call("export_shop", self.inner.export_shop(shop)).await
    }
    async fn import_shop(&self, dump: dump::ShopDump) -> StoreResult<()> {
        self.call("import_shop", self.inner.import_shop(dump)).await
    }

    async fn create_webhook(&self, shop: &ShopId, hook: outbox::Webhook) -> StoreResult<outbox::Webhook> {
        self.call("create_webhook", self.inner.create_webhook(shop, hook)).await
    }
    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<outbox::Webhook>> {
        self.call("webhooks", self.inner.webhooks(shop)).await
    }
    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()> {
        self.call("delete_webhook", self.inner.delete_webhook(shop, id)).await
    }
    async fn webhook_deliveries(
        &self,
        shop: &ShopId,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<outbox::Delivery>> {
        self.call("webhook_deliveries", self.inner.webhook_deliveries(shop, id, status, limit)).await
    }
    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        self.call("replay_webhook", self.inner.replay_webhook(shop, id, deliver_by, now)).await
    }
    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<outbox::DeadLetter>> {
        self.call("dead_letters", self.inner.dead_letters(shop, limit)).await
    }
    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        self.call("replay_dead_letters", self.inner.replay_dead_letters(shop, sink)).await
    }
    fn outboxes(self: Arc<Self>) -> Vec<Arc<dyn outbox::Outbox>> {
        self.inner.clone().outboxes()
    }
}
