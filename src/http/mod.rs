//! The HTTP wing's shared parts: the one error type and its problem documents, the extractors
//! that refuse in that format, and the credentials. Each capability's handlers are in its own
//! `routes.rs`; `api.rs` assembles them.

pub mod auth;
pub mod consistency;
pub mod cors;
pub mod edge;
pub mod error;
pub mod extract;
pub mod openapi;
