//! vitrina: a shop backend built to survive sale day.
//!
//! Request path: `server` (connections) → `api` (routes and middleware: request id, trace,
//! metrics, `http::auth`, `admission`) → a capability's `routes` (catalog, inventory, orders,
//! shops, ingest, collections, events) → its rules → `cache` for reads → `store` (the seam
//! between the domain and a backend) → `store::sqlite` or `store::postgres`, writing the outbox
//! the `events` relay publishes from. The layers and what each may import are in
//! docs/architecture.md; `tests/api/architecture.rs` holds the code to them.

pub mod admission;
pub mod api;
pub mod app;
pub mod breaker;
pub mod cache;
pub mod catalog;
pub mod clock;
pub mod collections;
pub mod config;
pub mod consistency;
pub mod demo;
pub mod discovery;
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
pub mod server;
pub mod shops;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod validate;
