//! Catalog feeds: a shop pushes NDJSON, one product upsert or stock set per line. Each line is
//! parsed into a `FeedOp` here; `routes` reads the body as a stream and applies the operations in
//! batched transactions, a bad line reported and skipped, never aborting the good ones.

pub mod routes;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::catalog::{ProductBody, ProductInput};
use crate::inventory::{valid_on_hand, MAX_QUANTITY};
use crate::money::Currency;
use crate::validate;

/// One validated feed line.
#[derive(Debug, Clone)]
pub enum FeedOp {
    Product(ProductInput),
    Stock { sku: String, on_hand: i64 },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedLine {
    /// 1-based line number in the body.
    pub line: u64,
    pub error: String,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct FeedReport {
    pub accepted: u64,
    pub rejected: Vec<RejectedLine>,
}

/// At most this many rejections are listed; the count of the rest is still exact.
const MAX_LISTED_REJECTIONS: usize = 1000;

/// Parses one NDJSON line into an operation for the shop.
pub fn parse_line(line: &[u8], currency: Currency) -> Result<FeedOp, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(mut obj) = value else { return Err("a line must be a JSON object".into()) };
    let kind = obj.remove("type");
    let sku = match obj.remove("sku") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("sku must be a string".into()),
        None => return Err("sku is required".into()),
    };
    validate::sku(&sku).map_err(|e| e.message)?;
    match kind.as_ref().and_then(Value::as_str) {
        Some("product") => {
            let body: ProductBody = serde_json::from_value(Value::Object(obj)).map_err(|e| format!("invalid product: {e}"))?;
            let input = body
                .validate(&sku, currency)
                .map_err(|errs| errs.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))?;
            Ok(FeedOp::Product(input))
        }
        Some("stock") => {
            let on_hand = match (obj.remove("on_hand"), obj.is_empty()) {
                (Some(Value::Number(n)), true) => n.as_i64().filter(|n| valid_on_hand(*n)),
                (Some(_), true) => None,
                (_, false) => return Err(format!("unknown fields in stock line: {:?}", obj.keys().collect::<Vec<_>>())),
                (None, _) => return Err("on_hand is required".into()),
            };
            let on_hand = on_hand.ok_or_else(|| format!("on_hand must be an integer from 0 to {MAX_QUANTITY}"))?;
            Ok(FeedOp::Stock { sku, on_hand })
        }
        Some(other) => Err(format!("unknown type {other:?}; expected \"product\" or \"stock\"")),
        None => Err("type is required (\"product\" or \"stock\")".into()),
    }
}

impl FeedReport {
    pub fn reject(&mut self, line: u64, error: String) {
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
            self.rejected.push(RejectedLine { line, error });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn parses_products_and_stock() {
        let p = parse_line(
            br#"{"type":"product","sku":"A-1","name":"Apple","category":"fruit","price":{"amount":120,"currency":"USD"}}"#,
            usd(),
        );
        assert!(matches!(p, Ok(FeedOp::Product(ref i)) if i.sku == "A-1" && i.price.amount == 120));
        let s = parse_line(br#"{"type":"stock","sku":"A-1","on_hand":7}"#, usd());
        assert!(matches!(s, Ok(FeedOp::Stock { ref sku, on_hand: 7 }) if sku == "A-1"));
    }

    #[test]
    fn refuses_bad_lines_with_a_reason() {
        for (line, needle) in [
            (&b"{not json"[..], "malformed"),
            (br#"[1,2]"#, "object"),
            (br#"{"type":"stock","on_hand":1}"#, "sku"),
            (br#"{"type":"stock","sku":"A","on_hand":-1}"#, "on_hand"),
            (br#"{"type":"stock","sku":"A","on_hand":1,"x":2}"#, "unknown fields"),
            (br#"{"type":"thing","sku":"A"}"#, "unknown type"),
            (br#"{"sku":"A"}"#, "type is required"),
            (br#"{"type":"product","sku":"A","name":"x","category":"c","price":{"amount":1,"currency":"EUR"}}"#, "currency"),
            (
                br#"{"type":"product","sku":"A","name":"x","category":"c","price":{"amount":1,"currency":"USD"},"colour":"red"}"#,
                "unknown field",
            ),
        ] {
            let err = parse_line(line, usd()).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
