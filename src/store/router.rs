//! The store the application talks to: one or several shards behind one router. A shop's data
//! lives on the shard the ring assigns to it (or where the directory pins it after a move), so
//! every order stays one local transaction; a seed document lives on the shard of its name.
//!
//! The router holds only what spans shards: picking a shop's shard (`on_shop`, `read_shop`),
//! following a shop that moved meanwhile, finding one left off its ring owner, and gathering
//! reads from every shard, each under a timeout, naming the shards that did not answer instead
//! of failing. Every call to a shard passes one place (`call`, `call_read`): the `store` span
//! that links a request to the event it writes, and the shard's circuit breaker. When a shard's
//! primary cannot be reached, its breaker opens and its writes are refused at once (503) while
//! other shards keep serving; its reads go on from replicas within the lag budget, marked as
//! possibly stale (`store::fallback`); one probe a moment later finds out whether it is back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use tracing::Instrument;

use super::fallback;
use super::outbox::Outbox;
use super::{CollectionCount, EventPage, Gathered, Shard, StoreError, StoreReport, StoreResult};
use crate::breaker::{Breaker, BreakerConfig};
use crate::collections::UserDoc;
use crate::routing::Ring;
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};

/// One shard with its breaker.
struct Member {
    shard: Arc<dyn Shard>,
    breaker: Breaker,
}

pub struct Store {
    ring: Ring,
    members: Vec<Member>,
    gather_timeout: Duration,
    /// Shops moved off their ring owner, from the directory on the first shard.
    pins: RwLock<HashMap<ShopId, usize>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// An answer that may mean "not here": a shop left off its ring owner is then looked for.
pub trait Absent {
    fn absent(&self) -> bool;
}

impl<T> Absent for Option<T> {
    fn absent(&self) -> bool {
        self.is_none()
    }
}

impl<T> Absent for Vec<T> {
    fn absent(&self) -> bool {
        self.is_empty()
    }
}

impl Store {
    /// Opens the configured backend, migrated and ready, behind its router.
    pub async fn open(config: &crate::config::Config) -> anyhow::Result<Arc<Store>> {
        let shards = Self::open_shards(config).await?;
        let timeout = std::time::Duration::from_millis(config.routing.gather_timeout_ms);
        let router = Arc::new(Store::new(shards, config.routing.vnodes, timeout, &config.breakers.store));
        router.refresh_directory().await?;
        router.refresh_every(std::time::Duration::from_millis(config.routing.directory_refresh_ms.max(50)));
        Ok(router)
    }

    /// Every configured shard, opened and migrated, by name in configuration order.
    async fn open_shards(config: &crate::config::Config) -> anyhow::Result<Vec<(String, Arc<dyn Shard>)>> {
        use crate::config::StoreKind;
        let mut shards: Vec<(String, Arc<dyn Shard>)> = Vec::new();
        match config.store {
            StoreKind::Sqlite => {
                std::fs::create_dir_all(&config.data_dir)?;
                let n = config.sqlite.shards.max(1);
                for i in 1..=n {
                    // One shard keeps the historic file name; several are shard1.db, shard2.db, ...
                    let (name, file) = if n == 1 {
                        (super::sqlite::SINGLE_SHARD.to_owned(), "vitrina.db".to_owned())
                    } else {
                        (format!("shard{i}"), format!("shard{i}.db"))
                    };
                    let path = config.data_dir.join(file);
                    let cfg = config.sqlite.clone();
                    let shard_name = name.clone();
                    let group = config.orders.max_group;
                    let store =
                        tokio::task::spawn_blocking(move || super::sqlite::SqliteStore::open(&path, &cfg, &shard_name, group))
                            .await??;
                    shards.push((name, Arc::new(store)));
                }
            }
            StoreKind::Postgres => {
                for shard in &config.postgres.shards {
                    let store = super::postgres::PgStore::connect(
                        &shard.name,
                        &shard.primary,
                        &shard.replicas,
                        &config.postgres,
                        config.orders.max_group,
                    )
                    .await?;
                    shards.push((shard.name.clone(), Arc::new(store)));
                }
            }
        }
        Ok(shards)
    }

