//! The sold-out memory: SKUs this instance knows have nothing available, so order placement can
//! refuse them without a write transaction or a lock on the stock row.
//!
//! It learns from `vitrina.stock.changed` events on the bus (the store records one whenever a
//! SKU's available stock reaches 0 or rises from 0, and on every set or adjustment) and from the
//! store's own refusals. Being wrong in the "sold out" direction refuses a buyer who could have
//! been served, so every mark expires after a short time and the store is asked again; being
//! wrong the other way only costs the store round trip this memory exists to save.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::shops::ShopId;
use crate::store::outbox::OutboxEvent;

/// Beyond this many marks new ones are not kept: the memory is an optimisation, never a cost.
const MAX_MARKS: usize = 100_000;

pub struct SoldOut {
    ttl: Duration,
    marks: Mutex<HashMap<(String, String), Instant>>,
}

impl SoldOut {
    /// `ttl` zero turns the memory off: nothing is marked, everything goes to the store.
    pub fn new(ttl: Duration) -> SoldOut {
        SoldOut { ttl, marks: Mutex::new(HashMap::new()) }
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mark(&self, shop: &str, sku: &str, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut marks = self.marks();
        if marks.len() >= MAX_MARKS {
            marks.retain(|_, until| *until > now);
            if marks.len() >= MAX_MARKS {
                return;
            }
        }
        marks.insert((shop.to_owned(), sku.to_owned()), now + self.ttl);
    }

    pub fn clear(&self, shop: &str, sku: &str) {
        self.marks().remove(&(shop.to_owned(), sku.to_owned()));
    }

    /// A SKU's available stock as just learnt: nothing marks it, anything clears it.
    fn learn(&self, shop: &str, sku: &str, available: i64, now: Instant) {
        match available {
            0 => self.mark(shop, sku, now),
            _ => self.clear(shop, sku),
        }
    }

    /// What this instance itself just wrote, so its own next order does not wait for the bus.
    pub fn note(&self, shop: &ShopId, stock: &super::Stock) {
        self.learn(shop.as_str(), &stock.sku, stock.available, Instant::now());
    }

    /// An order this instance cancelled gave its units back: its SKUs are available again.
    pub fn released(&self, order: &crate::orders::Order) {
        order.lines.iter().for_each(|l| self.clear(order.shop.as_str(), &l.sku));
    }

    /// Forgets everything, e.g. when the bus may have dropped events or the store was swapped.
    pub fn clear_all(&self) {
        self.marks().clear();
    }

    /// The SKUs among `skus` known to be sold out at `now`, in the order given.
    pub fn sold_out<'a>(&self, shop: &ShopId, skus: impl IntoIterator<Item = &'a str>, now: Instant) -> Vec<String> {
        let mut marks = self.marks();
        if marks.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for sku in skus {
            let key = (shop.as_str().to_owned(), sku.to_owned());
            match marks.get(&key) {
                Some(until) if *until > now => out.push(sku.to_owned()),
                Some(_) => {
                    marks.remove(&key);
                }
                None => {}
            }
        }
        out
    }

    /// Applies one bus event: a stock change marks or clears its SKU, a deleted product clears it.
    pub fn apply(&self, e: &OutboxEvent, now: Instant) {
        let Some(shop) = e.shop.as_deref() else { return };
        match e.kind.as_str() {
            "vitrina.stock.changed" => {
                let Ok(envelope) = serde_json::from_str::<serde_json::Value>(&e.envelope) else { return };
                let data = &envelope["data"];
                if let (Some(sku), Some(available)) = (data["sku"].as_str(), data["available"].as_i64()) {
                    self.learn(shop, sku, available, now);
                }
            }
            "vitrina.product.deleted" => {
                if let Some((_, sku)) = e.aggregate.rsplit_once("/products/") {
                    self.clear(shop, sku);
                }
            }
            _ => {}
        }
    }
}

/// Keeps `memory` current from the bus until `stop`.
pub async fn run(memory: Arc<SoldOut>, mut events: broadcast::Receiver<Arc<OutboxEvent>>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => memory.apply(&e, Instant::now()),
                Err(broadcast::error::RecvError::Lagged(_)) => memory.clear_all(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock_event(shop: &str, sku: &str, available: i64) -> OutboxEvent {
        let data = serde_json::json!({ "sku": sku, "on_hand": 5, "reserved": 5 - available, "available": available });
        OutboxEvent {
            position: "1".into(),
            id: "e".into(),
            shop: Some(shop.into()),
            aggregate: format!("{shop}/stock/{sku}"),
            kind: "vitrina.stock.changed".into(),
            sequence: 1,
            envelope: serde_json::json!({ "data": data }).to_string(),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn stock_events_mark_and_clear_and_marks_expire() {
        let memory = SoldOut::new(Duration::from_secs(5));
        let shop = ShopId::parse("acme").unwrap();
        let t0 = Instant::now();
        memory.apply(&stock_event("acme", "A", 0), t0);
        memory.apply(&stock_event("other", "B", 0), t0);
        assert_eq!(memory.sold_out(&shop, ["A", "B", "C"], t0), vec!["A"]);
        memory.apply(&stock_event("acme", "A", 3), t0);
        assert!(memory.sold_out(&shop, ["A"], t0).is_empty(), "a refill clears the mark");

        memory.mark("acme", "C", t0);
        assert_eq!(memory.sold_out(&shop, ["C"], t0 + Duration::from_secs(4)), vec!["C"]);
        assert!(memory.sold_out(&shop, ["C"], t0 + Duration::from_secs(5)).is_empty(), "marks expire");
    }

    #[test]
    fn a_deleted_product_and_a_zero_ttl_leave_no_mark() {
        let memory = SoldOut::new(Duration::from_secs(5));
        let shop = ShopId::parse("acme").unwrap();
        let t0 = Instant::now();
        memory.mark("acme", "A", t0);
        let mut deleted = stock_event("acme", "A", 0);
        deleted.kind = "vitrina.product.deleted".into();
        deleted.aggregate = "acme/products/A".into();
        memory.apply(&deleted, t0);
        assert!(memory.sold_out(&shop, ["A"], t0).is_empty());

        let off = SoldOut::new(Duration::ZERO);
        off.apply(&stock_event("acme", "A", 0), t0);
        assert!(off.sold_out(&shop, ["A"], t0).is_empty());
    }
}
