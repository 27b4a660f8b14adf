//! Inventory: stock per SKU. `available = on_hand - reserved`, and stock is only ever taken by a
//! conditional update in the store, so it cannot be oversold.

pub mod routes;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Bound on any stock figure or adjustment; far above real shelves, far below overflow.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Stock {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

impl Stock {
    pub fn new(sku: String, on_hand: i64, reserved: i64) -> Stock {
        Stock { sku, on_hand, reserved, available: on_hand - reserved }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    #[schema(example = 25)]
    pub on_hand: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    /// Positive to receive goods, negative to write off; never below what is reserved.
    #[schema(example = -2)]
    pub delta: i64,
}

pub fn valid_on_hand(n: i64) -> bool {
    (0..=MAX_QUANTITY).contains(&n)
}

pub fn valid_delta(d: i64) -> bool {
    d != 0 && (-MAX_QUANTITY..=MAX_QUANTITY).contains(&d)
}
