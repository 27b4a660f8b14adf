//! The second tier: Redis, one node or a cluster. Every call has a short timeout and passes the
//! circuit breaker; an error is the caller's cue to go to the database, never a failed read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue};
use tokio::sync::{watch, OnceCell};

use super::config::CacheConfig;
use crate::breaker::{Breaker, BreakerState};

/// Sent when an instance could not record an invalidation: every instance drops everything.
pub const EVERYTHING: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("the Redis breaker is open")]
    Refused,
    #[error("Redis: {0}")]
    Failed(String),
}

enum Target {
    Single(ConnectionManager),
    /// Connected on first use, so an instance starts while the cluster is down.
    Cluster {
        client: Box<ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
}

pub struct Redis {
    target: Target,
    /// Where invalidations travel between instances: `<namespace>:invalidate`.
    channel: String,
    urls: Vec<String>,
    pub breaker: Breaker,
    timeout: Duration,
}

impl Redis {
    pub fn new(urls: &[String], cfg: &CacheConfig) -> anyhow::Result<Redis> {
        let timeout = Duration::from_millis(cfg.redis_timeout_ms);
        let target = if urls.len() == 1 {
            let client = redis::Client::open(urls[0].as_str())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            Target::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        } else {
            let client =
                ClusterClient::builder(urls.to_vec()).connection_timeout(timeout).response_timeout(timeout).retries(2).build()?;
            Target::Cluster { client: Box::new(client), conn: OnceCell::new() }
        };
        Ok(Redis {
            target,
            channel: format!("{}:invalidate", cfg.namespace),
            urls: urls.to_vec(),
            breaker: Breaker::new("redis", "l2", cfg.breaker.clone()),
            timeout,
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match &self.target {
            Target::Single(m) => cmd.query_async(&mut m.clone()).await,
            Target::Cluster { client, conn } => {
                let c = conn.get_or_try_init(|| client.get_async_connection()).await?;
                cmd.query_async(&mut c.clone()).await
            }
        }
    }

    /// One command through the breaker, under the timeout, timed.
    pub async fn call<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T, L2Error> {
        let t0 = Instant::now();
        let failed = |r: &Result<redis::RedisResult<T>, _>| !matches!(r, Ok(Ok(_)));
        let r = self.breaker.call(tokio::time::timeout(self.timeout, self.query(cmd)), failed).await.ok_or(L2Error::Refused)?;
        let elapsed = t0.elapsed();
        let result = if matches!(r, Ok(Ok(_))) { "ok" } else { "error" };
        metrics::histogram!("vitrina_redis_seconds", "op" => op, "result" => result).record(elapsed.as_secs_f64());
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(L2Error::Failed(e.to_string())),
            Err(_) => Err(L2Error::Failed(format!("{op} timed out after {:?}", self.timeout))),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        self.call("get", redis::cmd("GET").arg(key)).await
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), L2Error> {
        self.call("set", redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl.as_millis() as u64)).await
    }

    /// A short lock so one instance of many loads a missing key; false when another holds it.
    pub async fn try_lock(&self, key: &str, ttl: Duration) -> Result<bool, L2Error> {
        let set: Option<String> =
            self.call("lock", redis::cmd("SET").arg(key).arg(1).arg("NX").arg("PX").arg(ttl.as_millis() as u64)).await?;
        Ok(set.is_some())
    }

    pub async fn del(&self, key: &str) -> Result<(), L2Error> {
        self.call("del", redis::cmd("DEL").arg(key)).await
    }

    pub async fn incr(&self, key: &str) -> Result<u64, L2Error> {
        self.call("incr", redis::cmd("INCR").arg(key)).await
    }

    /// Values of keys that share a hash slot (one `{tag}`), as numbers; absent is 0.
    pub async fn get_numbers(&self, keys: &[&str]) -> Result<Vec<u64>, L2Error> {
        let values: Vec<Option<u64>> = self.call("mget", redis::cmd("MGET").arg(keys)).await?;
        Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    pub async fn publish(&self, message: &str) -> Result<(), L2Error> {
        self.call("publish", redis::cmd("PUBLISH").arg(&self.channel).arg(message)).await
    }

    /// Listens for invalidations from other instances until `stop`, reconnecting as needed.
    /// A cluster forwards a publish to every node, so one node's subscription hears them all.
    /// After a gap (connection lost, then back) `on_message(EVERYTHING)` runs: messages may have
    /// been missed.
    pub async fn subscribe(self: Arc<Self>, on_message: impl Fn(&str) + Send + Sync, mut stop: watch::Receiver<bool>) {
        let mut attempt = 0usize;
        let mut had_gap = false;
        loop {
            if *stop.borrow() {
                return;
            }
            let url = &self.urls[attempt % self.urls.len()];
            attempt += 1;
            let connected = async {
                let client = redis::Client::open(url.as_str())?;
                let mut pubsub = tokio::time::timeout(self.timeout * 4, client.get_async_pubsub())
                    .await
                    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
                pubsub.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            }
            .await;
            match connected {
                Ok(pubsub) => {
                    if had_gap {
                        on_message(EVERYTHING);
                    }
                    tracing::debug!("listening for cache invalidations");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            m = messages.next() => match m {
                                Some(m) => {
                                    if let Ok(text) = m.get_payload::<String>() {
                                        on_message(&text);
                                    }
                                }
                                None => break,
                            },
                            _ = stop.changed() => return,
                        }
                    }
                    tracing::warn!("cache invalidation subscription lost; reconnecting");
                    had_gap = true;
                }
                Err(e) => {
                    had_gap = true;
                    tracing::debug!(error = %e, "cannot subscribe to cache invalidations yet");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
