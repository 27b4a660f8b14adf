//! Read-through cache for catalog reads, shop records and the seed lists: L1 in process (moka),
//! then L2 in Redis, then the store.
//!
//! - **Correct after writes.** Every key lives in a scope (a shop, a seed collection) with a
//!   generation. A write bumps its scope's generation after it commits, so an entry loaded before
//!   the write is never found again, even if that load finishes late. In L1 the generation is
//!   this instance's; other instances bump theirs from the outbox events on the bus, and sooner
//!   from a Redis pub/sub message. In L2 it is a counter in Redis (`INCR` by the writer) that
//!   every key carries.
//! - **No stampede.** Concurrent misses on one key share one load per instance (single-flight),
//!   and with Redis a short lock lets one instance of many load it while the others wait for its
//!   result.
//! - **Redis failing is not an outage.** Redis calls are short and behind a breaker; a failed or
//!   refused call is a miss. Misses reach the store through a bounded line, so a cold cache
//!   cannot flood it.

pub mod config;
pub mod http;
pub mod invalidation;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use self::config::CacheConfig;
use self::redis::{L2Error, Redis, EVERYTHING};
use crate::store::{StoreError, StoreResult};

/// What is cached; each family has its lifetime and its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Product,
    Page,
    /// Shop records carry the API key's hash: kept in process, never written to Redis.
    Shop,
    Users,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Product => "product",
            Family::Page => "page",
            Family::Shop => "shop",
            Family::Users => "users",
        }
    }

    fn ttl(self, cfg: &CacheConfig) -> Duration {
        Duration::from_secs(match self {
            Family::Product => cfg.product_ttl_secs,
            Family::Page => cfg.page_ttl_secs,
            Family::Shop => cfg.shop_ttl_secs,
            Family::Users => cfg.users_ttl_secs,
        })
    }

    fn shared(self) -> bool {
        self != Family::Shop
    }
}

/// The scope of everything cached about a shop.
pub fn shop_scope(shop: &str) -> String {
    format!("shop:{shop}")
}

/// The scope of a seed collection's list.
pub fn collection_scope(collection: &str) -> String {
    format!("collection:{collection}")
}

/// Where an answer came from, as the `X-Cache` header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
    Miss,
}

