//! The facts vitrina records and their CloudEvents 1.0 envelope. Both backends build events
//! here, inside the transaction of the write they describe, so an event means the same whichever
//! store wrote it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// Every type of event vitrina records.
pub const EVENT_TYPES: &[&str] = &[
    "vitrina.shop.created",
    "vitrina.product.upserted",
    "vitrina.product.deleted",
    "vitrina.stock.changed",
    "vitrina.order.placed",
    "vitrina.order.paid",
    "vitrina.order.shipped",
    "vitrina.order.delivered",
    "vitrina.order.cancelled",
    "vitrina.user.created",
];

/// A fact to record: its type (`vitrina.order.placed`), the aggregate it is about, its data.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    /// Per-aggregate sequences count within this id, e.g. `acme/orders/0190…` or `acme/products/MUG`.
    pub aggregate: String,
    pub shop: Option<String>,
    pub data: Value,
    /// The request it came from, where that is not the current context (a placement written in
    /// a group with other requests'); otherwise the current one is recorded.
    pub traceparent: Option<String>,
}

impl NewEvent {
    pub fn new(kind: &'static str, shop: Option<&str>, aggregate: String, data: impl serde::Serialize) -> NewEvent {
        NewEvent {
            kind,
            aggregate,
            shop: shop.map(str::to_owned),
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            traceparent: None,
        }
    }
}

/// The facts vitrina records. Both backends build them here, so an event means the same
/// whichever store wrote it.
pub fn shop_created(shop: &crate::shops::Shop) -> NewEvent {
    NewEvent::new("vitrina.shop.created", Some(shop.id.as_str()), shop.id.to_string(), shop)
}

pub fn product_upserted(p: &crate::catalog::Product) -> NewEvent {
    NewEvent::new("vitrina.product.upserted", Some(p.shop.as_str()), format!("{}/products/{}", p.shop, p.sku), p)
}

pub fn product_deleted(shop: &crate::shops::ShopId, sku: &str) -> NewEvent {
    NewEvent::new("vitrina.product.deleted", Some(shop.as_str()), format!("{shop}/products/{sku}"), json!({ "sku": sku }))
}

pub fn stock_changed(shop: &crate::shops::ShopId, stock: &crate::inventory::Stock) -> NewEvent {
    NewEvent::new("vitrina.stock.changed", Some(shop.as_str()), format!("{shop}/stock/{}", stock.sku), stock)
}

/// `vitrina.order.placed`, `.paid`, `.shipped`, `.delivered` or `.cancelled`, after the fact.
pub fn order_changed(o: &crate::orders::Order) -> NewEvent {
    use crate::orders::OrderStatus::*;
    let kind = match o.status {
        Placed => "vitrina.order.placed",
        Paid => "vitrina.order.paid",
        Shipped => "vitrina.order.shipped",
        Delivered => "vitrina.order.delivered",
        Cancelled => "vitrina.order.cancelled",
    };
    NewEvent::new(kind, Some(o.shop.as_str()), format!("{}/orders/{}", o.shop, o.id), o)
}

pub fn user_created(collection: &str, doc: &crate::collections::UserDoc) -> NewEvent {
    NewEvent::new("vitrina.user.created", None, format!("collections/{collection}/{}", doc.id), doc)
}

/// The CloudEvents 1.0 JSON envelope, with the `shop`, `sequence` and `traceparent` extensions.
pub fn envelope(id: &str, e: &NewEvent, sequence: i64, time: DateTime<Utc>, traceparent: Option<&str>) -> Value {
    let source = match &e.shop {
        Some(shop) => format!("/shops/{shop}"),
        None => "/collections".to_owned(),
    };
    let mut v = json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": e.kind,
        "subject": e.aggregate,
        "time": time.to_rfc3339_opts(SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "sequence": sequence,
        "data": e.data,
    });
    if let Some(shop) = &e.shop {
        v["shop"] = json!(shop);
    }
    if let Some(tp) = traceparent {
        v["traceparent"] = json!(tp);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_cloudevents_with_extensions() {
        let e = NewEvent::new("vitrina.order.placed", Some("acme"), "acme/orders/1".into(), json!({"total": 5}));
        let v = envelope("0190-id", &e, 3, Utc::now(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "vitrina.order.placed");
        assert_eq!(v["subject"], "acme/orders/1");
        assert_eq!(v["source"], "/shops/acme");
        assert_eq!((v["shop"].as_str(), v["sequence"].as_i64()), (Some("acme"), Some(3)));
        assert!(v["traceparent"].is_string());
        let plain = envelope("x", &e, 1, Utc::now(), None);
        assert!(plain.get("traceparent").is_none());
    }
}
