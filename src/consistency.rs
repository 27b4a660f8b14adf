//! Read-your-writes across instances. A successful write answers with `vitrina-written-at`
//! (ms since the epoch, taken after it committed); a client that sends it back on a later read
//! as `vitrina-read-after` is served only by a replica that had replayed past that moment, or by
//! the primary. Within one instance the store already routes a just-written shop to the
//! primary; the token carries the same guarantee to any instance behind a balancer.

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

pub const WRITTEN_AT: &str = "vitrina-written-at";
pub const READ_AFTER: &str = "vitrina-read-after";

/// What a request carries down to the store without threading it through every call.
#[derive(Clone, Default)]
struct Context {
    read_after_ms: Option<i64>,
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// The token of the request being served, if it carried one.
pub fn read_after_ms() -> Option<i64> {
    CONTEXT.try_with(|c| c.read_after_ms).ok().flatten()
}

/// Runs `fut` as if its request had asked to read after `ms` too (the later of the two wins):
/// a cache filling a key after a write must not fill it from a replica that has not seen it.
pub async fn reading_after<T>(ms: Option<i64>, fut: impl std::future::Future<Output = T>) -> T {
    let mut context = CONTEXT.try_with(Context::clone).unwrap_or_default();
    context.read_after_ms = context.read_after_ms.max(ms);
    CONTEXT.scope(context, fut).await
}

pub async fn track(req: Request, next: Next) -> Response {
    let read_after_ms = req.headers().get(READ_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let context = Context { read_after_ms };
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut resp = CONTEXT.scope(context, next.run(req)).await;
    if writes && resp.status().is_success() {
        let now = chrono::Utc::now().timestamp_millis();
        if let Ok(v) = HeaderValue::from_str(&now.to_string()) {
            resp.headers_mut().insert(WRITTEN_AT, v);
        }
    }
    resp
}
