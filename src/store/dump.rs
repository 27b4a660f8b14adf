//! A shop's rows as one value: what a move copies from its old shard to its new one.

use chrono::{DateTime, Utc};

use crate::catalog::Product;
use crate::orders::Order;
use crate::shops::ShopRecord;
use crate::store::outbox::Webhook;

#[derive(Debug, Clone, PartialEq)]
pub struct StockRow {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRow {
    pub key: String,
    pub request_hash: Vec<u8>,
    pub status_code: i32,
    pub response: String,
    pub created_at: DateTime<Utc>,
}

/// One of the shop's outbox rows. The new shard keeps it as history: its feed serves it, its
/// relay does not publish it again (the old shard's relay does).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: String,
    pub aggregate: String,
    pub kind: String,
    pub sequence: i64,
    pub envelope: String,
    pub created_at: DateTime<Utc>,
    /// The position the source shard's feed issued for this row, so a consumer's cursor from
    /// there can be found again here.
    pub position: String,
}

/// A shop's outbox rows in feed order, and the last sequence of each of its aggregates.
pub type ShopEvents = (Vec<EventRow>, Vec<(String, i64)>);

#[derive(Debug, Clone)]
pub struct ShopDump {
    pub shop: ShopRecord,
    pub products: Vec<Product>,
    pub stock: Vec<StockRow>,
    pub orders: Vec<Order>,
    pub idempotency: Vec<IdempotencyRow>,
    /// In the source shard's feed order.
    pub events: Vec<EventRow>,
    /// Last sequence per aggregate, so the shop's next events continue them.
    pub sequences: Vec<(String, i64)>,
    pub webhooks: Vec<Webhook>,
    /// The shard the rows come from; set by the move, recorded with the imported events.
    pub origin: String,
}

impl ShopDump {
    /// Row counts per table, to verify a copy.
    pub fn counts(&self) -> [usize; 6] {
        [self.products.len(), self.stock.len(), self.orders.len(), self.idempotency.len(), self.events.len(), self.webhooks.len()]
    }

    /// The same rows, in the same order, with the same content.
    pub fn same_rows(&self, other: &ShopDump) -> bool {
        self.shop.shop.id == other.shop.shop.id
            && self.shop.api_key_hash == other.shop.api_key_hash
            && self.products == other.products
            && self.stock == other.stock
            && self.orders == other.orders
            && self.idempotency == other.idempotency
            && event_ids(self) == event_ids(other)
            && self.sequences == other.sequences
            && self
                .webhooks
                .iter()
                .map(|w| (&w.id, &w.url, &w.events))
                .eq(other.webhooks.iter().map(|w| (&w.id, &w.url, &w.events)))
    }
}

/// Compared as a set: a shop moving back finds its older events still here, ahead of the rest.
fn event_ids(d: &ShopDump) -> Vec<(&str, i64)> {
    let mut ids: Vec<_> = d.events.iter().map(|e| (e.id.as_str(), e.sequence)).collect();
    ids.sort_unstable();
    ids
}
