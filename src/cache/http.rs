//! HTTP caching on cached reads: `ETag` / `If-None-Match` → 304, `Cache-Control` with the entry's
//! remaining lifetime, and `X-Cache` naming the tier that answered.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Cached;

pub const X_CACHE: &str = "x-cache";

/// Does `If-None-Match` name this tag (or `*`)? Weak tags compare by their opaque part.
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag))
}

/// 200 with the JSON body, or 304 when the client already has it.
pub fn respond(c: &Cached, headers: &HeaderMap) -> Response {
    let mut resp = if not_modified(headers, &c.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], c.body.clone()).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&c.etag) {
        h.insert(header::ETAG, v);
    }
    let max_age = c.ttl_left().as_secs();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    h.insert(X_CACHE, HeaderValue::from_static(c.source.header()));
    resp
}
