//! Admission in front of every route: sorts a request, checks its token buckets, takes its
//! places in the gates, and answers a refusal as the API's 429 or 503 with `Retry-After`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{classify, Admission, Kind, Refused, Verdict};
use crate::http::error::ApiError;
use crate::store::Slot;

fn client_address(req: &Request, trust_forwarded_for: bool) -> Option<String> {
    if trust_forwarded_for {
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        if let Some(first) = forwarded.and_then(|v| v.split(',').next()).map(str::trim).filter(|s| !s.is_empty()) {
            return Some(first.to_owned());
        }
    }
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip().to_string())
}

fn rate_headers(headers: &mut HeaderMap, v: &Verdict) {
    for (name, value) in [("ratelimit-limit", v.limit), ("ratelimit-remaining", v.remaining), ("ratelimit-reset", v.reset_secs)] {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// A request's places in the gates and its rate verdict, held until it is answered.
pub struct Admitted {
    _passes: Vec<super::gate::Pass>,
    verdict: Option<Verdict>,
}

impl Admitted {
    /// Gives the places back and adds the rate headers.
    pub fn answer(self, resp: &mut Response) {
        if let Some(v) = &self.verdict {
            rate_headers(resp.headers_mut(), v);
        }
    }
}

/// In front of every route's handler (`http::edge`): takes the request's places, or answers the
/// refusal as the API's 429 or 503 with `Retry-After`.
///
/// The request is read before the returned future runs, so the future does not hold it.
pub fn admit<'a>(
    admission: &'a Admission,
    store: &'a Slot,
    req: &Request,
) -> impl Future<Output = Result<Admitted, Response>> + Send + 'a {
    let enabled = admission.cfg.enabled;
    // How long deciding a refusal takes inside the server, for `vitrina_admission_refusal_seconds`.
    let started = Instant::now();
    // Off, every request is sorted exempt: no verdict and no places to take.
    let kind = if enabled { classify(req.method(), req.uri().path()) } else { Kind::Exempt };
    // Only a client bucket needs the address, and formatting it is per request.
    let client = match enabled {
        true => admission.client_rate.as_ref().and_then(|_| client_address(req, admission.cfg.trust_forwarded_for)),
        false => None,
    };
    let shop = match &kind {
        Kind::ShopWrite(s) | Kind::Other(Some(s)) => Some(s),
        _ => None,
    };
    let verdict = match &kind {
        Kind::Exempt => Ok(None),
        _ => admission.rate(client.as_deref(), shop, Instant::now()),
    };
    let refused = move |r: Refused| {
        metrics::histogram!("vitrina_admission_refusal_seconds").record(started.elapsed().as_secs_f64());
        let code = if r.over_quota { "quota_exceeded" } else { "overloaded" };
        let (detail, retry_after) = (r.detail, r.retry_after);
        match r.over_quota {
            true => ApiError::TooManyRequests { code, detail, retry_after },
            false => ApiError::Overloaded { code, detail, retry_after },
        }
        .into_response()
    };
    async move {
        let verdict = verdict.map_err(refused)?;
        let passes = admission.admit(&kind, |shop| store.get().shard_of(shop)).await.map_err(refused)?;
        Ok(Admitted { _passes: passes, verdict })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::super::{classify, Kind};

    #[test]
    fn requests_are_sorted_into_shop_writes_reads_and_exempt() {
        let is_write = |m: Method, p: &str| matches!(classify(&m, p), Kind::ShopWrite(s) if s.as_str() == "acme");
        assert!(is_write(Method::POST, "/shops/acme/orders"));
        assert!(is_write(Method::PUT, "/shops/acme/products/MUG"));
        assert!(matches!(classify(&Method::GET, "/shops/acme/products"), Kind::Other(Some(_))));
        assert!(matches!(classify(&Method::POST, "/shops"), Kind::Other(None)));
        assert!(matches!(classify(&Method::POST, "/helloDoc/users"), Kind::Other(None)));
        assert!(matches!(classify(&Method::POST, "/shops/Not A Shop/orders"), Kind::Other(None)));
        assert!(matches!(classify(&Method::GET, "/health/ready"), Kind::Exempt));
        assert!(matches!(classify(&Method::GET, "/metrics"), Kind::Exempt));
    }
}
