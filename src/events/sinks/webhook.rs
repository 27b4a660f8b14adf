//! Webhooks: HTTP POSTs of one CloudEvent each, signed so the receiver can tell they came from
//! vitrina and were not replayed later. Used by the configured `kind = "webhook"` sink and by the
//! shops' own subscriptions (see `events::relay`, which dispatches their deliveries).
//!
//! Signature: `Vitrina-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! with the same `t` in `Vitrina-Timestamp`. A receiver recomputes it over the raw body and
//! refuses a timestamp far from its clock.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Published, Sink, SinkError};
use crate::breaker::Breaker;
use crate::events::config::{SinkConfig, WebhookConfig};
use crate::events::targets::{Allowed, GuardedResolver};
use crate::store::outbox::{backoff, Delivery, DeliveryOutcome, OutboxEvent, Webhook};

pub const SIGNATURE_HEADER: &str = "vitrina-signature";
pub const TIMESTAMP_HEADER: &str = "vitrina-timestamp";
pub const EVENT_ID_HEADER: &str = "vitrina-event-id";

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Vitrina-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Checks a `Vitrina-Signature` header as a receiver would: the MAC in constant time, and the
/// timestamp within `tolerance_secs` of `now`.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    (now - t).abs() <= tolerance_secs && mac(secret, t, body).verify_slice(&v1).is_ok()
}

pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("vitrina/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client without custom TLS roots builds")
}

/// The client for shops' webhooks: a name resolves only to addresses `allowed` permits (checked
/// at every connection, so a name that resolves to a private address later is still refused).
pub fn shop_client(timeout: Duration, allowed: Allowed) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(GuardedResolver(allowed)))
        .user_agent(concat!("vitrina/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client without custom TLS roots builds")
}

/// An address literal in a URL is not resolved, so the resolver never sees it: judged here.
fn literal_refused(url: &str, allowed: &Allowed) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let ip: std::net::IpAddr = u.host_str()?.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    (!allowed.permits(ip)).then(|| format!("{ip} is not a public address; not allowed as a webhook target"))
}

/// What one endpoint breaker covers: scheme, host and port of a URL (the URL itself if it
/// does not parse, which then fails on its own).
pub fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_owned(),
    }
}

/// One signed POST; the HTTP status when the receiver answered.
async fn post(client: &reqwest::Client, url: &str, secret: &str, id: &str, kind: &str, body: &str) -> Result<u16, String> {
    let now = chrono::Utc::now().timestamp();
    let res = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/cloudevents+json")
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, sign(secret, now, body.as_bytes()))
        .header(EVENT_ID_HEADER, id)
        .header("ce-type", kind)
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    Ok(res.status().as_u16())
}

/// One attempt at a subscription's delivery, and what happens to it next.
pub async fn deliver(
    client: &reqwest::Client,
    allowed: &Allowed,
    hook: &Webhook,
    d: &Delivery,
    cfg: &WebhookConfig,
    endpoint: &Breaker,
    now: chrono::DateTime<chrono::Utc>,
) -> DeliveryOutcome {
    // A receiver answering 5xx or not at all is down as a whole; a 4xx is about this delivery.
    let down = |r: &Result<u16, String>| !matches!(r, Ok(s) if *s < 500);
    let sent = match literal_refused(&hook.url, allowed) {
        Some(refused) => Some(Err(refused)),
        None => endpoint.call(post(client, &hook.url, &hook.secret, &d.event_id, &d.kind, &d.envelope), down).await,
    };
    let (status, error) = match sent {
        Some(Ok(s)) if (200..300).contains(&s) => return DeliveryOutcome::Delivered { status: s },
        Some(Ok(s)) => (Some(s), format!("the receiver answered {s}")),
        Some(Err(e)) => (None, e),
        // Not sent: scheduled as the failure it would most likely have been.
        None => (None, "not sent: the endpoint keeps failing (breaker open)".to_owned()),
    };
    let wait = backoff(d.attempts, Duration::from_millis(cfg.retry_base_ms), Duration::from_millis(cfg.retry_cap_ms));
    let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
    if d.attempts >= cfg.max_attempts || at > d.deliver_by {
        DeliveryOutcome::Dead { status, error }
    } else {
        DeliveryOutcome::Retry { status, error, at }
    }
}

/// The configured `kind = "webhook"` sink: every event to one URL, in order.
pub struct WebhookSink {
    name: String,
    url: String,
    secret: String,
    client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(c: &SinkConfig, timeout: Duration) -> anyhow::Result<WebhookSink> {
        let Some(secret) = c.secret.clone().filter(|s| !s.is_empty()) else {
            anyhow::bail!("events.sinks: the webhook sink {} needs a `secret` to sign with", c.name());
        };
        Ok(WebhookSink { name: c.name(), url: c.url.clone(), secret, client: client(timeout) })
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, events: &[OutboxEvent], deadline: std::time::Instant) -> Published {
        for (i, e) in events.iter().enumerate() {
            if i > 0 && std::time::Instant::now() >= deadline {
                return Published::all(i);
            }
            match post(&self.client, &self.url, &self.secret, &e.id, &e.kind, &e.envelope).await {
                Ok(s) if (200..300).contains(&s) => {}
                // A client error is this event's fault; anything else is the receiver's state.
                Ok(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                    return Published::stopped(i, SinkError::Rejected(format!("the receiver answered {s}")))
                }
                Ok(s) => return Published::stopped(i, SinkError::Unavailable(format!("the receiver answered {s}"))),
                Err(err) => return Published::stopped(i, SinkError::Unavailable(err)),
            }
        }
        Published::all(events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let body = br#"{"id":"1"}"#;
        let sig = sign("s3cret", 1_700_000_000, body);
        assert!(sig.starts_with("t=1700000000,v1="));
        assert!(verify("s3cret", &sig, body, 1_700_000_010, 300));
        assert!(!verify("s3cret", &sig, br#"{"id":"2"}"#, 1_700_000_010, 300), "another body");
        assert!(!verify("other", &sig, body, 1_700_000_010, 300), "another secret");
        assert!(!verify("s3cret", &sig, body, 1_700_001_000, 300), "too old");
        assert!(!verify("s3cret", "garbage", body, 1_700_000_000, 300));
    }
}
