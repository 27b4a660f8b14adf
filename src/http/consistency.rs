//! The HTTP side of read-your-writes (`crate::consistency`): a request's `vitrina-read-after`
//! token is handed to the store for the request's work, and a successful write is answered with
//! its `vitrina-written-at`; one read from a replica while the primary was down says so.

use std::future::Future;

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::Response;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::consistency::{serving, READ_AFTER, STALE, WRITTEN_AT};

/// What a request asked of read-your-writes, read before it runs.
pub struct Token {
    read_after_ms: Option<i64>,
    writes: bool,
    stale: Arc<AtomicBool>,
}

impl Token {
    pub fn of(req: &Request) -> Token {
        let read_after_ms =
            req.headers().get(READ_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
        let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        Token { read_after_ms, writes, stale: Arc::default() }
    }

    /// Runs the request's work with its token handed to the store.
    pub fn serving<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        serving(self.read_after_ms, self.stale.clone(), work)
    }

    /// Answers a successful write with its `vitrina-written-at`, and a read served without the
    /// primary with `vitrina-stale`.
    pub fn stamp(&self, resp: &mut Response) {
        if self.stale.load(Ordering::Relaxed) {
            resp.headers_mut().insert(STALE, HeaderValue::from_static("1"));
        }
        if self.writes && resp.status().is_success() {
            let now = chrono::Utc::now().timestamp_millis();
            if let Ok(v) = HeaderValue::from_str(&now.to_string()) {
                resp.headers_mut().insert(WRITTEN_AT, v);
            }
        }
    }
}
