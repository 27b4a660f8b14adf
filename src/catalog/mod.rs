//! Catalog: products a shop sells. Writes need the shop's key; reads are public.

pub mod routes;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::money::{Currency, Money, MAX_AMOUNT};
use crate::shops::ShopId;
use crate::validate::{self, FieldError};

pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Product {
    #[schema(value_type = String)]
    pub shop: ShopId,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: Money,
    /// Free-form JSON object (size, colour, ...).
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    /// Bumped on every change of content; unchanged re-sends keep it.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl Product {
    /// Strong validator over the representation, so a delete and re-create never reuses one.
    pub fn etag(&self) -> String {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&body);
        format!("\"{}\"", hex::encode(&digest[..12]))
    }
}

/// The body of `PUT /shops/{shop}/products/{sku}`, and of a feed line without its `sku`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    #[schema(example = "Red T-shirt", min_length = 1, max_length = 200, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub name: String,
    #[schema(example = "apparel", min_length = 1, max_length = 100, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub category: String,
    pub price: PriceBody,
    /// Free-form product attributes, a JSON object (null or absent: none).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceBody {
    /// Minor units (cents for USD, yen for JPY).
    #[schema(example = 1999, minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// The shop's currency.
    #[schema(schema_with = crate::money::currency_schema)]
    pub currency: String,
}

/// A validated product write.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductInput {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: Money,
    pub attributes: serde_json::Value,
}

impl ProductBody {
    /// Checks the body against the shop it is written to; prices are in the shop's currency.
    pub fn validate(self, sku: &str, shop_currency: Currency) -> Result<ProductInput, Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(e) = validate::sku(sku) {
            errors.push(e);
        }
        validate::text(&mut errors, "name", &self.name, 1, 200);
        validate::text(&mut errors, "category", &self.category, 1, 100);
        if !(0..=MAX_AMOUNT).contains(&self.price.amount) {
            errors.push(FieldError::new("price.amount", format!("must be an integer from 0 to {MAX_AMOUNT} (minor units)")));
        }
        match Currency::parse(&self.price.currency) {
            Some(c) if c == shop_currency => {}
            Some(_) => errors.push(FieldError::new("price.currency", format!("must be the shop's currency {shop_currency}"))),
            None => errors.push(FieldError::new("price.currency", "must be an ISO 4217 code such as USD")),
        }
        let attributes = self.attributes.unwrap_or_else(|| serde_json::json!({}));
        if !attributes.is_object() {
            errors.push(FieldError::new("attributes", "must be a JSON object"));
        } else if serde_json::to_vec(&attributes).map_or(true, |b| b.len() > MAX_ATTRIBUTES_BYTES) {
            errors.push(FieldError::new("attributes", format!("must serialize to at most {MAX_ATTRIBUTES_BYTES} bytes")));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ProductInput {
            sku: sku.to_owned(),
            name: self.name,
            category: self.category,
            price: Money::new(self.price.amount, shop_currency),
            attributes,
        })
    }
}

impl ProductInput {
    /// Whether writing this would change `current` (an identical re-send must not bump the version).
    pub fn changes(&self, current: &Product) -> bool {
        !(current.name == self.name
            && current.category == self.category
            && current.price == self.price
            && current.attributes == self.attributes)
    }

    /// The product as stored by this write.
    pub fn stored(&self, shop: &ShopId, version: i64, updated_at: DateTime<Utc>) -> Product {
        Product {
            shop: shop.clone(),
            sku: self.sku.clone(),
            name: self.name.clone(),
            category: self.category.clone(),
            price: self.price,
            attributes: self.attributes.clone(),
            version,
            updated_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProductQuery {
    pub category: Option<String>,
    /// Serve SKUs strictly after this one.
    pub after: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<Product>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(amount: i64, currency: &str) -> ProductBody {
        ProductBody {
            name: "Mug".into(),
            category: "kitchen".into(),
            price: PriceBody { amount, currency: currency.into() },
            attributes: None,
        }
    }

    #[test]
    fn price_must_be_in_shop_currency_and_range() {
        let usd = Currency::parse("USD").unwrap();
        let ok = body(500, "USD").validate("MUG-1", usd).unwrap();
        assert_eq!(ok.price, Money::new(500, usd));
        assert_eq!(ok.attributes, serde_json::json!({}));
        assert!(body(500, "EUR").validate("MUG-1", usd).is_err());
        assert!(body(-1, "USD").validate("MUG-1", usd).is_err());
        assert!(body(MAX_AMOUNT + 1, "USD").validate("MUG-1", usd).is_err());
        assert!(body(1, "USD").validate("bad sku", usd).is_err());
    }

    #[test]
    fn attributes_must_be_a_small_object() {
        let usd = Currency::parse("USD").unwrap();
        let mut b = body(1, "USD");
        b.attributes = Some(serde_json::json!([1, 2]));
        assert!(b.validate("A", usd).is_err());
        let mut b = body(1, "USD");
        b.attributes = Some(serde_json::json!({"blob": "x".repeat(MAX_ATTRIBUTES_BYTES)}));
        assert!(b.validate("A", usd).is_err());
    }
}
