//! Keys in flight. The stored record (written in the order's own transaction) answers repeats
//! of finished requests; this guard answers a repeat that arrives while the first is still
//! being processed, with 409 instead of a second attempt.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::PlaceOutcome;
use crate::shops::ShopId;

pub const MAX_KEY_LEN: usize = 255;

#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<(ShopId, String)>>>);

/// Holds a key while its request runs; dropping it frees the key, also on error or panic.
pub struct Claim {
    set: InFlight,
    key: (ShopId, String),
}

impl InFlight {
    pub fn claim(&self, shop: &ShopId, key: &str) -> Option<Claim> {
        let k = (shop.clone(), key.to_owned());
        let fresh = self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(k.clone());
        fresh.then(|| Claim { set: self.clone(), key: k })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// What a finished placement stored under its key: the request's fingerprint and the answer.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub request_hash: Vec<u8>,
    pub status: u16,
    pub body: serde_json::Value,
}

impl IdempotencyRecord {
    /// The stored answer again for the same request, a refusal for another one under the key.
    pub fn outcome(self, fingerprint: &[u8; 32]) -> PlaceOutcome {
        if self.request_hash != fingerprint[..] {
            return PlaceOutcome::KeyReused;
        }
        PlaceOutcome::Replayed { status: self.status, body: self.body }
    }
}

/// Keys are opaque to us but must be printable ASCII of bounded length.
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_once_until_released() {
        let f = InFlight::default();
        let shop = ShopId::parse("acme").unwrap();
        let other = ShopId::parse("beta").unwrap();
        let c = f.claim(&shop, "k1").unwrap();
        assert!(f.claim(&shop, "k1").is_none());
        assert!(f.claim(&other, "k1").is_some(), "keys are per shop");
        drop(c);
        assert!(f.claim(&shop, "k1").is_some());
    }

    #[test]
    fn key_format() {
        assert!(valid_key("order-2026-11-21-abc"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(MAX_KEY_LEN + 1)));
    }
}
