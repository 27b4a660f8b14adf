//! Orders: placement with idempotency, guarded status transitions and the expiry sweeper.
//! This file holds the pure rules (line summing, pricing, transitions); the store applies them
//! inside one transaction.

pub mod idempotency;
pub mod routes;
pub mod sweeper;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::money::{Currency, Money};
use crate::refusal::Refusal;
use crate::shops::ShopId;
use crate::validate::{self, FieldError};

pub const MAX_LINES: usize = 100;
pub const MAX_LINE_QTY: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<OrderStatus> {
        Some(match s {
            "placed" => OrderStatus::Placed,
            "paid" => OrderStatus::Paid,
            "shipped" => OrderStatus::Shipped,
            "delivered" => OrderStatus::Delivered,
            "cancelled" => OrderStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A requested change of status. `Expire` is the sweeper's cancel of an unpaid order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pay,
    Ship,
    Deliver,
    Cancel,
    Expire,
}

/// What a transition does to the reserved stock of the order's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockEffect {
    None,
    /// The goods leave the warehouse: `on_hand -= qty`, `reserved -= qty`.
    Consume,
    /// The reservation is given back: `reserved -= qty`.
    Release,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pay" => Action::Pay,
            "ship" => Action::Ship,
            "deliver" => Action::Deliver,
            "cancel" => Action::Cancel,
            _ => return None,
        })
    }

    /// The status this action leads to from `from`, or `None` when the transition is not allowed.
    pub fn apply(self, from: OrderStatus) -> Option<OrderStatus> {
        use OrderStatus::*;
        match (self, from) {
            (Action::Pay, Placed) => Some(Paid),
            (Action::Ship, Paid) => Some(Shipped),
            (Action::Deliver, Shipped) => Some(Delivered),
            (Action::Cancel, Placed | Paid) => Some(Cancelled),
            (Action::Expire, Placed) => Some(Cancelled),
            _ => None,
        }
    }

    pub fn stock_effect(self) -> StockEffect {
        match self {
            Action::Ship => StockEffect::Consume,
            Action::Cancel | Action::Expire => StockEffect::Release,
            Action::Pay | Action::Deliver => StockEffect::None,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Action::Pay => "pay",
            Action::Ship => "ship",
            Action::Deliver => "deliver",
            Action::Cancel => "cancel",
            Action::Expire => "expire",
        }
    }

    pub fn reason(self) -> Option<&'static str> {
        (self == Action::Expire).then_some("payment hold expired")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub qty: i64,
    pub unit_price: Money,
    pub line_total: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Order {
    pub id: String,
    #[schema(value_type = String)]
    pub shop: ShopId,
    pub customer_id: String,
    pub status: OrderStatus,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub history: Vec<HistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When an unpaid order is cancelled; null once it is no longer `placed`.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    #[schema(example = "cust-42")]
    pub customer_id: String,
    pub lines: Vec<LineBody>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    #[schema(example = "TSHIRT-BLK-M", pattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    #[schema(example = 2, minimum = 1, maximum = 10_000)]
    pub qty: i64,
}

/// A requested SKU with its summed quantity, in order of first appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedLine {
    pub sku: String,
    pub qty: i64,
}