impl Source {
    pub fn header(self) -> &'static str {
        match self {
            Source::L1 => "HIT-L1",
            Source::L2 => "HIT-L2",
            Source::Miss => "MISS",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cached {
    pub body: Bytes,
    pub etag: Arc<str>,
    pub source: Source,
    pub expires: Instant,
    /// The thing does not exist; remembered like a value, forgotten by the same invalidations.
    absent: bool,
}

impl Cached {
    pub fn ttl_left(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }
}

/// What a load found.
pub enum Loaded {
    /// Cache it.
    Keep(Bytes),
    /// Serve it to those waiting now, do not keep it (a partial answer).
    Once(Bytes),
    /// The thing does not exist; that is cached too.
    Absent,
}

impl From<Option<Bytes>> for Loaded {
    fn from(b: Option<Bytes>) -> Loaded {
        b.map_or(Loaded::Absent, Loaded::Keep)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too many misses are waiting for the store already.
    #[error("too many reads are waiting for the database; retry shortly")]
    Overloaded,
}

/// A strong validator over a representation's bytes.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..12]))
}

#[derive(Default, Clone, Copy)]
struct ScopeGen {
    local: u64,
    /// When the latest write this instance heard of was made (ms since the epoch): a load
    /// after it must read from a replica that has replayed that far, or the primary.
    changed_ms: Option<i64>,
    /// (epoch, generation) read from Redis while `local` was current.
    remote: Option<(u64, u64)>,
}

#[derive(Default)]
struct Scopes {
    /// Bumped when everything must go (a missed invalidation); part of every L1 key.
    all: u64,
    each: HashMap<String, ScopeGen>,
}

type Flight = Shared<BoxFuture<'static, Result<Option<Cached>, CacheError>>>;

pub struct Cache {
    cfg: CacheConfig,
    l1: Option<moka::future::Cache<String, Cached>>,
    l2: Option<Arc<Redis>>,
    scopes: Mutex<Scopes>,
    flights: Mutex<HashMap<String, Flight>>,
    gate: Arc<Semaphore>,
    /// An invalidation could not reach Redis: L2 may hold entries a write made stale.
    dirty: AtomicBool,
    /// Store reads made for misses on this instance.
    loads: AtomicU64,
    requests: Requests,
}

/// The state shown in `GET /`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheReport {
    pub tiers: Vec<String>,
    pub l1: bool,
    pub l1_entries: u64,
    /// Redis URLs, passwords masked; empty without L2.
    pub redis: Vec<String>,
    pub redis_cluster: bool,
    /// `closed`, `open` or `half_open`; absent without L2.
    pub breaker: Option<String>,
    pub users_ttl_secs: u64,
    pub product_ttl_secs: u64,
    pub page_ttl_secs: u64,
    /// Store reads this instance made for misses since it started.
    pub loads: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// L2 values: the expiry (unix ms, 8 bytes big-endian), 1 if the thing exists (else 0), the body.
fn encode(c: &Cached, ttl: Duration) -> Vec<u8> {
    let mut v = Vec::with_capacity(c.body.len() + 9);
    v.extend_from_slice(&(unix_ms() + ttl.as_millis() as u64).to_be_bytes());
    v.push(u8::from(!c.absent));
    v.extend_from_slice(&c.body);
    v
}

fn decode(raw: Vec<u8>) -> Option<Cached> {
    let expiry = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    let left = Duration::from_millis(expiry.checked_sub(unix_ms())?);
    let absent = *raw.get(8)? == 0;
    let body = Bytes::from(raw).slice(9..);
    Some(Cached { etag: etag_of(&body).into(), body, source: Source::L2, expires: Instant::now() + left, absent })
}

const FAMILIES: [Family; 4] = [Family::Product, Family::Page, Family::Shop, Family::Users];

/// Where a cached read was answered, as `vitrina_cache_requests_total` labels it.
#[derive(Clone, Copy)]
enum Tier {
    L1,
    L2,
}

/// How a tier answered a read.
#[derive(Clone, Copy)]
enum Outcome {
    Hit,
    Miss,
    Error,
}

const TIERS: [(Tier, &str); 2] = [(Tier::L1, "l1"), (Tier::L2, "l2")];
const OUTCOMES: [(Outcome, &str); 3] = [(Outcome::Hit, "hit"), (Outcome::Miss, "miss"), (Outcome::Error, "error")];

/// `vitrina_cache_requests_total`, every series' handle resolved once: a lookup per read by
/// labels was a visible part of a cached answer's cost.
struct Requests([[[metrics::Counter; 3]; 4]; 2]);

impl Requests {
    fn new() -> Requests {
        Requests(TIERS.map(|(_, tier)| {
            FAMILIES.map(|family| {
                OUTCOMES.map(|(_, result)| {
                    metrics::counter!("vitrina_cache_requests_total", "tier" => tier, "family" => family.name(), "result" => result)
                })
            })
        }))
    }

    fn count(&self, tier: Tier, family: Family, outcome: Outcome) {
        let family = FAMILIES.iter().position(|f| *f == family).expect("every family has its series");
        self.0[tier as usize][family][outcome as usize].increment(1);
    }
}

impl Cache {
    pub fn new(cfg: &CacheConfig) -> anyhow::Result<Cache> {
        let longest = [Family::Product, Family::Page, Family::Shop, Family::Users].iter().map(|f| f.ttl(cfg)).max();
        let l1 = cfg.l1.then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.max_entries)
                .time_to_live(longest.unwrap_or(Duration::from_secs(60)))
                .eviction_listener(|_, _, cause| {
                    let cause = match cause {
                        moka::notification::RemovalCause::Size => "size",
                        moka::notification::RemovalCause::Expired => "expired",
                        _ => "replaced",
                    };
                    metrics::counter!("vitrina_cache_evictions_total", "tier" => "l1", "cause" => cause).increment(1);
                })
                .build()
        });
        let urls = cfg.redis_urls();
        let l2 = if urls.is_empty() { None } else { Some(Arc::new(Redis::new(&urls, cfg)?)) };
        Ok(Cache {
            cfg: cfg.clone(),
            l1,
            l2,
            scopes: Mutex::default(),
            flights: Mutex::default(),
            gate: Arc::new(Semaphore::new(cfg.db_concurrency)),
            dirty: AtomicBool::new(false),
            loads: AtomicU64::new(0),
            requests: Requests::new(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.l1.is_some() || self.l2.is_some()
    }

    pub fn redis(&self) -> Option<&Arc<Redis>> {
        self.l2.as_ref()
    }

    pub fn report(&self) -> CacheReport {
        let mut tiers = Vec::new();
        if self.l1.is_some() {
            tiers.push("l1-memory".to_owned());
        }
        if let Some(l2) = &self.l2 {
            tiers.push(if l2.is_cluster() { "l2-redis-cluster" } else { "l2-redis" }.to_owned());
        }
        CacheReport {
            tiers,
            l1: self.l1.is_some(),
            l1_entries: self.l1.as_ref().map_or(0, |c| c.entry_count()),
            redis: self.cfg.redacted().redis_urls(),
            redis_cluster: self.l2.as_ref().is_some_and(|r| r.is_cluster()),
            breaker: self.l2.as_ref().map(|r| r.state().as_str().to_owned()),
            users_ttl_secs: self.cfg.users_ttl_secs,
            product_ttl_secs: self.cfg.product_ttl_secs,
            page_ttl_secs: self.cfg.page_ttl_secs,
            loads: self.loads.load(Ordering::Relaxed),
        }
    }

    /// Generation keys share one hash slot (`{g}`), so a cluster answers them in one MGET.
    fn epoch_key(&self) -> String {
        format!("{}:{{g}}:epoch", self.cfg.namespace)
    }

    fn gen_key(&self, scope: &str) -> String {
        format!("{}:{{g}}:gen:{scope}", self.cfg.namespace)
    }

    fn scopes(&self) -> std::sync::MutexGuard<'_, Scopes> {
        self.scopes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn local_gen(&self, scope: &str) -> (u64, u64, Option<i64>) {
        let s = self.scopes();
        let g = s.each.get(scope).copied().unwrap_or_default();
        (s.all, g.local, g.changed_ms)
    }

    /// Forgets this instance's entries of `scope` (an event or a message said it changed at
    /// `changed_ms`).
    pub fn bump_local(&self, scope: &str, changed_ms: Option<i64>) {
        let mut s = self.scopes();
        if scope == EVERYTHING {
            s.all += 1;
            s.each.values_mut().for_each(|g| g.remote = None);
            return;
        }
        let g = s.each.entry(scope.to_owned()).or_default();
        g.local += 1;
        g.remote = None;
        g.changed_ms = g.changed_ms.max(changed_ms);
    }

    /// A message from another instance: `scope@ms`, or [`EVERYTHING`].
    pub fn on_message(&self, message: &str) {
        match message.rsplit_once('@') {
            Some((scope, ms)) => self.bump_local(scope, ms.parse().ok()),
            None => self.bump_local(message, None),
        }
    }

    /// Called after a write to `scope` committed: this instance forgets at once, Redis moves the
    /// scope to a new generation, and the other instances are told.
    pub async fn invalidate(&self, scope: &str) {
        let now = chrono::Utc::now().timestamp_millis();
        self.bump_local(scope, Some(now));
        let Some(l2) = &self.l2 else { return };
        let recorded = match l2.incr(&self.gen_key(scope)).await {
            Ok(_) => l2.publish(&format!("{scope}@{now}")).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(scope, error = %e, "cache invalidation did not reach Redis; dropping all of L2 once it is back");
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    /// While an invalidation is owed to Redis, tries to settle it by moving every key to a new
    /// epoch and telling every instance to drop everything. Called periodically.
    pub async fn repair(&self) {
        let Some(l2) = &self.l2 else { return };
        if !self.dirty.load(Ordering::SeqCst) {
            return;
        }
        if l2.incr(&self.epoch_key()).await.is_ok() && l2.publish(EVERYTHING).await.is_ok() {
            self.dirty.store(false, Ordering::SeqCst);
            self.bump_local(EVERYTHING, None);
            tracing::info!("L2 cache moved to a new epoch after missed invalidations");
        }
    }

    async fn remote_gen(&self, l2: &Redis, scope: &str) -> Result<(u64, u64), L2Error> {
        let before = {
            let s = self.scopes();
            let g = s.each.get(scope).copied().unwrap_or_default();
            if let Some(r) = g.remote {
                return Ok(r);
            }
            (s.all, g.local)
        };
        let (epoch, key) = (self.epoch_key(), self.gen_key(scope));
        let got = l2.get_numbers(&[&epoch, &key]).await?;
        let remote = (got[0], got[1]);
        let mut s = self.scopes();
        let all = s.all;
        let g = s.each.entry(scope.to_owned()).or_default();
        // Keep it only if no invalidation came in meanwhile.
        if (all, g.local) == before {
            g.remote = Some(remote);
        }
        Ok(remote)
    }

    /// The cached representation of `key` in `scope`, or what `load` returns (cached on the way
    /// out). `Ok(None)`: the thing does not exist (not cached).
    pub async fn get_or_load<F>(
        self: &Arc<Self>,
        family: Family,
        scope: &str,
        key: &str,
        load: F,
    ) -> Result<Option<Cached>, CacheError>
    where
        F: Future<Output = StoreResult<Loaded>> + Send + 'static,
    {
        if crate::consistency::read_after_ms().is_some() {
            // The caller holds a read-your-writes token: the store decides what is fresh enough.
            let loaded = self.load(family, load).await?;
            let body = match loaded {
                Loaded::Keep(b) | Loaded::Once(b) => b,
                Loaded::Absent => return Ok(None),
            };
            let expires = Instant::now() + family.ttl(&self.cfg);
            return Ok(Some(Cached { etag: etag_of(&body).into(), body, source: Source::Miss, expires, absent: false }));
        }
        let (all, local, changed_ms) = self.local_gen(scope);
        let l1_key = format!("{}\u{1f}{scope}\u{1f}{all}.{local}\u{1f}{key}", family.name());
        if self.l1.is_some() {
            if let Some(hit) = self.l1_get(&l1_key).await {
                self.requests.count(Tier::L1, family, Outcome::Hit);
                return Ok(Some(hit).filter(|c| !c.absent));
            }
            self.requests.count(Tier::L1, family, Outcome::Miss);
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&l1_key) {
                Some(f) => f.clone(),
                None => {
                    let me = Arc::clone(self);
                    let (scope, key, k) = (scope.to_owned(), key.to_owned(), l1_key.clone());
                    let f = async move {
                        let load = crate::consistency::reading_after(changed_ms, load);
                        let out = me.fill(family, &scope, &key, &k, load).await;
                        me.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                        out
                    }
                    .boxed()
                    .shared();
                    flights.insert(l1_key.clone(), f.clone());
                    f
                }
            }
        };
        Ok(flight.await?.filter(|c| !c.absent))
    }

    /// The value from L2 or the store, as an entry (absent things included).
    async fn fill<F>(&self, family: Family, scope: &str, key: &str, l1_key: &str, load: F) -> Result<Option<Cached>, CacheError>
    where
        F: Future<Output = StoreResult<Loaded>>,
    {
        // A flight that finished between this caller's L1 look and its joining found the key.
        if let Some(hit) = self.l1_get(l1_key).await {
            return Ok(Some(hit));
        }
        let ttl = family.ttl(&self.cfg);
        let mut l2_key = None;
        let mut lock = None;
        if let (true, Some(l2)) = (family.shared(), &self.l2) {
            if let Ok((epoch, gen)) = self.remote_gen(l2, scope).await {
                let k = format!("{}:v:{epoch}:{gen}:{}:{scope}:{key}", self.cfg.namespace, family.name());
                if let Some(hit) = self.l2_get(l2, family, &k).await {
                    self.put_l1(l1_key, &hit).await;
                    return Ok(Some(hit));
                }
                let lock_key = format!("{k}:lock");
                match l2.try_lock(&lock_key, Duration::from_millis(self.cfg.lock_ms)).await {
                    Ok(true) => lock = Some(lock_key),
                    Ok(false) => {
                        // Another instance is loading it: wait for its result, up to the lock's life.
                        let until = Instant::now() + Duration::from_millis(self.cfg.lock_ms);
                        while Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            if let Some(hit) = self.l2_get(l2, family, &k).await {
                                self.put_l1(l1_key, &hit).await;
                                return Ok(Some(hit));
                            }
                        }
                    }
                    Err(_) => {}
                }
                l2_key = Some(k);
            }
        }
        let loaded = self.load(family, load).await;
        let body = match loaded {
            Ok(found) => found,
            Err(e) => {
                if let (Some(l2), Some(lock)) = (&self.l2, &lock) {
                    let _ = l2.del(lock).await;
                }
                return Err(e);
            }
        };
        let (body, keep, absent) = match body {
            Loaded::Keep(b) => (b, true, false),
            Loaded::Once(b) => (b, false, false),
            Loaded::Absent => (Bytes::new(), true, true),
        };
        let cached = Cached { etag: etag_of(&body).into(), body, source: Source::Miss, expires: Instant::now() + ttl, absent };
        if let Some(l2) = &self.l2 {
            if let (true, Some(k)) = (keep, &l2_key) {
                let _ = l2.set(k, &encode(&cached, ttl), ttl).await;
            }
            if let Some(lock) = &lock {
                let _ = l2.del(lock).await;
            }
        }
        if keep {
            self.put_l1(l1_key, &cached).await;
        }
        Ok(Some(cached))
    }

    async fn l2_get(&self, l2: &Redis, family: Family, key: &str) -> Option<Cached> {
        match l2.get(key).await {
            Ok(Some(raw)) => match decode(raw) {
                Some(c) => {
                    self.requests.count(Tier::L2, family, Outcome::Hit);
                    Some(c)
                }
                None => {
                    self.requests.count(Tier::L2, family, Outcome::Miss);
                    None
                }
            },
            Ok(None) => {
                self.requests.count(Tier::L2, family, Outcome::Miss);
                None
            }
            Err(_) => {
                self.requests.count(Tier::L2, family, Outcome::Error);
                None
            }
        }
    }

    /// The store read behind a miss, through the line that protects the database.
    async fn load<F>(&self, family: Family, load: F) -> Result<Loaded, CacheError>
    where
        F: Future<Output = StoreResult<Loaded>>,
    {
        let wait = Duration::from_millis(self.cfg.db_wait_ms);
        let _permit = match tokio::time::timeout(wait, self.gate.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                metrics::counter!("vitrina_cache_load_shed_total", "family" => family.name()).increment(1);
                return Err(CacheError::Overloaded);
            }
        };
        metrics::counter!("vitrina_cache_loads_total", "family" => family.name()).increment(1);
        self.loads.fetch_add(1, Ordering::Relaxed);
        Ok(load.await?)
    }

    /// A live L1 entry, absent markers included.
    async fn l1_get(&self, l1_key: &str) -> Option<Cached> {
        let hit = self.l1.as_ref()?.get(l1_key).await.filter(|c| c.expires > Instant::now())?;
        Some(Cached { source: Source::L1, ..hit })
    }

    async fn put_l1(&self, l1_key: &str, c: &Cached) {
        if let Some(l1) = &self.l1 {
            l1.insert(l1_key.to_owned(), Cached { source: Source::L1, ..c.clone() }).await;
        }
    }
}

#[cfg(test)]
mod tests;
