//! vitrina: a shop backend built to survive sale day.
//!
//! Request path: `app` (router, middleware: telemetry, `admission`) → a capability module's
//! `routes` (catalog, inventory, orders, shops, ingest, collections, events) → its pure rules →
//! `cache` for reads → `store` (the one seam between the domain and a backend) →
//! `store::sqlite` or `store::postgres`, writing the outbox `events` relay from.

pub mod admission;
pub mod api;
pub mod app;
pub mod bench;
pub mod breaker;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod collections;
pub mod config;
pub mod consistency;
pub mod events;
pub mod health;
pub mod http;
pub mod ingest;
pub mod inventory;
pub mod money;
pub mod orders;
pub mod pagination;
pub mod refusal;
pub mod routing;
pub mod secrets;
pub mod seed;
pub mod server;
pub mod shops;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod validate;
