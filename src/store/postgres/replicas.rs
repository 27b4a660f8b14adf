//! Streaming replicas of a shard, for the reads allowed to be slightly stale (catalog pages,
//! product reads, seed lists and counts). A monitor measures each replica's replay lag; a read
//! goes to a replica only while its lag is within the budget and the same key was not written
//! through this instance within that window (read-your-writes), otherwise to the primary.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Client, Pool};

use super::build_pool;
use crate::config::PostgresConfig;
use crate::store::{NodeReport, StoreResult};

const POLL: Duration = Duration::from_millis(250);
const UNREACHABLE: i64 = -1;
/// The node is not in recovery: after a failover a listed replica may be the shard's leader
/// (Patroni moves leadership between the same nodes), and its reads belong to the primary path.
const LEADING: i64 = -2;

struct Replica {
    address: String,
    pool: Pool,
    /// Replay lag in ms as last measured; `UNREACHABLE` when the probe failed, `LEADING` when
    /// the node is a primary now.
    lag_ms: AtomicI64,
    /// Wall-clock ms up to which this replica had replayed at the last probe.
    replayed_until_ms: AtomicI64,
}

pub struct Replicas {
    shard: String,
    nodes: Vec<Arc<Replica>>,
    budget: Duration,
    next: AtomicUsize,
    recent_writes: Mutex<HashMap<String, Instant>>,
    /// A write that may touch any key (a schema change).
    global_write: Mutex<Option<Instant>>,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Replicas {
    pub fn new(shard: &str, urls: &[String], cfg: &PostgresConfig) -> anyhow::Result<Replicas> {
        let mut nodes = Vec::new();
        for url in urls {
            let (pool, address) = build_pool(shard, url, cfg)?;
            nodes.push(Arc::new(Replica {
                address,
                pool,
                lag_ms: AtomicI64::new(UNREACHABLE),
                replayed_until_ms: AtomicI64::new(0),
            }));
        }
        let replicas = Replicas {
            shard: shard.to_owned(),
            nodes,
            budget: Duration::from_millis(cfg.replica_lag_budget_ms),
            next: AtomicUsize::new(0),
            recent_writes: Mutex::new(HashMap::new()),
            global_write: Mutex::new(None),
            monitor: Mutex::new(None),
        };
        if !replicas.nodes.is_empty() {
            let watched = replicas.nodes.clone();
            let shard = replicas.shard.clone();
            *replicas.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::spawn(monitor(shard, watched)));
        }
        Ok(replicas)
    }

    /// The window in which a key written here is read from the primary only.
    fn window(&self) -> Duration {
        self.budget + POLL * 2
    }

    pub fn wrote(&self, key: &str) {
        // Every write passes here: a shard without replicas takes no lock for it.
        if self.nodes.is_empty() {
            return;
        }
        let mut w = self.recent_writes.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 10_000 {
            let window = self.window();
            w.retain(|_, at| at.elapsed() < window);
        }
        w.insert(key.to_owned(), Instant::now());
    }

    /// Runs a write of `key` and, if it succeeded, reads `key` from the primary for the window
    /// counted from its end. A write that failed or was refused opens no window: nothing of it is
    /// to be read back, and after a refusal from a dead primary its reads keep their replicas.
    pub async fn after_write<T>(&self, key: &str, write: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        self.after_writes(&[key], write).await
    }

    /// `after_write` for a write of several keys.
    pub async fn after_writes<T>(&self, keys: &[&str], write: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let done = write.await;
        if done.is_ok() {
            keys.iter().for_each(|k| self.wrote(k));
        }
        done
    }

