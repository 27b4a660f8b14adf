//! Cross-origin access for browser storefronts, by tower-http's CORS layer: the allowed origins
//! come from `[cors]`; preflights are answered before any credential is asked for. Off (no
//! layer at all) while no origin is allowed.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use super::edge::{unit_value, UNIT};
use crate::config::Config;

/// The CORS layer and the unit stamp for the answers it makes itself, when CORS is on.
pub fn layers(config: &Config) -> anyhow::Result<Option<(CorsLayer, SetResponseHeaderLayer<HeaderValue>)>> {
    let origins = &config.cors.allowed_origins;
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().map(|o| HeaderValue::from_str(o)).collect::<Result<Vec<_>, _>>()?)
    };
    let cors = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("vitrina-read-after"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::RETRY_AFTER,
            header::LOCATION,
            HeaderName::from_static("vitrina-written-at"),
            HeaderName::from_static("x-request-id"),
            UNIT,
        ])
        .max_age(Duration::from_secs(config.cors.max_age_secs));
    Ok(Some((cors, SetResponseHeaderLayer::if_not_present(UNIT, unit_value(config)?))))
}
