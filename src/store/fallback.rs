//! Reads when a shard's primary is gone. A read that finds the primary unreachable (or whose
//! shard's breaker says so before it tries) is served by a replica within the lag budget, even
//! one that has not replayed this instance's latest writes or the client's `vitrina-read-after`:
//! the answer may be stale, and says so (`consistency::mark_stale`). Writes never fall back.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

struct Read {
    /// The breaker holds the primary for down: do not try it.
    primary_down: bool,
    /// The read was served without the primary.
    fell_back: Cell<bool>,
}

tokio::task_local! {
    static READ: Read;
}

/// Whether the read being served should not try the primary.
pub fn primary_down() -> bool {
    READ.try_with(|r| r.primary_down).unwrap_or(false)
}

/// A backend served the read being served from a replica because the primary was unreachable.
pub fn fell_back() {
    let _ = READ.try_with(|r| r.fell_back.set(true));
    crate::consistency::mark_stale();
}

/// Runs a read; the output, and whether it was served without the primary. `primary_down` is
/// read when the read starts.
pub async fn read<T>(primary_down: &AtomicBool, fut: impl Future<Output = T>) -> (T, bool) {
    let scope = Read { primary_down: primary_down.load(Ordering::Relaxed), fell_back: Cell::new(false) };
    READ.scope(scope, async {
        let out = fut.await;
        (out, READ.with(|r| r.fell_back.get()))
    })
    .await
}
