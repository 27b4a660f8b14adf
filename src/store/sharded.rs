//! Several shards behind the one seam. A shop's data lives on the shard the ring assigns to it,
//! so every order stays one local transaction; a seed document lives on the shard of its name.
//! Reads that span shards (seed lists and counts, the expiry sweep, reports) ask every shard at
//! once, each under a timeout, and name the shards that did not answer instead of failing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::join_all;

use super::dump::ShopDump;
use super::{CollectionCount, Gathered, Store, StoreError, StoreReport, StoreResult, Upserted};
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::collections::UserDoc;
use crate::ingest::FeedOp;
use crate::inventory::Stock;
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, Order, OrderQuery, PlaceOrder, PlaceOutcome};
use crate::routing::Ring;
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};
use crate::store::outbox::{DeadLetter, Delivery, Outbox, Webhook};

pub struct ShardedStore {
    ring: Ring,
    shards: Vec<Arc<dyn Store>>,
    gather_timeout: Duration,
    /// Shops moved off their ring owner, from the directory on the first shard.
    pins: RwLock<HashMap<ShopId, usize>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ShardedStore {
    pub fn new(shards: Vec<(String, Arc<dyn Store>)>, vnodes: usize, gather_timeout: Duration) -> ShardedStore {
        let names: Vec<String> = shards.iter().map(|(n, _)| n.clone()).collect();
        ShardedStore {
            ring: Ring::new(&names, vnodes),
            shards: shards.into_iter().map(|(_, s)| s).collect(),
            gather_timeout,
            pins: RwLock::new(HashMap::new()),
            refresher: Mutex::new(None),
        }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    fn index_of(&self, shard: &str) -> Option<usize> {
        self.ring.shards().iter().position(|n| n == shard)
    }

    /// The shard holding a shop: its pin if it was moved, else its ring owner.
    pub fn home(&self, shop: &ShopId) -> usize {
        let pinned = self.pins.read().unwrap_or_else(|p| p.into_inner()).get(shop).copied();
        pinned.unwrap_or_else(|| self.ring.owner_index(shop.as_str()))
    }

    pub fn shard(&self, index: usize) -> &dyn Store {
        self.shards[index].as_ref()
    }

    fn for_shop(&self, shop: &ShopId) -> &dyn Store {
        self.shards[self.home(shop)].as_ref()
    }

    /// Re-reads the directory of pinned shops from the first shard.
    pub async fn refresh_directory(&self) -> StoreResult<()> {
        let rows = self.shards[0].directory().await?;
        let mut pins = HashMap::with_capacity(rows.len());
        for (shop, shard) in rows {
            match self.index_of(&shard) {
                Some(i) => {
                    pins.insert(shop, i);
                }
                None => tracing::warn!(shop = %shop, shard = %shard, "directory pins a shop to an unknown shard"),
            }
        }
        *self.pins.write().unwrap_or_else(|p| p.into_inner()) = pins;
        Ok(())
    }

    /// Keeps the directory fresh; a stale one is also corrected on the spot by `Moved`.
    pub fn refresh_every(self: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.refresh_directory().await {
                    tracing::warn!(error = %e, "directory refresh failed");
                }
            }
        });
        *self.refresher.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// A shop missing from its ring owner may still live elsewhere: after a shard was added to
    /// the ring, shops whose owner changed stay where they are until moved. Found there, it is
    /// pinned in the directory so every instance routes to it directly from then on.
    async fn find_misplaced(&self, id: &ShopId, skip: usize) -> StoreResult<Option<ShopRecord>> {
        let lookups =
            (0..self.shards.len()).filter(|i| *i != skip).map(|i| async move { (i, self.shards[i].get_shop(id).await) });
        for (i, found) in join_all(lookups).await {
            let Ok(Some(record)) = found else { continue };
            if record.moved_to.is_some() {
                continue; // a forwarding mark, not the shop's home
            }
            let shard = self.ring.shards()[i].clone();
            tracing::warn!(shop = %id, shard = %shard, "shop found off its ring owner; pinning it where it lives");
            self.pins.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), i);
            if let Err(e) = self.shards[0].set_pin(id, Some(&shard), chrono::Utc::now()).await {
                tracing::warn!(shop = %id, error = %e, "could not record the pin in the directory");
            }
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// A read of a shop's data; when it finds nothing and the shop does not live on the shard
    /// asked, the shop may be one left off its ring owner: found, it is read where it lives.
    async fn read_shop<'a, T, F, Fut>(&'a self, shop: &ShopId, op: F, missing: fn(&T) -> bool) -> StoreResult<T>
    where
        F: Fn(&'a dyn Store) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let home = self.home(shop);
        let found = op(self.shards[home].as_ref()).await?;
        if !missing(&found) || self.shards[home].get_shop(shop).await?.is_some() {
            return Ok(found);
        }
        match self.find_misplaced(shop, home).await? {
            Some(_) => op(self.shards[self.home(shop)].as_ref()).await,
            None => Ok(found),
        }
    }

    /// Runs a shop's operation on its shard; if the shop has moved meanwhile (this instance's
    /// directory was stale), follows it once to the shard that now holds it.
    async fn on_shop<'a, T, F, Fut>(&'a self, shop: &ShopId, op: F) -> StoreResult<T>
    where
        F: Fn(&'a dyn Store) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        match op(self.shards[self.home(shop)].as_ref()).await {
            Err(StoreError::Moved { shard }) => {
                let i = self
                    .index_of(&shard)
                    .ok_or_else(|| StoreError::Backend(format!("shop {shop} moved to unknown shard {shard}")))?;
                self.pins.write().unwrap_or_else(|p| p.into_inner()).insert(shop.clone(), i);
                op(self.shards[i].as_ref()).await
            }
            other => other,
        }
    }

    fn for_doc(&self, name: &str) -> usize {
        self.ring.owner_index(name)
    }

    /// Runs `read` on every shard concurrently, each bounded by the gather timeout.
    async fn gather<'a, T, F, Fut>(&'a self, read: F) -> StoreResult<Gathered<Vec<T>>>
    where
        F: Fn(&'a dyn Store) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>> + 'a,
    {
        let calls = self.shards.iter().map(|s| tokio::time::timeout(self.gather_timeout, read(s.as_ref())));
        let mut out = Gathered { value: Vec::new(), unavailable: Vec::new() };
        let mut last_error = None;
        for (name, result) in self.ring.shards().iter().zip(join_all(calls).await) {
            match result {
                Ok(Ok(v)) => out.value.push(v),
                Ok(Err(e)) => {
                    tracing::warn!(shard = %name, error = %e, "shard did not answer a gathered read");
                    out.unavailable.push(name.clone());
                    last_error = Some(e);
                }
                Err(_) => {
                    tracing::warn!(shard = %name, timeout_ms = self.gather_timeout.as_millis() as u64, "shard timed out in a gathered read");
                    out.unavailable.push(name.clone());
                }
            }
        }
        if out.value.is_empty() {
            return Err(last_error.unwrap_or_else(|| StoreError::Unavailable("no shard answered in time".into())));
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for ShardedStore {
    fn close(&self) {
        if let Some(t) = self.refresher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        for s in &self.shards {
            s.close();
        }
    }

    async fn report(&self) -> StoreReport {
        let reports = join_all(self.shards.iter().map(|s| s.report())).await;
        let kind = reports.first().map_or_else(String::new, |r| r.kind.clone());
        let durability = reports.first().map_or_else(String::new, |r| r.durability.clone());
        let ring = self.ring.ownership().into_iter().map(|(shard, share)| super::RingShare { shard, share }).collect();
        StoreReport { kind, durability, shards: reports.into_iter().flat_map(|r| r.shards).collect(), ring }
    }

    /// Ready while any shard answers: a dead shard fails its own shops' requests, and taking
    /// every instance out of the balancer for it would fail everyone else's too.
    async fn ping(&self) -> StoreResult<()> {
        self.gather(|s| s.ping()).await.map(|_| ())
    }

    /// A shop that lives on another shard (moved, or left behind when a shard was added) is not
    /// created a second time.
    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop> {
        if self.get_shop(&shop.id).await?.is_some() {
            return Err(StoreError::conflict("shop_exists", format!("shop {} already exists", shop.id)));
        }
        self.for_shop(&shop.id).create_shop(shop).await
    }

    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
        let home = self.home(id);
        if let Some(found) = self.shards[home].get_shop(id).await? {
            return Ok(Some(found));
        }
        self.find_misplaced(id, home).await
    }

    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)> {
        self.on_shop(shop, |s| s.upsert_product(shop, input.clone(), now)).await
    }

    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        self.read_shop(shop, |s| s.get_product(shop, sku), Option::is_none).await
    }

    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>> {
        self.read_shop(shop, |s| s.list_products(shop, query.clone()), Vec::is_empty).await
    }

    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()> {
        self.on_shop(shop, |s| s.delete_product(shop, sku)).await
    }

    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        self.on_shop(shop, |s| s.set_stock(shop, sku, on_hand, now)).await
    }

    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        self.on_shop(shop, |s| s.adjust_stock(shop, sku, delta, now)).await
    }

    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
        self.read_shop(shop, |s| s.get_stock(shop, sku), Option::is_none).await
    }

    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>> {
        self.on_shop(shop, |s| s.apply_feed(shop, ops.clone(), now)).await
    }

    fn shard_of(&self, shop: &ShopId) -> String {
        self.ring.shards()[self.home(shop)].clone()
    }

    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome> {
        self.on_shop(shop, |s| s.place_order(shop, order.clone())).await
    }

    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        self.read_shop(shop, |s| s.idempotency_record(shop, key), Option::is_none).await
    }

    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        self.read_shop(shop, |s| s.get_order(shop, id), Option::is_none).await
    }

    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>> {
        self.read_shop(shop, |s| s.list_orders(shop, query.clone()), Vec::is_empty).await
    }

    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
        self.on_shop(shop, |s| s.transition_order(shop, id, action, now)).await
    }

    /// Expired orders from every shard that answers; the rest are swept on a later pass.
    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        let gathered = self.gather(|s| s.expired_orders(now, limit)).await?;
        let mut all: Vec<(ShopId, String)> = gathered.value.into_iter().flatten().collect();
        all.truncate(limit);
        Ok(all)
    }

    /// Each shard's part of the batch is one transaction; a batch spanning shards is not atomic
    /// across them (no 2PC), and a failure names the shard whose part was not written.
    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()> {
        let mut parts: Vec<Vec<UserDoc>> = vec![Vec::new(); self.shards.len()];
        for d in docs {
            let i = self.for_doc(&d.name);
            parts[i].push(d);
        }
        let writes = parts
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(i, part)| async move { (i, self.shards[i].insert_users(collection, part).await) });
        for (i, result) in join_all(writes).await {
            result.map_err(|e| match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!("shard {}: {m}", self.ring.shards()[i])),
                StoreError::Unreachable(m) => StoreError::Unreachable(format!("shard {}: {m}", self.ring.shards()[i])),
                other => other,
            })?;
        }
        Ok(())
    }

    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
        self.shards[self.for_doc(name)].find_user(collection, name).await
    }

    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>> {
        let gathered = self.gather(|s| s.list_users(collection, limit)).await?;
        let mut unavailable = gathered.unavailable;
        let mut all = Vec::new();
        for part in gathered.value {
            unavailable.extend(part.unavailable);
            all.extend(part.value);
        }
        // Ids are time-ordered (seconds, then a per-process counter): the closest to one
        // insertion order that independent shards can give.
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.truncate(limit);
        Ok(Gathered { value: all, unavailable })
    }

    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>> {
        let gathered = self.gather(|s| s.count_users(collection)).await?;
        let mut unavailable = gathered.unavailable;
        let mut total = 0;
        for part in gathered.value {
            unavailable.extend(part.unavailable);
            total += part.value;
        }
        Ok(Gathered { value: total, unavailable })
    }

    /// Positions name the shard that issued them (`shard:position`). After the shop moved, a
    /// cursor from its old shard is found again among the events the move brought along; one
    /// that cannot be (its event was pruned before the move) restarts the shop's feed here, which
    /// repeats events but never skips one.
    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<super::EventPage> {
        let home = self.home(shop);
        let name = &self.ring.shards()[home];
        let store = &self.shards[home];
        let invalid = |p: &str| StoreError::invalid("invalid_position", format!("{p:?} is not a position of this feed"));
        let inner = match after {
            None => None,
            Some(a) => match a.rsplit_once(':') {
                Some((shard, pos)) if shard == name => Some(pos.to_owned()),
                Some((shard, pos)) if self.index_of(shard).is_some() => store.imported_position(shop, shard, pos).await?,
                _ => return Err(invalid(a)),
            },
        };
        let mut page = store.events_after(shop, inner.as_deref(), limit).await?;
        page.next = page.next.map(|n| format!("{name}:{n}"));
        Ok(page)
    }

    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>> {
        self.for_shop(shop).imported_position(shop, origin, position).await
    }

    async fn create_webhook(&self, shop: &ShopId, hook: Webhook) -> StoreResult<Webhook> {
        self.on_shop(shop, |s| s.create_webhook(shop, hook.clone())).await
    }

    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>> {
        self.read_shop(shop, |s| s.webhooks(shop), Vec::is_empty).await
    }

    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()> {
        self.on_shop(shop, |s| s.delete_webhook(shop, id)).await
    }

    async fn webhook_deliveries(
        &self,
        shop: &ShopId,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        self.for_shop(shop).webhook_deliveries(shop, id, status, limit).await
    }

    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        self.on_shop(shop, |s| s.replay_webhook(shop, id, deliver_by, now)).await
    }

    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        self.for_shop(shop).dead_letters(shop, limit).await
    }

    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        self.for_shop(shop).replay_dead_letters(shop, sink).await
    }

    fn outboxes(self: Arc<Self>) -> Vec<Arc<dyn Outbox>> {
        self.shards.iter().flat_map(|s| Arc::clone(s).outboxes()).collect()
    }

    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(s.shop_ids().await?);
        }
        Ok(all)
    }

    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>> {
        self.shards[0].directory().await
    }

    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        self.shards[0].set_pin(shop, shard, now).await?;
        self.refresh_directory().await
    }

    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
        self.for_shop(shop).mark_shop(shop, moved_to).await
    }

    async fn export_shop(&self, shop: &ShopId) -> StoreResult<ShopDump> {
        self.for_shop(shop).export_shop(shop).await
    }

    async fn import_shop(&self, dump: ShopDump) -> StoreResult<()> {
        self.for_shop(&dump.shop.shop.id).import_shop(dump.clone()).await
    }

    async fn move_shop(&self, shop: &ShopId, to: &str, now: DateTime<Utc>) -> StoreResult<super::moving::MoveReport> {
        ShardedStore::move_shop(self, shop, to, now).await
    }

    async fn rebalance(&self, now: DateTime<Utc>) -> StoreResult<super::moving::RebalanceReport> {
        ShardedStore::rebalance(self, now).await
    }

    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>> {
        let gathered = self.gather(|s| s.collection_counts()).await?;
        let mut unavailable = gathered.unavailable;
        let mut all = Vec::new();
        for part in gathered.value {
            unavailable.extend(part.unavailable);
            all.extend(part.value);
        }
        Ok(Gathered { value: all, unavailable })
    }
}
