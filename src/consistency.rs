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

tokio::task_local! {
    static READ_AFTER_MS: Option<i64>;
}

/// The token of the request being served, if it carried one.
pub fn read_after_ms() -> Option<i64> {
    READ_AFTER_MS.try_with(|t| *t).ok().flatten()
}

pub async fn track(req: Request, next: Next) -> Response {
    let token = req.headers().get(READ_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut resp = READ_AFTER_MS.scope(token, next.run(req)).await;
    if writes && resp.status().is_success() {
        let now = chrono::Utc::now().timestamp_millis();
        if let Ok(v) = HeaderValue::from_str(&now.to_string()) {
            resp.headers_mut().insert(WRITTEN_AT, v);
        }
    }
    resp
}
