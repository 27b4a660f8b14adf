//! Events: every business write records what happened (`envelope`: the facts and their
//! CloudEvents 1.0 form), in the same transaction, in its shard's outbox. From there the pull feed serves them per shop
//! in order (`routes`), the relay publishes them to brokers and webhooks (`relay`, `sinks`), and
//! every instance's in-process bus hands them to local subscribers (`bus`). Consumers apply each
//! at most once with the inbox (`store::inbox`).

pub mod bus;
pub mod config;
pub mod envelope;
pub mod relay;
pub mod routes;
pub mod sinks;
pub mod targets;
pub mod webhook_routes;
