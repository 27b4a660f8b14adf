//! Read-your-writes across instances. A successful write answers with `vitrina-written-at`
//! (ms since the epoch, taken after it committed); a client that sends it back on a later read
//! as `vitrina-read-after` is served only by a replica that had replayed past that moment, or by
//! the primary. Within one instance the store already routes a just-written shop to the
//! primary; the token carries the same guarantee to any instance behind a balancer. This is the
//! token as the store and the cache read it; `http::consistency` takes it off the request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const WRITTEN_AT: &str = "vitrina-written-at";
pub const READ_AFTER: &str = "vitrina-read-after";

/// Says an answer may be stale: it was read from a replica while the primary was unreachable.
pub const STALE: &str = "vitrina-stale";

/// What a request carries down to the store without threading it through every call.
#[derive(Clone, Default)]
struct Context {
    read_after_ms: Option<i64>,
    /// Set by a read served without the primary (`store::fallback`).
    stale: Option<Arc<AtomicBool>>,
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// The token of the request being served, if it carried one.
pub fn read_after_ms() -> Option<i64> {
    CONTEXT.try_with(|c| c.read_after_ms).ok().flatten()
}

/// Records that the request's answer may be stale.
pub fn mark_stale() {
    let _ = CONTEXT.try_with(|c| c.stale.as_ref().map(|s| s.store(true, Ordering::Relaxed)));
}

/// Runs `fut` as if its request had asked to read after `ms` too (the later of the two wins):
/// a cache filling a key after a write must not fill it from a replica that has not seen it.
pub async fn reading_after<T>(ms: Option<i64>, fut: impl std::future::Future<Output = T>) -> T {
    let mut context = CONTEXT.try_with(Context::clone).unwrap_or_default();
    context.read_after_ms = context.read_after_ms.max(ms);
    CONTEXT.scope(context, fut).await
}

/// Runs `fut` as the work of a request that carried `read_after_ms`; `stale` is set if any of
/// its reads was served without the primary.
/// Not an `async fn`, which would hold `fut` twice (see `telemetry::context::within_request`).
pub fn serving<F: std::future::Future>(
    read_after_ms: Option<i64>,
    stale: Arc<AtomicBool>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    CONTEXT.scope(Context { read_after_ms, stale: Some(stale) }, fut)
}