impl PlaceOrderBody {
    pub fn validate(&self) -> Result<Vec<WantedLine>, Vec<FieldError>> {
        let mut errors = Vec::new();
        validate::text(&mut errors, "customer_id", &self.customer_id, 1, 128);
        if self.lines.is_empty() || self.lines.len() > MAX_LINES {
            errors.push(FieldError::new("lines", format!("must hold 1-{MAX_LINES} lines")));
        }
        for (i, line) in self.lines.iter().enumerate() {
            if validate::sku(&line.sku).is_err() {
                errors.push(FieldError::new(format!("lines[{i}].sku"), "must be a valid SKU"));
            }
            if !(1..=MAX_LINE_QTY).contains(&line.qty) {
                errors.push(FieldError::new(format!("lines[{i}].qty"), format!("must be an integer from 1 to {MAX_LINE_QTY}")));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(sum_lines(&self.lines))
    }

    /// Fingerprint of the request for idempotency: same customer and same lines in the same
    /// order give the same hash, whatever the JSON spacing or key order.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.customer_id.as_bytes());
        for l in &self.lines {
            h.update([0]);
            h.update(l.sku.as_bytes());
            h.update([0]);
            h.update(l.qty.to_le_bytes());
        }
        h.finalize().into()
    }
}

/// Lines naming the same SKU are summed before any stock is touched.
pub fn sum_lines(lines: &[LineBody]) -> Vec<WantedLine> {
    let mut out: Vec<WantedLine> = Vec::with_capacity(lines.len());
    for l in lines {
        match out.iter_mut().find(|w| w.sku == l.sku) {
            Some(w) => w.qty += l.qty,
            None => out.push(WantedLine { sku: l.sku.clone(), qty: l.qty }),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub enum PricingError {
    UnknownSkus(Vec<String>),
    Overflow,
}

impl From<PricingError> for Refusal {
    fn from(e: PricingError) -> Refusal {
        match e {
            PricingError::UnknownSkus(skus) => Refusal::invalid("unknown_sku", format!("unknown SKUs: {}", skus.join(", "))),
            PricingError::Overflow => Refusal::invalid("amount_overflow", "the order total is out of range"),
        }
    }
}

/// Prices the wanted lines from catalog entries `(name, unit price)` looked up by SKU.
pub fn price_lines(
    currency: Currency,
    wanted: &[WantedLine],
    mut lookup: impl FnMut(&str) -> Option<(String, Money)>,
) -> Result<(Vec<OrderLine>, Money), PricingError> {
    let mut lines = Vec::with_capacity(wanted.len());
    let mut unknown = Vec::new();
    for w in wanted {
        match lookup(&w.sku) {
            Some((name, unit_price)) => {
                if unit_price.currency != currency {
                    // Prices are validated against the shop currency on write; a mismatch is corrupt data.
                    return Err(PricingError::Overflow);
                }
                let line_total = unit_price.times(w.qty).ok_or(PricingError::Overflow)?;
                lines.push(OrderLine { sku: w.sku.clone(), name, qty: w.qty, unit_price, line_total });
            }
            None => unknown.push(w.sku.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(PricingError::UnknownSkus(unknown));
    }
    let total = Money::sum(currency, lines.iter().map(|l| &l.line_total)).ok_or(PricingError::Overflow)?;
    Ok((lines, total))
}

/// Everything the store needs to place an order in one transaction.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    pub id: String,
    pub customer_id: String,
    pub currency: Currency,
    pub lines: Vec<WantedLine>,
    pub idempotency_key: String,
    pub fingerprint: [u8; 32],
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum PlaceOutcome {
    Created(Order),
    /// The key was used before with the same request: the stored answer, served again.
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
    /// The key was used before with a different request.
    KeyReused,
}

#[derive(Debug, Clone)]
pub struct OrderQuery {
    pub status: Option<OrderStatus>,
    /// Serve orders strictly older than this id (UUIDv7 sorts by time).
    pub before: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<Order>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }
    fn line(sku: &str, qty: i64) -> LineBody {
        LineBody { sku: sku.into(), qty }
    }

    #[test]
    fn same_sku_lines_are_summed_in_first_seen_order() {
        let got = sum_lines(&[line("B", 1), line("A", 2), line("B", 3)]);
        assert_eq!(got, vec![WantedLine { sku: "B".into(), qty: 4 }, WantedLine { sku: "A".into(), qty: 2 }]);
    }

    #[test]
    fn pricing_multiplies_and_totals() {
        let wanted = [WantedLine { sku: "A".into(), qty: 3 }, WantedLine { sku: "B".into(), qty: 1 }];
        let (lines, total) = price_lines(usd(), &wanted, |sku| match sku {
            "A" => Some(("Apple".into(), Money::new(250, usd()))),
            "B" => Some(("Bread".into(), Money::new(399, usd()))),
            _ => None,
        })
        .unwrap();
        assert_eq!(lines[0].line_total, Money::new(750, usd()));
        assert_eq!(lines[1].line_total, Money::new(399, usd()));
        assert_eq!(total, Money::new(1149, usd()));
    }

    #[test]
    fn pricing_lists_every_unknown_sku() {
        let wanted = [
            WantedLine { sku: "X".into(), qty: 1 },
            WantedLine { sku: "A".into(), qty: 1 },
            WantedLine { sku: "Y".into(), qty: 1 },
        ];
        let err = price_lines(usd(), &wanted, |sku| (sku == "A").then(|| ("A".into(), Money::new(1, usd())))).unwrap_err();
        assert_eq!(err, PricingError::UnknownSkus(vec!["X".into(), "Y".into()]));
    }

    #[test]
    fn pricing_refuses_overflow() {
        let wanted = [WantedLine { sku: "A".into(), qty: MAX_LINE_QTY }];
        let err = price_lines(usd(), &wanted, |_| Some(("A".into(), Money::new(crate::money::MAX_AMOUNT, usd())))).unwrap_err();
        assert_eq!(err, PricingError::Overflow);
    }

    #[test]
    fn transitions_follow_the_lifecycle() {
        use OrderStatus::*;
        let all = [Placed, Paid, Shipped, Delivered, Cancelled];
        let allowed = |a: Action| all.iter().filter_map(|s| a.apply(*s).map(|t| (*s, t))).collect::<Vec<_>>();
        assert_eq!(allowed(Action::Pay), vec![(Placed, Paid)]);
        assert_eq!(allowed(Action::Ship), vec![(Paid, Shipped)]);
        assert_eq!(allowed(Action::Deliver), vec![(Shipped, Delivered)]);
        assert_eq!(allowed(Action::Cancel), vec![(Placed, Cancelled), (Paid, Cancelled)]);
        assert_eq!(allowed(Action::Expire), vec![(Placed, Cancelled)]);
    }

    #[test]
    fn stock_effects() {
        assert_eq!(Action::Ship.stock_effect(), StockEffect::Consume);
        assert_eq!(Action::Cancel.stock_effect(), StockEffect::Release);
        assert_eq!(Action::Expire.stock_effect(), StockEffect::Release);
        assert_eq!(Action::Pay.stock_effect(), StockEffect::None);
        assert_eq!(Action::Deliver.stock_effect(), StockEffect::None);
    }

    #[test]
    fn validation_bounds() {
        let ok = PlaceOrderBody { customer_id: "c".into(), lines: vec![line("A", 1)] };
        assert!(ok.validate().is_ok());
        for bad in [
            PlaceOrderBody { customer_id: "".into(), lines: vec![line("A", 1)] },
            PlaceOrderBody { customer_id: "c".into(), lines: vec![] },
            PlaceOrderBody { customer_id: "c".into(), lines: vec![line("A", 0)] },
            PlaceOrderBody { customer_id: "c".into(), lines: vec![line("A", -1)] },
            PlaceOrderBody { customer_id: "c".into(), lines: vec![line("A", MAX_LINE_QTY + 1)] },
            PlaceOrderBody { customer_id: "c".into(), lines: vec![line("a b", 1)] },
            PlaceOrderBody { customer_id: "c".into(), lines: (0..=MAX_LINES).map(|_| line("A", 1)).collect() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_depends_on_content_only() {
        let a = PlaceOrderBody { customer_id: "c".into(), lines: vec![line("A", 1)] };
        let b = PlaceOrderBody { customer_id: "c".into(), lines: vec![line("A", 2)] };
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
