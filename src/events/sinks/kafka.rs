//! Kafka (with `--features kafka`): an idempotent producer (`enable.idempotence`, `acks=all`),
//! key = aggregate id so one aggregate's events stay in one partition, in order. A message
//! counts once the partition leader acknowledged it with its in-sync replicas.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Published, Sink, SinkError};
use crate::events::config::SinkConfig;
use crate::store::outbox::OutboxEvent;

pub struct KafkaSink {
    name: String,
    topic: String,
    timeout: Duration,
    producer: FutureProducer,
}

impl KafkaSink {
    pub fn new(c: &SinkConfig, timeout: Duration) -> anyhow::Result<KafkaSink> {
        let brokers = c.url.trim_start_matches("kafka://");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(|e| anyhow::anyhow!("kafka sink {}: {e}", c.name()))?;
        Ok(KafkaSink { name: c.name(), topic: c.stream.clone().unwrap_or_else(|| "vitrina.events".into()), timeout, producer })
    }
}

fn classify(e: &KafkaError) -> SinkError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessage | RDKafkaErrorCode::InvalidRecord) => {
            SinkError::Rejected(e.to_string())
        }
        _ => SinkError::Unavailable(e.to_string()),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, events: &[OutboxEvent], _deadline: std::time::Instant) -> Published {
        // Sent together; the idempotent producer keeps them in order per partition.
        let sends = events.iter().map(|e| {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "ce_id", value: Some(e.id.as_str()) })
                .insert(Header { key: "ce_type", value: Some(e.kind.as_str()) });
            let record = FutureRecord::to(&self.topic).key(e.aggregate.as_str()).payload(e.envelope.as_str()).headers(headers);
            self.producer.send(record, self.timeout)
        });
        let results = futures::future::join_all(sends).await;
        for (i, r) in results.into_iter().enumerate() {
            if let Err((e, _)) = r {
                return Published::stopped(i, classify(&e));
            }
        }
        Published::all(events.len())
    }
}