    pub fn new(shards: Vec<(String, Arc<dyn Shard>)>, vnodes: usize, gather_timeout: Duration, breaker: &BreakerConfig) -> Store {
        let names: Vec<String> = shards.iter().map(|(n, _)| n.clone()).collect();
        Store {
            ring: Ring::new(&names, vnodes),
            members: shards
                .into_iter()
                .map(|(name, shard)| Member { shard, breaker: Breaker::new("store", &name, breaker.clone()) })
                .collect(),
            gather_timeout,
            pins: RwLock::new(HashMap::new()),
            refresher: Mutex::new(None),
        }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// One shard: no ring, no directory, positions and reports as that shard gives them.
    fn single(&self) -> bool {
        self.members.len() == 1
    }

    fn name(&self, index: usize) -> &str {
        &self.ring.shards()[index]
    }

    fn index_of(&self, shard: &str) -> Option<usize> {
        self.ring.shards().iter().position(|n| n == shard)
    }

    /// The shard holding a shop: its pin if it was moved, else its ring owner.
    pub fn home(&self, shop: &ShopId) -> usize {
        if self.single() {
            return 0;
        }
        let pinned = self.pins.read().unwrap_or_else(|p| p.into_inner()).get(shop).copied();
        pinned.unwrap_or_else(|| self.ring.owner_index(shop.as_str()))
    }

    /// The name of the shard holding a shop's data, from memory (no round trip).
    pub fn shard_of(&self, shop: &ShopId) -> String {
        self.name(self.home(shop)).to_owned()
    }

    pub fn shard(&self, index: usize) -> &dyn Shard {
        self.members[index].shard.as_ref()
    }

    /// The `store` span of a call to shard `index`: what links a request to the event it writes.
    fn span(&self, index: usize, op: &'static str) -> tracing::Span {
        let name = self.name(index);
        tracing::debug_span!("store", otel.name = %format_args!("store {op}"), otel.kind = "client", shard = %name, op)
    }

    /// Every call to shard `index`: its span, through its breaker.
    pub async fn call<T>(&self, index: usize, op: &'static str, fut: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let (name, span) = (self.name(index), self.span(index, op));
        let unreachable = |r: &StoreResult<T>| matches!(r, Err(StoreError::Unreachable(_)));
        match self.members[index].breaker.call(fut.instrument(span), unreachable).await {
            Some(result) => result,
            None => {
                metrics::counter!("vitrina_store_refused_total", "shard" => name.to_owned()).increment(1);
                Err(StoreError::Unreachable(format!("shard {name} is failing; calls wait for its recovery (breaker open)")))
            }
        }
    }

    /// A read from shard `index`. While the breaker holds the shard's primary for down, the read
    /// still goes to the shard, told not to try the primary (`store::fallback`): a replica within
    /// the lag budget may answer. A read served without the primary counts as a failure of the
    /// primary, so replica answers do not close the breaker.
    pub async fn call_read<T>(
        &self,
        index: usize,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let (name, span) = (self.name(index), self.span(index, op));
        let failed = |(r, fell_back): &(StoreResult<T>, bool)| *fell_back || matches!(r, Err(StoreError::Unreachable(_)));
        // Read when the read starts: a read the breaker hands back unrun is told before it runs.
        let primary_down = AtomicBool::new(false);
        let read = fallback::read(&primary_down, fut.instrument(span));
        let attempt = self.members[index].breaker.call_or_return(read, failed).await;
        match attempt {
            Ok((result, _)) => result,
            Err(read) => {
                metrics::counter!("vitrina_store_refused_total", "shard" => name.to_owned()).increment(1);
                primary_down.store(true, Ordering::Relaxed);
                read.await.0
            }
        }
    }

    /// Runs a shop's operation on its shard; if the shop has moved meanwhile (this instance's
    /// directory was stale), follows it once to the shard that now holds it.
    pub async fn on_shop<'a, T, F, Fut>(&'a self, shop: &ShopId, op: &'static str, f: F) -> StoreResult<T>
    where
        F: Fn(&'a dyn Shard) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let home = self.home(shop);
        match self.call(home, op, f(self.shard(home))).await {
            Err(StoreError::Moved { shard }) => {
                let i = self
                    .index_of(&shard)
                    .ok_or_else(|| StoreError::Backend(format!("shop {shop} moved to unknown shard {shard}")))?;
                self.pins.write().unwrap_or_else(|p| p.into_inner()).insert(shop.clone(), i);
                self.call(i, op, f(self.shard(i))).await
            }
            other => other,
        }
    }

    /// A read of a shop's data; when it finds nothing and the shop does not live on the shard
    /// asked, the shop may be one left off its ring owner: found, it is read where it lives.
    pub async fn read_shop<'a, T, F, Fut>(&'a self, shop: &ShopId, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Absent,
        F: Fn(&'a dyn Shard) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let home = self.home(shop);
        let found = self.call_read(home, op, f(self.shard(home))).await?;
        if self.single() || !found.absent() || self.call_read(home, "get_shop", self.shard(home).get_shop(shop)).await?.is_some()
        {
            return Ok(found);
        }
        match self.find_misplaced(shop, home).await? {
            Some(_) => {
                let i = self.home(shop);
                self.call_read(i, op, f(self.shard(i))).await
            }
            None => Ok(found),
        }
    }

    /// Runs `read` on every shard concurrently, each bounded by the gather timeout.
    async fn gather<'a, T, F, Fut>(&'a self, op: &'static str, read: F) -> StoreResult<Gathered<Vec<T>>>
    where
        F: Fn(&'a dyn Shard) -> Fut,
        Fut: Future<Output = StoreResult<T>> + 'a,
    {
        let calls = (0..self.members.len())
            .map(|i| tokio::time::timeout(self.gather_timeout, self.call_read(i, op, read(self.shard(i)))));
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

    /// Re-reads the directory of pinned shops from the first shard.
    pub async fn refresh_directory(&self) -> StoreResult<()> {
        if self.single() {
            return Ok(());
        }
        let rows = self.call(0, "directory", self.shard(0).directory()).await?;
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
        if self.single() {
            return;
        }
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

    /// Pins `shop` to `shard` in the directory (or removes its pin), and refreshes this router's.
    pub async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        self.call(0, "set_pin", self.shard(0).set_pin(shop, shard, now)).await?;
        self.refresh_directory().await
    }

    /// A shop missing from its ring owner may still live elsewhere: after a shard was added to
    /// the ring, shops whose owner changed stay where they are until moved. Found there, it is
    /// pinned in the directory so every instance routes to it directly from then on.
    async fn find_misplaced(&self, id: &ShopId, skip: usize) -> StoreResult<Option<ShopRecord>> {
        let lookups = (0..self.members.len())
            .filter(|i| *i != skip)
            .map(|i| async move { (i, self.call(i, "get_shop", self.shard(i).get_shop(id)).await) });
        for (i, found) in join_all(lookups).await {
            let Ok(Some(record)) = found else { continue };
            if record.moved_to.is_some() {
                continue; // a forwarding mark, not the shop's home
            }
            let shard = self.name(i).to_owned();
            tracing::warn!(shop = %id, shard = %shard, "shop found off its ring owner; pinning it where it lives");
            self.pins.write().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), i);
            if let Err(e) = self.call(0, "set_pin", self.shard(0).set_pin(id, Some(&shard), chrono::Utc::now())).await {
                tracing::warn!(shop = %id, error = %e, "could not record the pin in the directory");
            }
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// Stops every shard's writes and waits until what they acknowledged is durable. Blocking.
    pub fn close(&self) {
        if let Some(t) = self.refresher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        for m in &self.members {
            m.shard.close();
        }
    }

    pub async fn report(&self) -> StoreReport {
        let reports = join_all(self.members.iter().map(|m| m.shard.report())).await;
        let kind = reports.first().map_or_else(String::new, |r| r.kind.clone());
        let durability = reports.first().map_or_else(String::new, |r| r.durability.clone());
        let ring = match self.single() {
            true => Vec::new(),
            false => self.ring.ownership().into_iter().map(|(shard, share)| super::RingShare { shard, share }).collect(),
        };
        let mut shards: Vec<super::ShardReport> = Vec::new();
        for (report, member) in reports.into_iter().zip(&self.members) {
            shards.extend(report.shards.into_iter().map(|mut s| {
                s.breaker = Some(member.breaker.state().as_str().to_owned());
                s
            }));
        }
        StoreReport { kind, durability, shards, ring }
    }

    /// Ready while any shard answers, breaker or not (readiness is how a balancer learns): a
    /// dead shard fails its own shops' requests, and taking every instance out of the balancer
    /// for it would fail everyone else's too.
    pub async fn ping(&self) -> StoreResult<()> {
        let pings = self.members.iter().map(|m| tokio::time::timeout(self.gather_timeout, m.shard.ping()));
        let results = join_all(pings).await;
        if results.iter().any(|r| matches!(r, Ok(Ok(())))) {
            return Ok(());
        }
        Err(results
            .into_iter()
            .find_map(|r| r.ok().and_then(Result::err))
            .unwrap_or_else(|| StoreError::Unavailable("no shard answered in time".into())))
    }

    /// The outbox of every shard, each for its own relay.
    pub fn outboxes(&self) -> Vec<Arc<dyn Outbox>> {
        self.members.iter().map(|m| Arc::clone(&m.shard).outbox()).collect()
    }

    /// A shop that lives on another shard (moved, or left behind when a shard was added) is not
    /// created a second time.
    pub async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop> {
        if !self.single() && self.get_shop(&shop.id).await?.is_some() {
            return Err(StoreError::conflict("shop_exists", format!("shop {} already exists", shop.id)));
        }
        let home = self.home(&shop.id);
        self.call(home, "create_shop", self.shard(home).create_shop(shop)).await
    }

    pub async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
        let home = self.home(id);
        if let Some(found) = self.call_read(home, "get_shop", self.shard(home).get_shop(id)).await? {
            return Ok(Some(found));
        }
        self.find_misplaced(id, home).await
    }

    /// Ids of every shop, shard by shard.
    pub async fn shop_ids(&self) -> StoreResult<Vec<ShopId>> {
        let mut all = Vec::new();
        for i in 0..self.members.len() {
            all.extend(self.call(i, "shop_ids", self.shard(i).shop_ids()).await?);
        }
        Ok(all)
    }

    /// Expired orders from every shard that answers; the rest are swept on a later pass.
    pub async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        let gathered = self.gather("expired_orders", |shard| shard.expired_orders(now, limit)).await?;
        let mut all: Vec<(ShopId, String)> = gathered.value.into_iter().flatten().collect();
        all.truncate(limit);
        Ok(all)
    }

    /// Positions name the shard that issued them (`shard:position`) when there are several.
    /// After the shop moved, a cursor from its old shard is found again among the events the
    /// move brought along; one that cannot be (its event was pruned before the move) restarts
    /// the shop's feed here, which repeats events but never skips one.
    pub async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
        let home = self.home(shop);
        let store = self.shard(home);
        if self.single() {
            return self.call(home, "events_after", store.events_after(shop, after, limit)).await;
        }
        let name = self.name(home);
        let invalid = |p: &str| StoreError::invalid("invalid_position", format!("{p:?} is not a position of this feed"));
        let inner = match after {
            None => None,
            Some(a) => match a.rsplit_once(':') {
                Some((shard, pos)) if shard == name => Some(pos.to_owned()),
                Some((shard, pos)) if self.index_of(shard).is_some() => {
                    self.call(home, "imported_position", store.imported_position(shop, shard, pos)).await?
                }
                _ => return Err(invalid(a)),
            },
        };
        let mut page = self.call(home, "events_after", store.events_after(shop, inner.as_deref(), limit)).await?;
        page.next = page.next.map(|n| format!("{name}:{n}"));
        Ok(page)
    }

