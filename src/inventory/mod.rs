//! Inventory: stock per SKU. `available = on_hand - reserved`, and stock is only ever taken by a
//! conditional update in the store, so it cannot be oversold.

pub mod allocation;
pub mod routes;
pub mod sold_out;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::refusal::Refusal;

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
    #[schema(example = 25, minimum = 0, maximum = 1_000_000_000_i64)]
    pub on_hand: i64,
}

/// A non-zero change within ±1 000 000 000, as `AdjustStock` is checked.
fn delta_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let range = |lo: f64, hi: f64| ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(lo)).maximum(Some(hi));
    Schema::OneOf(OneOfBuilder::new().item(range(-1e9, -1.0)).item(range(1.0, 1e9)).examples([-2]).build())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    /// Positive to receive goods, negative to write off; never below what is reserved.
    #[schema(example = -2, schema_with = delta_schema)]
    pub delta: i64,
}

/// The on-hand figure a set leaves, or `None` when it is unchanged (nothing to write).
/// Never below what open orders have reserved.
pub fn plan_set(current: &Stock, on_hand: i64) -> Result<Option<i64>, Refusal> {
    if on_hand < current.reserved {
        return Err(Refusal::conflict(
            "below_reserved",
            format!("on_hand {on_hand} is below the {} units reserved for {}", current.reserved, current.sku),
        ));
    }
    Ok((on_hand != current.on_hand).then_some(on_hand))
}

/// The on-hand figure an adjustment leaves: never below what is reserved, never above the bound.
pub fn plan_adjust(current: &Stock, delta: i64) -> Result<i64, Refusal> {
    let on_hand = current.on_hand + delta;
    if on_hand < current.reserved {
        return Err(Refusal::conflict(
            "below_reserved",
            format!(
                "adjusting {} by {delta} would leave {on_hand} on hand, below the {} reserved",
                current.sku, current.reserved
            ),
        ));
    }
    if on_hand > MAX_QUANTITY {
        return Err(Refusal::invalid("quantity_too_large", format!("on_hand would exceed {MAX_QUANTITY}")));
    }
    Ok(on_hand)
}

pub fn valid_on_hand(n: i64) -> bool {
    (0..=MAX_QUANTITY).contains(&n)
}

pub fn valid_delta(d: i64) -> bool {
    d != 0 && (-MAX_QUANTITY..=MAX_QUANTITY).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_adjustments_never_go_below_reserved() {
        let s = Stock::new("A".into(), 10, 4);
        assert_eq!(plan_set(&s, 10), Ok(None), "unchanged: nothing to write");
        assert_eq!(plan_set(&s, 4), Ok(Some(4)));
        assert!(matches!(plan_set(&s, 3), Err(Refusal::Conflict { code: "below_reserved", .. })));
        assert_eq!(plan_adjust(&s, -6), Ok(4));
        assert!(plan_adjust(&s, -7).is_err());
        assert!(matches!(plan_adjust(&s, MAX_QUANTITY), Err(Refusal::Invalid { .. })));
    }
}
