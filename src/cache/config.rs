//! `[cache]`: the in-process tier, the Redis tier, their lifetimes and the breaker in front of
//! Redis.

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The in-process tier (moka).
    pub l1: bool,
    /// The Redis tier: one URL, a list of cluster seed nodes, or the same list comma-separated
    /// (handy in `VITRINA_CACHE__REDIS_URL`). Absent: no L2.
    pub redis_url: Option<RedisUrls>,
    /// Prefix of every Redis key and of the invalidation channel, so deployments (or test runs)
    /// sharing one Redis never see each other's entries.
    pub namespace: String,
    /// Entries the in-process tier holds at most.
    pub max_entries: u64,
    pub product_ttl_secs: u64,
    pub page_ttl_secs: u64,
    pub shop_ttl_secs: u64,
    /// Lifetime of a cached seed-API user list.
    pub users_ttl_secs: u64,
    /// Every Redis call is abandoned after this long (and counts as a failure).
    pub redis_timeout_ms: u64,
    /// How long one instance may hold the right to load a missing key before others load too.
    pub lock_ms: u64,
    /// Database loads running at once on this instance for cache misses; more wait in line.
    pub db_concurrency: usize,
    /// How long a miss waits in that line before the read is refused with 503.
    pub db_wait_ms: u64,
    pub breaker: BreakerConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            l1: true,
            redis_url: None,
            namespace: "vitrina".into(),
            max_entries: 10_000,
            product_ttl_secs: 60,
            page_ttl_secs: 30,
            shop_ttl_secs: 60,
            users_ttl_secs: 60,
            redis_timeout_ms: 50,
            lock_ms: 1000,
            db_concurrency: 32,
            db_wait_ms: 2000,
            breaker: BreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RedisUrls {
    One(String),
    Many(Vec<String>),
}

impl RedisUrls {
    pub fn list(&self) -> Vec<String> {
        let all: Vec<String> = match self {
            RedisUrls::One(s) => s.split(',').map(|u| u.trim().to_owned()).collect(),
            RedisUrls::Many(v) => v.iter().map(|u| u.trim().to_owned()).collect(),
        };
        all.into_iter().filter(|u| !u.is_empty()).collect()
    }
}

impl CacheConfig {
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis_url.as_ref().map(RedisUrls::list).unwrap_or_default()
    }

    pub fn check(&self) -> anyhow::Result<()> {
        for url in self.redis_urls() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                anyhow::bail!("cache.redis_url: {url:?} is not a redis:// URL");
            }
        }
        if self.namespace.is_empty() || self.namespace.contains(['{', '}', ' ']) {
            anyhow::bail!("cache.namespace must be non-empty, without braces or spaces");
        }
        if self.db_concurrency == 0 || self.max_entries == 0 {
            anyhow::bail!("cache.db_concurrency and cache.max_entries must be positive");
        }
        self.breaker.check("cache.breaker")
    }

    /// The URLs with their passwords masked, for `vitrina config` and `GET /`.
    pub fn redacted(&self) -> CacheConfig {
        let mut c = self.clone();
        c.redis_url = self
            .redis_url
            .as_ref()
            .map(|_| RedisUrls::Many(self.redis_urls().iter().map(|u| crate::secrets::mask_url_password(u)).collect()));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_a_list_or_a_comma_separated_list() {
        assert_eq!(RedisUrls::One("redis://a:1".into()).list(), vec!["redis://a:1"]);
        assert_eq!(RedisUrls::One("redis://a:1, redis://b:2".into()).list(), vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(RedisUrls::Many(vec!["redis://a:1".into()]).list(), vec!["redis://a:1"]);
        let c = CacheConfig { redis_url: Some(RedisUrls::One("http://x".into())), ..CacheConfig::default() };
        assert!(c.check().is_err());
    }
}
