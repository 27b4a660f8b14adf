//! Black-box HTTP tests: each test starts the real application in-process on port 0 over a
//! fresh data directory and talks to it through a real HTTP client.

mod backend;
mod fleet;
mod helpers;

mod admission;
mod architecture;
mod bad_input;
mod bench;
mod breakers;
mod cache;
mod cache_cluster;
mod catalog;
mod cluster;
mod combining;
mod concurrency;
mod cors;
mod edges;
mod events;
mod feed;
mod inventory;
mod isolation;
mod openapi;
mod ops;
mod orders;
mod process;
mod relay;
mod seed_api;
mod sharding;
mod shops;
mod sold_out;
mod tracing;
mod webhooks;
