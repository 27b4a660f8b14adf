//! Each business transaction, written once. A transaction reads what it needs through its
//! backend's rows (the `*Rows` traits, one per capability), asks the domain's rules what to do,
//! and writes the rows, the events and the answer they decided. The backends implement the rows
//! in their dialect and run the transaction their way: SQLite in its one writer's savepoint
//! (nothing else writes meanwhile), PostgreSQL in a transaction on the primary, taking the locks
//! that concurrent instances need (named on the rows that take them).

pub mod catalog;
pub mod collections;
pub mod moves;
pub mod orders;
pub mod placement;
pub mod relay;
pub mod shops;
pub mod webhooks;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, Utc};

use super::{StoreError, StoreResult};
use crate::events::envelope::NewEvent;
use crate::shops::ShopId;

/// What every transaction of a shop's data does on any backend.
#[allow(async_fn_in_trait)]
pub trait Rows {
    /// Refuses a shop's write on a shard it has left or is leaving (`store::home_check`).
    async fn home(&self, shop: &ShopId) -> StoreResult<()>;
    /// Records an event in the outbox, in this transaction.
    async fn emit(&self, event: NewEvent, now: DateTime<Utc>) -> StoreResult<()>;
    /// Records several, in order.
    async fn emit_all(&self, events: Vec<NewEvent>, now: DateTime<Utc>) -> StoreResult<()> {
        for e in events {
            self.emit(e, now).await?;
        }
        Ok(())
    }
}

/// Runs a transaction whose rows never wait, as SQLite's do on its writer thread: it finishes in
/// one poll. One that would wait is a mistake in a backend, reported, never blocked on.
pub fn at_once<T>(transaction: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    match pin!(transaction).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(StoreError::Backend("a transaction on a synchronous backend waited".into())),
    }
}
