//! A pooled primary connection that reports, when handed back, how long its call held it, and
//! the pool's use when it was taken: the per-shard figures that make a hot shard visible.

use std::ops::{Deref, DerefMut};
use std::time::Instant;

use deadpool_postgres::{Client, Pool};

use crate::store::{StoreError, StoreResult};

pub struct Held {
    /// Always present until `into_client` takes it.
    client: Option<Client>,
    shard: String,
    taken: Instant,
}

pub async fn take(pool: &Pool, shard: &str) -> StoreResult<Held> {
    let t0 = Instant::now();
    let got = pool.get().await;
    let status = pool.status();
    metrics::histogram!("vitrina_pool_wait_seconds", "shard" => shard.to_owned()).record(t0.elapsed().as_secs_f64());
    metrics::gauge!("vitrina_pool_in_use", "shard" => shard.to_owned()).set((status.size - status.available) as f64);
    metrics::gauge!("vitrina_pool_size", "shard" => shard.to_owned()).set(status.max_size as f64);
    match got {
        Ok(client) => Ok(Held { client: Some(client), shard: shard.to_owned(), taken: Instant::now() }),
        Err(e) => {
            metrics::counter!("vitrina_store_errors_total", "shard" => shard.to_owned(), "role" => "primary").increment(1);
            // Every connection busy is load, which admission answers; no connection to be had
            // is the database being gone, which the shard's breaker answers.
            let busy = matches!(e, deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
            let detail = format!("shard {shard}: {e}");
            Err(if busy { StoreError::Unavailable(detail) } else { StoreError::Unreachable(detail) })
        }
    }
}

impl Held {
    /// The connection itself, for a caller that keeps it beyond one call (it stops counting).
    pub fn into_client(mut self) -> Client {
        self.client.take().expect("present until taken")
    }
}

impl Deref for Held {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until taken")
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until taken")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.client.is_none() {
            return;
        }
        crate::store::held_for(std::mem::take(&mut self.shard), "primary", self.taken);
    }
}
