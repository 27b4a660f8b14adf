//! Cancels placed orders whose payment hold ran out, releasing their stock.

use std::time::Duration;

use tokio::sync::watch;

use super::Action;
use crate::state::AppState;
use crate::store::StoreError;

const BATCH: usize = 100;

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(state.config.orders.sweep_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        if let Err(e) = sweep_once(&state).await {
            tracing::warn!(error = %e, "order expiry sweep failed; will retry");
        }
    }
}

/// Expires every order due now; returns how many were cancelled.
pub async fn sweep_once(state: &AppState) -> Result<usize, StoreError> {
    let mut cancelled = 0;
    loop {
        let now = state.clock.now();
        let due = state.store().expired_orders(now, BATCH).await?;
        let n = due.len();
        for (shop, id) in due {
            match state.store().transition_order(&shop, &id, Action::Expire, now).await {
                Ok(order) => {
                    state.sold_out.released(&order);
                    cancelled += 1;
                    metrics::counter!("vitrina_orders_total", "outcome" => "expired").increment(1);
                }
                // Paid or cancelled meanwhile: the guard in the transition refused, as it should.
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if n < BATCH {
            return Ok(cancelled);
        }
    }
}
