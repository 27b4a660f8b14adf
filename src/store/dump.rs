//! A shop's rows as one value: what a move copies from its old shard to its new one.

use chrono::{DateTime, Utc};

use crate::catalog::Product;
use crate::orders::Order;
use crate::shops::ShopRecord;

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

#[derive(Debug, Clone)]
pub struct ShopDump {
    pub shop: ShopRecord,
    pub products: Vec<Product>,
    pub stock: Vec<StockRow>,
    pub orders: Vec<Order>,
    pub idempotency: Vec<IdempotencyRow>,
}

impl ShopDump {
    /// Row counts per table, to verify a copy.
    pub fn counts(&self) -> [usize; 4] {
        [self.products.len(), self.stock.len(), self.orders.len(), self.idempotency.len()]
    }

    /// The same rows, in the same order, with the same content.
    pub fn same_rows(&self, other: &ShopDump) -> bool {
        self.shop.shop.id == other.shop.shop.id
            && self.shop.api_key_hash == other.shop.api_key_hash
            && self.products == other.products
            && self.stock == other.stock
            && self.orders == other.orders
            && self.idempotency == other.idempotency
    }
}
