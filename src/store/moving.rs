//! Moving a shop to another shard: fence its writes on the old shard, copy its rows, verify the
//! copy, flip the directory, and leave a forwarding mark behind. Instances with a stale
//! directory are redirected by the mark (`Moved`) on their next write.
//!
//! Events: the shop's outbox rows stay on the old shard, whose relay publishes any not yet sent
//! (with the subscriptions it had there); the new shard gets a copy as history for its pull feed,
//! never published again, and the per-aggregate sequences, so the next event continues them.
//! Webhook subscriptions are copied; their pending deliveries finish from the old shard.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Store, StoreError, StoreResult, MOVING};
use crate::shops::ShopId;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MoveReport {
    pub shop: String,
    pub from: String,
    pub to: String,
    pub products: usize,
    pub stock_rows: usize,
    pub orders: usize,
    pub idempotency_keys: usize,
    /// The shop's events, kept on the new shard as the history its feed serves.
    pub events: usize,
    pub webhooks: usize,
    /// How long the shop's writes were held (answered 503 with Retry-After).
    pub fenced_ms: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RebalanceReport {
    pub moved: Vec<MoveReport>,
    /// Shops that could not be moved this time, with why; a later run retries them.
    pub failed: Vec<MoveFailure>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MoveFailure {
    pub shop: String,
    pub to: String,
    pub error: String,
}

impl Store {
    /// Moves every shop living off its ring owner (left behind when a shard was added, or moved
    /// by hand) to its owner, one at a time, so each is fenced only for its own copy.
    pub async fn rebalance(&self, now: DateTime<Utc>) -> StoreResult<RebalanceReport> {
        let mut report = RebalanceReport { moved: Vec::new(), failed: Vec::new() };
        // One shard: every shop lives on its owner.
        if self.ring().shards().len() < 2 {
            return Ok(report);
        }
        for (i, name) in self.ring().shards().iter().enumerate() {
            for shop in self.call(i, "shop_ids", self.shard(i).shop_ids()).await? {
                let owner = self.ring().owner(shop.as_str()).to_owned();
                if &owner == name {
                    continue;
                }
                match self.move_shop(&shop, &owner, now).await {
                    Ok(r) => report.moved.push(r),
                    Err(e) => report.failed.push(MoveFailure { shop: shop.to_string(), to: owner, error: e.to_string() }),
                }
            }
        }
        Ok(report)
    }

    pub async fn move_shop(&self, shop: &ShopId, to: &str, now: DateTime<Utc>) -> StoreResult<MoveReport> {
        let names = self.ring().shards();
        if names.len() < 2 {
            // A valid request the store's layout refuses: a conflict with its state, not bad input.
            return Err(StoreError::conflict("not_sharded", "this store has a single shard: there is nowhere to move a shop"));
        }
        let to_index = names
            .iter()
            .position(|n| n == to)
            .ok_or_else(|| StoreError::invalid("unknown_shard", format!("no shard named {to}; shards are {names:?}")))?;
        // Finds (and pins) a shop left off its ring owner, so `home` names where it really is.
        self.get_shop(shop).await?.ok_or_else(|| StoreError::not_found("shop", shop.as_str()))?;
        let from_index = self.home(shop);
        if from_index == to_index {
            return Err(StoreError::conflict("already_there", format!("shop {shop} already lives on {to}")));
        }
        let (source, target) = (self.shard(from_index), self.shard(to_index));
        let from = names[from_index].clone();

        // Fence: from here the shop's writes on the old shard answer "retry shortly".
        self.call(from_index, "mark_shop", source.mark_shop(shop, Some(MOVING))).await?;
        let fenced = std::time::Instant::now();
        let copied = async {
            let dump = self.call(from_index, "export_shop", source.export_shop(shop)).await?;
            self.call(to_index, "import_shop", target.import_shop(dump.clone())).await?;
            let copy = self.call(to_index, "export_shop", target.export_shop(shop)).await?;
            if !dump.same_rows(&copy) {
                return Err(StoreError::Backend(format!("the copy of shop {shop} on {to} differs from the original")));
            }
            Ok(dump.counts())
        }
        .await;
        let counts = match copied {
            Ok(c) => c,
            Err(e) => {
                // Nothing points at the copy yet: lift the fence and the shop carries on where it was.
                if let Err(lift) = self.call(from_index, "mark_shop", source.mark_shop(shop, None)).await {
                    tracing::error!(shop = %shop, error = %lift, "could not lift the move fence; the shop's writes stay held");
                }
                return Err(e);
            }
        };
        // Flip. A pin is needed only when the new home is not the ring's choice.
        let pin = (self.ring().owner(shop.as_str()) != to).then_some(to);
        self.set_pin(shop, pin, now).await?;
        self.call(from_index, "mark_shop", source.mark_shop(shop, Some(to))).await?;
        let fenced_ms = fenced.elapsed().as_millis() as u64;
        tracing::info!(shop = %shop, from = %from, to = %to, fenced_ms, "shop moved");
        Ok(MoveReport {
            shop: shop.to_string(),
            from,
            to: to.to_owned(),
            products: counts[0],
            stock_rows: counts[1],
            orders: counts[2],
            idempotency_keys: counts[3],
            events: counts[4],
            webhooks: counts[5],
            fenced_ms,
        })
    }
}