    pub fn wrote_everything(&self) {
        *self.global_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// A pooled connection to a replica fit to serve `key`, or `None` (use the primary).
    pub async fn pick(&self, key: &str) -> Option<Client> {
        if self.nodes.is_empty() {
            return None;
        }
        let recent = |at: &Instant| at.elapsed() < self.window();
        let recently_written = self.global_write.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(recent)
            || self.recent_writes.lock().unwrap_or_else(|p| p.into_inner()).get(key).is_some_and(recent);
        if recently_written {
            return None;
        }
        // A client that wrote elsewhere says when (a consistency token): only a replica that had
        // replayed past that moment may answer it.
        let read_after = crate::consistency::read_after_ms();
        let fresh_enough = |r: &Replica| read_after.is_none_or(|t| r.replayed_until_ms.load(Ordering::Relaxed) >= t);
        self.first_within_budget(fresh_enough, "replica").await
    }

    /// A replica within the lag budget, whatever this instance wrote or the client asked to
    /// read after: for a read whose primary cannot be reached (`store::fallback`).
    pub async fn pick_within_budget(&self) -> Option<Client> {
        self.first_within_budget(|_| true, "replica_fallback").await
    }

    /// A connection to the next replica, round robin, within the lag budget and `fit`; counted
    /// as a read of `node`.
    async fn first_within_budget(&self, fit: impl Fn(&Replica) -> bool, node: &'static str) -> Option<Client> {
        let budget = self.budget.as_millis() as i64;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.nodes.len() {
            let r = &self.nodes[(start + i) % self.nodes.len()];
            if (0..=budget).contains(&r.lag_ms.load(Ordering::Relaxed)) && fit(r) {
                if let Ok(c) = r.pool.get().await {
                    metrics::counter!("vitrina_reads_total", "shard" => self.shard.clone(), "node" => node).increment(1);
                    return Some(c);
                }
            }
        }
        None
    }

    pub fn report(&self) -> Vec<NodeReport> {
        self.nodes
            .iter()
            .map(|r| {
                let lag = r.lag_ms.load(Ordering::Relaxed);
                NodeReport {
                    name: r.address.clone(),
                    role: if lag == LEADING { "primary" } else { "replica" }.into(),
                    address: r.address.clone(),
                    reachable: lag != UNREACHABLE,
                    replay_lag_ms: (lag >= 0).then_some(lag as u64),
                }
            })
            .collect()
    }

    pub fn stop(&self) {
        if let Some(h) = self.monitor.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        for r in &self.nodes {
            r.pool.close();
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn monitor(shard: String, nodes: Vec<Arc<Replica>>) {
    loop {
        for r in &nodes {
            let probed_at = chrono::Utc::now().timestamp_millis();
            let lag = probe(&r.pool).await.unwrap_or(UNREACHABLE);
            if lag >= 0 {
                r.replayed_until_ms.store(probed_at - lag, Ordering::Relaxed);
            }
            let before = r.lag_ms.swap(lag, Ordering::Relaxed);
            if (before == UNREACHABLE) != (lag == UNREACHABLE) {
                tracing::warn!(shard = %shard, replica = %r.address, reachable = lag != UNREACHABLE, "replica reachability changed");
            }
            if (before == LEADING) != (lag == LEADING) && lag != UNREACHABLE {
                tracing::warn!(shard = %shard, replica = %r.address, leading = lag == LEADING, "replica role changed");
            }
            if lag >= 0 {
                metrics::gauge!("vitrina_replica_lag_seconds", "shard" => shard.clone(), "replica" => r.address.clone())
                    .set(lag as f64 / 1000.0);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Replay lag from `pg_last_xact_replay_timestamp`; zero when everything received is replayed
/// (an idle primary sends nothing to be late with); `LEADING` when the node has been promoted.
async fn probe(pool: &Pool) -> Option<i64> {
    let c = tokio::time::timeout(Duration::from_secs(1), pool.get()).await.ok()?.ok()?;
    let row = c
        .query_one(
            "SELECT CASE
               WHEN NOT pg_is_in_recovery() THEN -2
               WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
               ELSE coalesce((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint, 0)
             END",
            &[],
        )
        .await
        .ok()?;
    let lag: i64 = row.get(0);
    Some(if lag == LEADING { LEADING } else { lag.max(0) })
}
