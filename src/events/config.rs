//! `[events]`: the relay, its sinks, webhook delivery and outbox retention.

use serde::{Deserialize, Serialize};

/// The relay's name for webhook delivery, beside the configured sinks' names.
pub const WEBHOOKS_SINK: &str = "webhooks";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Run the relay inside `vitrina serve`. Turn off where a separate `vitrina relay` process
    /// publishes instead. With several instances, one relay per shard leads and the rest stand by.
    pub relay: bool,
    /// How often an idle relay looks for new events.
    pub poll_ms: u64,
    /// Events per claim.
    pub batch: usize,
    /// How long a claim stays with a relay; a dead relay's claim is taken over after it.
    pub lease_ms: u64,
    /// Rejections of one event by a sink before it becomes a dead letter.
    pub max_attempts: u32,
    /// First wait after a failed publish; doubles per attempt, with jitter, up to `retry_cap_ms`.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Published events older than this are removed from the outbox.
    pub retention_hours: u64,
    pub webhooks: WebhookConfig,
    pub sinks: Vec<SinkConfig>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            relay: true,
            poll_ms: 20,
            batch: 256,
            lease_ms: 10_000,
            max_attempts: 10,
            retry_base_ms: 200,
            retry_cap_ms: 30_000,
            retention_hours: 168,
            webhooks: WebhookConfig::default(),
            sinks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Per attempt, connect to last byte.
    pub timeout_ms: u64,
    /// A delivery is retried until this long after its event, then it is dead.
    pub deliver_for_secs: u64,
    /// Attempts before a delivery is dead even within `deliver_for_secs`.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Deliveries in flight at once per shard.
    pub concurrency: usize,
    /// Non-public ranges webhooks may still reach (CIDR, e.g. `["10.20.0.0/16"]` for receivers
    /// inside the operator's network). Loopback, private, link-local and unique-local
    /// addresses are refused otherwise.
    pub allowed_ranges: Vec<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout_ms: 5_000,
            deliver_for_secs: 24 * 3600,
            max_attempts: 40,
            retry_base_ms: 1_000,
            retry_cap_ms: 3_600_000,
            concurrency: 16,
            allowed_ranges: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Nats,
    Amqp,
    Kafka,
    Webhook,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kind: SinkKind,
    pub url: String,
    /// The sink's name in progress, metrics and dead letters; defaults to its kind.
    #[serde(default)]
    pub name: Option<String>,
    /// NATS: the JetStream stream (created when missing) and subject prefix; AMQP: the queue;
    /// Kafka: the topic. Defaults: `VITRINA`, `vitrina.events`.
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    /// Webhook sink: the HMAC key for its signatures.
    #[serde(default)]
    pub secret: Option<String>,
}

impl SinkConfig {
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            match self.kind {
                SinkKind::Nats => "nats",
                SinkKind::Amqp => "amqp",
                SinkKind::Kafka => "kafka",
                SinkKind::Webhook => "webhook",
            }
            .to_owned()
        })
    }
}

impl EventsConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.batch == 0 || self.poll_ms == 0 || self.lease_ms == 0 || self.max_attempts == 0 {
            anyhow::bail!("events: batch, poll_ms, lease_ms and max_attempts must be positive");
        }
        for r in &self.webhooks.allowed_ranges {
            if let Err(e) = r.parse::<ipnet::IpNet>() {
                anyhow::bail!("events.webhooks.allowed_ranges: {r:?} is not a range like 10.0.0.0/8 ({e})");
            }
        }
        let mut names: Vec<String> = self.sinks.iter().map(SinkConfig::name).collect();
        names.push(WEBHOOKS_SINK.to_owned());
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        if names.len() != n {
            anyhow::bail!("events.sinks: names must be unique (two sinks of one kind need a `name`; `webhooks` is taken)");
        }
        for s in &self.sinks {
            if s.kind == SinkKind::Kafka && !cfg!(feature = "kafka") {
                anyhow::bail!("events.sinks: kind = \"kafka\" needs vitrina built with `--features kafka`");
            }
            if s.kind == SinkKind::Webhook && !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
                anyhow::bail!("events.sinks: a webhook sink needs an http(s) URL");
            }
        }
        Ok(())
    }

    /// A copy fit to print: passwords in URLs and webhook secrets masked.
    pub fn redacted(&self) -> EventsConfig {
        let mut shown = self.clone();
        for s in &mut shown.sinks {
            s.url = crate::secrets::mask_url_password(&s.url);
            if s.secret.is_some() {
                s.secret = Some("<set>".into());
            }
        }
        shown
    }
}
