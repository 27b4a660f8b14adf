//! What makes an instance forget: the outbox events every instance sees on its bus (writes made
//! anywhere), Redis pub/sub messages (sooner), and the periodic settling of invalidations that
//! could not reach Redis.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::redis::EVERYTHING;
use super::{collection_scope, shop_scope, Cache};
use crate::store::outbox::OutboxEvent;

/// The cache scope an event changes, if any.
pub fn scope_of(e: &OutboxEvent) -> Option<String> {
    if e.kind.starts_with("vitrina.product.") || e.kind.starts_with("vitrina.shop.") {
        return e.shop.as_deref().map(shop_scope);
    }
    if e.kind == "vitrina.user.created" {
        // Aggregates of seed documents are `collections/<name>/<id>`.
        let mut parts = e.aggregate.splitn(3, '/');
        if let (Some("collections"), Some(name)) = (parts.next(), parts.next()) {
            return Some(collection_scope(name));
        }
    }
    None
}

/// Runs until `stop`: the bus, the Redis subscription and the repair loop.
pub async fn run(cache: Arc<Cache>, mut events: broadcast::Receiver<Arc<OutboxEvent>>, mut stop: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(l2) = cache.redis().cloned() {
        let c = cache.clone();
        tasks.spawn(l2.subscribe(move |message| c.on_message(message), stop.clone()));
        let (c, mut stop) = (cache.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => c.repair().await,
                    _ = stop.changed() => return,
                }
            }
        });
    }
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => {
                    if let Some(scope) = scope_of(&e) {
                        cache.bump_local(&scope, Some(e.created_at.timestamp_millis()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "cache fell behind the event bus; dropping this instance's entries");
                    cache.bump_local(EVERYTHING, None);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = stop.changed() => break,
        }
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, shop: Option<&str>, aggregate: &str) -> OutboxEvent {
        OutboxEvent {
            position: "1".into(),
            id: "e".into(),
            shop: shop.map(str::to_owned),
            aggregate: aggregate.into(),
            kind: kind.into(),
            sequence: 1,
            envelope: "{}".into(),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn catalog_and_shop_events_name_the_shop_seed_users_their_collection() {
        assert_eq!(scope_of(&event("vitrina.product.upserted", Some("acme"), "acme/products/A")), Some("shop:acme".into()));
        assert_eq!(scope_of(&event("vitrina.shop.created", Some("acme"), "acme")), Some("shop:acme".into()));
        assert_eq!(scope_of(&event("vitrina.user.created", None, "collections/helloDoc/1")), Some("collection:helloDoc".into()));
        assert_eq!(scope_of(&event("vitrina.order.placed", Some("acme"), "acme/orders/1")), None);
        assert_eq!(scope_of(&event("vitrina.stock.changed", Some("acme"), "acme/stock/A")), None);
    }
}
