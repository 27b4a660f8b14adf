//! The in-process bus: every instance tails every shard's outbox from where it stood at start
//! and hands each committed event to local subscribers (cache invalidation, later sagas). It
//! sees the writes of every instance, not only its own, and needs no leader: its progress is a
//! cursor in memory. A subscriber that falls behind by more than the channel holds is told how
//! many it missed (`Lagged`) and should drop what it cached.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::store::outbox::{Outbox, OutboxEvent};

#[derive(Clone)]
pub struct Bus(broadcast::Sender<Arc<OutboxEvent>>);

impl Bus {
    pub fn new(capacity: usize) -> Bus {
        Bus(broadcast::channel(capacity.max(16)).0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OutboxEvent>> {
        self.0.subscribe()
    }

    /// Tails one shard until `stop` turns true.
    pub async fn tail(self, outbox: Arc<dyn Outbox>, poll: Duration, mut stop: watch::Receiver<bool>) {
        let mut cursor = loop {
            match outbox.head().await {
                Ok(head) => break head,
                Err(e) => tracing::debug!(shard = outbox.shard(), error = %e, "bus: reading the outbox head failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        };
        loop {
            if *stop.borrow() {
                return;
            }
            match outbox.read(cursor.as_deref(), 512).await {
                Ok(events) if !events.is_empty() => {
                    cursor = events.last().map(|e| e.position.clone());
                    for e in events {
                        // No subscriber is not an error: the event is simply not needed here.
                        let _ = self.0.send(Arc::new(e));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(shard = outbox.shard(), error = %e, "bus: reading the outbox failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
