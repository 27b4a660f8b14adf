//! Routing: which shard holds a shop, or a seed document. A ring of virtual nodes over shard
//! names gives every key a default shard; adding a shard moves only the keys the new shard takes.

pub mod ring;

pub use ring::{stable_hash, Ring};
