//! In-process cache of seed-API user lists (the tier-one cache; Redis joins behind it later).
//! Keys carry a per-collection generation: a write bumps it, so a list loaded before the
//! write can never be served after it, even if its load finishes late.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;

#[derive(Clone)]
pub struct UsersCache {
    entries: Cache<(String, u64), Bytes>,
    generations: Arc<Mutex<HashMap<String, u64>>>,
}

impl UsersCache {
    pub fn new(ttl: Duration, max_entries: u64) -> UsersCache {
        UsersCache { entries: Cache::builder().time_to_live(ttl).max_capacity(max_entries).build(), generations: Arc::default() }
    }

    fn generation(&self, collection: &str) -> u64 {
        *self.generations.lock().unwrap_or_else(|p| p.into_inner()).get(collection).unwrap_or(&0)
    }

    /// The cached value, or the result of `load`; concurrent misses on one key share one load.
    pub async fn get_or_load<E, F>(&self, collection: &str, load: F) -> Result<(Bytes, bool), Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Bytes, E>>,
    {
        let key = (collection.to_owned(), self.generation(collection));
        if let Some(hit) = self.entries.get(&key).await {
            metrics::counter!("vitrina_cache_requests_total", "tier" => "l1", "result" => "hit").increment(1);
            return Ok((hit, true));
        }
        metrics::counter!("vitrina_cache_requests_total", "tier" => "l1", "result" => "miss").increment(1);
        self.entries.try_get_with(key, load).await.map(|b| (b, false))
    }

    /// Called after a write to `collection` has committed.
    pub fn invalidate(&self, collection: &str) {
        *self.generations.lock().unwrap_or_else(|p| p.into_inner()).entry(collection.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_hits_until_invalidated() {
        let c = UsersCache::new(Duration::from_secs(60), 100);
        let (v, hit) = c.get_or_load::<(), _>("a", async { Ok(Bytes::from_static(b"1")) }).await.unwrap();
        assert_eq!((v.as_ref(), hit), (&b"1"[..], false));
        let (v, hit) = c.get_or_load::<(), _>("a", async { Ok(Bytes::from_static(b"2")) }).await.unwrap();
        assert_eq!((v.as_ref(), hit), (&b"1"[..], true));
        c.invalidate("a");
        let (v, hit) = c.get_or_load::<(), _>("a", async { Ok(Bytes::from_static(b"3")) }).await.unwrap();
        assert_eq!((v.as_ref(), hit), (&b"3"[..], false));
    }

    #[tokio::test]
    async fn failed_loads_are_not_cached() {
        let c = UsersCache::new(Duration::from_secs(60), 100);
        assert!(c.get_or_load::<&str, _>("a", async { Err("down") }).await.is_err());
        let (v, _) = c.get_or_load::<&str, _>("a", async { Ok(Bytes::from_static(b"ok")) }).await.unwrap();
        assert_eq!(v.as_ref(), b"ok");
    }
}
