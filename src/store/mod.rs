//! The storage seam. Each backend (embedded SQLite, PostgreSQL) implements the capability
//! traits of one shard (`capabilities`); the application talks to [`Store`], the router over one
//! or several shards (`router`), and nothing above this module knows which backend it talks to.
//! Every business write is one shard transaction that also writes its outbox event.

pub mod capabilities;
pub mod dump;
pub mod fallback;
pub mod filters;
pub mod inbox;
pub mod moving;
pub mod outbox;
pub mod postgres;
pub mod router;
pub mod sqlite;
pub mod transactions;

use chrono::{DateTime, Utc};

pub use self::capabilities::{Catalog, Collections, Events, Inventory, Moves, Orders, Shard, Shops, Webhooks};
pub use self::router::{Slot, Store};
use crate::shops::ShopId;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// A rule of the domain refused the write; nothing was changed.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// Some order lines cannot be served; nothing was reserved. `sold_out` names those of
    /// them with nothing available at all, for the sold-out memory.
    #[error("insufficient stock for {skus:?}")]
    InsufficientStock { skus: Vec<String>, sold_out: Vec<String> },
    /// Input that passed the edge checks but is inconsistent with stored data.
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    /// The backend cannot take the call now (shutting down, overloaded, unreachable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database cannot be reached or the connection broke: what opens a shard's breaker.
    #[error("store unreachable: {0}")]
    Unreachable(String),
    #[error("store failure: {0}")]
    Backend(String),
    /// The shop's data lives on another shard now; the router follows it.
    #[error("shop moved to shard {shard}")]
    Moved { shard: String },
}

/// `shops.moved_to` while a shop's rows are being copied: its writes wait for the move.
pub const MOVING: &str = "moving";

/// The mark a shop must carry for `next` to be set: a fence goes up on a live shop, and only a
/// fenced shop is released or sent on. Two moves of one shop can therefore never interleave.
pub fn mark_precondition(next: Option<&str>) -> Option<&'static str> {
    match next {
        Some(m) if m == MOVING => None,
        _ => Some(MOVING),
    }
}

/// Refusal when a shop's mark was not the one a step of a move expects.
pub fn mark_refused(shop: &ShopId, next: Option<&str>) -> StoreError {
    match next {
        Some(m) if m == MOVING => {
            StoreError::conflict("move_in_progress", format!("shop {shop} is being moved or has moved already"))
        }
        _ => StoreError::conflict("not_fenced", format!("shop {shop} is not fenced for a move")),
    }
}

/// Whether writes for a shop may proceed on this shard, from its `moved_to` mark.
pub fn home_check(shop: &ShopId, moved_to: Option<String>) -> StoreResult<()> {
    match moved_to {
        None => Ok(()),
        Some(m) if m == MOVING => Err(StoreError::Unavailable(format!("shop {shop} is being moved; retry shortly"))),
        Some(shard) => Err(StoreError::Moved { shard }),
    }
}

/// A domain rule's refusal, as the store reports it.
impl From<crate::refusal::Refusal> for StoreError {
    fn from(r: crate::refusal::Refusal) -> StoreError {
        match r {
            crate::refusal::Refusal::Conflict { code, detail } => StoreError::Conflict { code, detail },
            crate::refusal::Refusal::Invalid { code, detail } => StoreError::Invalid { code, detail },
        }
    }
}

/// The answer an idempotency record stored, read back; unreadable means the row is corrupt.
pub fn stored_answer(text: &str) -> StoreResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("stored response: {e}")))
}

impl StoreError {
    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        StoreError::NotFound { entity, id: id.into() }
    }
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Conflict { code, detail: detail.into() }
    }
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Invalid { code, detail: detail.into() }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Records one store call of `shard` for the per-shard metrics: how long it held its connection
/// (`role` says which kind), and whether it failed for a reason other than the domain's.
pub fn observe<T>(shard: &str, role: &'static str, started: std::time::Instant, result: &StoreResult<T>) {
    held_for(shard.to_owned(), role, started);
    if let Err(StoreError::Backend(_) | StoreError::Unavailable(_) | StoreError::Unreachable(_)) = result {
        metrics::counter!("vitrina_store_errors_total", "shard" => shard.to_owned(), "role" => role).increment(1);
    }
}

/// How long a call of `shard` held its connection, for `vitrina_store_seconds`.
pub fn held_for(shard: String, role: &'static str, started: std::time::Instant) {
    metrics::histogram!("vitrina_store_seconds", "shard" => shard, "role" => role).record(started.elapsed().as_secs_f64());
}

/// Time as every backend stores it: whole microseconds, so what a write returns equals what a
/// later read returns (ETags depend on it).
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Whether a product upsert created a new row or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Updated,
    Unchanged,
}

/// One node of the storage topology, as reported by `GET /`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeReport {
    pub name: String,
    pub role: String,
    pub address: String,
    pub reachable: bool,
    pub replay_lag_ms: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ShardReport {
    pub name: String,
    pub nodes: Vec<NodeReport>,
    /// Shops whose data lives here; null when the shard did not answer.
    pub shops: Option<u64>,
    /// The shard's circuit breaker: `closed`, `open` (writes refused at once, reads served by
    /// replicas) or `half_open`.
    pub breaker: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RingShare {
    pub shard: String,
    /// Share of the hash space (of virtual nodes) the shard owns, 0-1.
    pub share: f64,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StoreReport {
    /// `sqlite` or `postgres`.
    pub kind: String,
    pub shards: Vec<ShardReport>,
    /// Durability setting in force for acknowledged writes.
    pub durability: String,
    /// Ownership of the shard ring; empty when there is one shard.
    pub ring: Vec<RingShare>,
}

/// Events of one shop in feed order, and the position to continue after.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EventPage {
    /// CloudEvents 1.0 envelopes.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` to continue; the same as the request's `after` when nothing new arrived.
    pub next: Option<String>,
}

/// A read gathered from every shard. Shards that did not answer in time are named here
/// instead of failing the whole read.
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered<T> {
    pub value: T,
    pub unavailable: Vec<String>,
}

impl<T> Gathered<T> {
    pub fn complete(value: T) -> Gathered<T> {
        Gathered { value, unavailable: Vec::new() }
    }
}

#[derive(Debug, Clone)]
pub struct CollectionCount {
    pub collection: String,
    pub shard: String,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_goes_live_then_fenced_then_released_or_sent_on() {
        assert_eq!(mark_precondition(Some(MOVING)), None, "a fence goes up on a live shop");
        assert_eq!(mark_precondition(None), Some(MOVING), "only a fenced shop is released");
        assert_eq!(mark_precondition(Some("shard2")), Some(MOVING), "only a fenced shop is sent on");
        let shop = ShopId::parse("acme").unwrap();
        assert!(matches!(home_check(&shop, None), Ok(())));
        assert!(matches!(home_check(&shop, Some(MOVING.into())), Err(StoreError::Unavailable(_))));
        assert!(matches!(home_check(&shop, Some("shard2".into())), Err(StoreError::Moved { .. })));
    }
}
