//! The HTTP side of read-your-writes (`crate::consistency`): a request's `vitrina-read-after`
//! token is handed to the store for the request's work, and a successful write is answered with
//! its `vitrina-written-at`.

use std::future::Future;

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::Response;

use crate::consistency::{serving, READ_AFTER, WRITTEN_AT};

/// What a request asked of read-your-writes, read before it runs.
pub struct Token {
    read_after_ms: Option<i64>,
    writes: bool,
}

impl Token {
    pub fn of(req: &Request) -> Token {
        let read_after_ms =
            req.headers().get(READ_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
        Token { read_after_ms, writes: !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) }
    }

    /// Runs the request's work with its token handed to the store.
    pub fn serving<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        serving(self.read_after_ms, work)
    }

    /// Answers a successful write with its `vitrina-written-at`.
    pub fn stamp(&self, resp: &mut Response) {
        if self.writes && resp.status().is_success() {
            let now = chrono::Utc::now().timestamp_millis();
            if let Ok(v) = HeaderValue::from_str(&now.to_string()) {
                resp.headers_mut().insert(WRITTEN_AT, v);
            }
        }
    }
}
