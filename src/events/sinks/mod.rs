//! Where the relay publishes: brokers and HTTP endpoints configured as `[[events.sinks]]`.
//! A sink publishes a batch in order and reports how much of it the far side acknowledged;
//! the relay moves the sink's cursor by exactly that much.

pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nats;
pub mod webhook;

use std::sync::Arc;

use async_trait::async_trait;

use super::config::{SinkConfig, SinkKind};
use crate::breaker::{Breaker, BreakerConfig};
use crate::store::outbox::OutboxEvent;

/// Why a publish stopped short.
#[derive(Debug, Clone)]
pub enum SinkError {
    /// The sink could not be reached or did not answer in time: retried with backoff for as
    /// long as it takes, never held against the event.
    Unavailable(String),
    /// The sink refused this event: counted against it, a dead letter after `max_attempts`.
    Rejected(String),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Unavailable(e) => write!(f, "unavailable: {e}"),
            SinkError::Rejected(e) => write!(f, "rejected: {e}"),
        }
    }
}

/// The acknowledged prefix of a batch, and what stopped the rest.
#[derive(Debug)]
pub struct Published {
    pub acked: usize,
    pub error: Option<SinkError>,
}

impl Published {
    pub fn all(n: usize) -> Published {
        Published { acked: n, error: None }
    }
    pub fn stopped(acked: usize, error: SinkError) -> Published {
        Published { acked, error: Some(error) }
    }
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Publishes `events` in order and waits for the sink's acknowledgements. A sink that sends
    /// one at a time starts no new send after `deadline` and returns the prefix it got through,
    /// so a slow receiver still makes progress within the relay's lease.
    async fn publish(&self, events: &[OutboxEvent], deadline: std::time::Instant) -> Published;
}

/// A sink behind its breaker: every shard's publish loop shares it, so a broker that is down
/// costs the relay one probe now and then instead of a timeout per shard and batch.
struct Guarded {
    inner: Arc<dyn Sink>,
    breaker: Breaker,
}

#[async_trait]
impl Sink for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn publish(&self, events: &[OutboxEvent], deadline: std::time::Instant) -> Published {
        // Refusing an event is about the event; only not getting anything through is the sink's.
        let down = |p: &Published| p.acked == 0 && matches!(p.error, Some(SinkError::Unavailable(_)));
        self.breaker.call(self.inner.publish(events, deadline), down).await.unwrap_or_else(|| {
            Published::stopped(0, SinkError::Unavailable("not sent: the sink keeps failing (breaker open)".into()))
        })
    }
}

/// The configured sinks, ready to connect on first use (a sink down at start is retried later,
/// never a reason to refuse to start), each behind its own breaker.
pub fn build(
    configs: &[SinkConfig],
    timeout: std::time::Duration,
    breaker: &BreakerConfig,
) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    configs
        .iter()
        .map(|c| -> anyhow::Result<Arc<dyn Sink>> {
            let inner: Arc<dyn Sink> = match c.kind {
                SinkKind::Nats => Arc::new(nats::NatsSink::new(c, timeout)),
                SinkKind::Amqp => Arc::new(amqp::AmqpSink::new(c, timeout)),
                SinkKind::Webhook => Arc::new(webhook::WebhookSink::new(c, timeout)?),
                #[cfg(feature = "kafka")]
                SinkKind::Kafka => Arc::new(kafka::KafkaSink::new(c, timeout)?),
                #[cfg(not(feature = "kafka"))]
                SinkKind::Kafka => anyhow::bail!("kind = \"kafka\" needs vitrina built with `--features kafka`"),
            };
            let breaker = Breaker::new("sink", inner.name().to_owned(), breaker.clone());
            Ok(Arc::new(Guarded { inner, breaker }))
        })
        .collect()
}

/// A subject or routing key for an event: `<prefix>.<shop>.<type without "vitrina.">`.
pub fn subject(prefix: &str, e: &OutboxEvent) -> String {
    let kind = e.kind.strip_prefix("vitrina.").unwrap_or(&e.kind);
    format!("{prefix}.{}.{kind}", e.shop.as_deref().unwrap_or("_"))
}
