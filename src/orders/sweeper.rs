//! Cancels placed orders whose payment hold ran out, releasing their stock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Action;
use crate::clock::Clock;
use crate::inventory::sold_out::SoldOut;
use crate::store::{Slot, StoreError};

const BATCH: usize = 100;

/// What the sweep works with: the store in force, the time, and the sold-out memory it tells
/// of released stock.
#[derive(Clone)]
pub struct Sweeper {
    pub store: Slot,
    pub clock: Clock,
    pub sold_out: Arc<SoldOut>,
}

impl Sweeper {
    /// Sweeps every `every` until `stop` turns true.
    pub async fn run(self, every: Duration, mut stop: watch::Receiver<bool>) {
        let every = every.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.sweep_once().await {
                tracing::warn!(error = %e, "order expiry sweep failed; will retry");
            }
        }
    }

    /// Expires every order due now; returns how many were cancelled.
    pub async fn sweep_once(&self) -> Result<usize, StoreError> {
        let mut cancelled = 0;
        loop {
            let now = self.clock.now();
            let store = self.store.get();
            let due = store.expired_orders(now, BATCH).await?;
            let n = due.len();
            for (shop, id) in due {
                match store
                    .on_shop(&shop, "transition_order", |shard| shard.transition_order(&shop, &id, Action::Expire, now))
                    .await
                {
                    Ok(order) => {
                        self.sold_out.released(&order);
                        cancelled += 1;
                        metrics::counter!("vitrina_orders_total", "outcome" => "expired").increment(1);
                    }
                    // Paid or cancelled meanwhile: the guard in the transition refused, as it should.
                    Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if n < BATCH {
                return Ok(cancelled);
            }
        }
    }
}
