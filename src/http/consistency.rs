//! The HTTP side of read-your-writes (`crate::consistency`): a request's `vitrina-read-after`
//! token is handed to the store for the request's work, and a successful write is answered with
//! its `vitrina-written-at`.

use std::future::Future;

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::Response;

use crate::consistency::{serving, READ_AFTER, WRITTEN_AT};

pub async fn track<F: Future<Output = Response>>(req: Request, next: impl FnOnce(Request) -> F) -> Response {
    let read_after_ms = req.headers().get(READ_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut resp = serving(read_after_ms, next(req)).await;
    if writes && resp.status().is_success() {
        let now = chrono::Utc::now().timestamp_millis();
        if let Ok(v) = HeaderValue::from_str(&now.to_string()) {
            resp.headers_mut().insert(WRITTEN_AT, v);
        }
    }
    resp
}