    fn for_doc(&self, name: &str) -> usize {
        if self.single() {
            return 0;
        }
        self.ring.owner_index(name)
    }

    /// Each shard's part of the batch is one transaction; a batch spanning shards is not atomic
    /// across them (no 2PC), and a failure names the shard whose part was not written.
    pub async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()> {
        let mut parts: Vec<Vec<UserDoc>> = vec![Vec::new(); self.members.len()];
        for d in docs {
            let i = self.for_doc(&d.name);
            parts[i].push(d);
        }
        let writes = parts.into_iter().enumerate().filter(|(_, p)| !p.is_empty()).map(|(i, part)| async move {
            (i, self.call(i, "insert_users", self.shard(i).insert_users(collection, part)).await)
        });
        for (i, result) in join_all(writes).await {
            result.map_err(|e| match e {
                StoreError::Unavailable(m) if !self.single() => StoreError::Unavailable(format!("shard {}: {m}", self.name(i))),
                StoreError::Unreachable(m) if !self.single() => StoreError::Unreachable(format!("shard {}: {m}", self.name(i))),
                other => other,
            })?;
        }
        Ok(())
    }

    pub async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
        let i = self.for_doc(name);
        self.call(i, "find_user", self.shard(i).find_user(collection, name)).await
    }

    pub async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>> {
        if self.single() {
            return self.call(0, "list_users", self.shard(0).list_users(collection, limit)).await;
        }
        let gathered = self.gather("list_users", |shard| shard.list_users(collection, limit)).await?;
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

    pub async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>> {
        let gathered = self.gather("count_users", |shard| shard.count_users(collection)).await?;
        let mut unavailable = gathered.unavailable;
        let mut total = 0;
        for part in gathered.value {
            unavailable.extend(part.unavailable);
            total += part.value;
        }
        Ok(Gathered { value: total, unavailable })
    }

    /// Every collection with its document count per shard.
    pub async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>> {
        let gathered = self.gather("collection_counts", |shard| shard.collection_counts()).await?;
        let mut unavailable = gathered.unavailable;
        let mut all = Vec::new();
        for part in gathered.value {
            unavailable.extend(part.unavailable);
            all.extend(part.value);
        }
        Ok(Gathered { value: all, unavailable })
    }
}

/// The store in force, swapped whole when the storage configuration is reloaded. Cheap to
/// clone; a caller keeps the store it got until it finishes, while new calls get the new one.
#[derive(Clone)]
pub struct Slot(Arc<std::sync::RwLock<Arc<Store>>>);

impl Slot {
    pub fn new(store: Arc<Store>) -> Slot {
        Slot(Arc::new(std::sync::RwLock::new(store)))
    }

    pub fn get(&self) -> Arc<Store> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `fresh` in force and returns the store it replaced.
    pub fn swap(&self, fresh: Arc<Store>) -> Arc<Store> {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(|p| p.into_inner()), fresh)
    }
}
