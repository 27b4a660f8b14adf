//! RabbitMQ: a durable quorum queue, persistent messages, publisher confirms. A message counts
//! once the broker confirmed it (for a quorum queue: replicated to a majority).

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{Published, Sink, SinkError};
use crate::events::config::SinkConfig;
use crate::store::outbox::OutboxEvent;

pub struct AmqpSink {
    name: String,
    url: String,
    queue: String,
    timeout: Duration,
    channel: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl AmqpSink {
    pub fn new(c: &SinkConfig, timeout: Duration) -> AmqpSink {
        AmqpSink {
            name: c.name(),
            url: c.url.clone(),
            queue: c.stream.clone().unwrap_or_else(|| "vitrina.events".into()),
            timeout,
            channel: Default::default(),
        }
    }

    async fn connect(&self) -> Result<Channel, String> {
        let conn = Connection::connect(&self.url, ConnectionProperties::default()).await.map_err(|e| e.to_string())?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel
            .queue_declare(self.queue.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
            .await
            .map_err(|e| e.to_string())?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
        *self.channel.lock().await = Some((conn, channel.clone()));
        Ok(channel)
    }

    async fn channel(&self) -> Result<Channel, SinkError> {
        if let Some((conn, channel)) = self.channel.lock().await.as_ref() {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let masked = crate::secrets::mask_url_password(&self.url);
        match tokio::time::timeout(self.timeout, self.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(SinkError::Unavailable(format!("connecting to {masked}: {e}"))),
            Err(_) => Err(SinkError::Unavailable(format!("connecting to {masked}: timed out"))),
        }
    }

    async fn publish_all(&self, channel: &Channel, events: &[OutboxEvent]) -> Published {
        let mut confirms = Vec::with_capacity(events.len());
        for e in events {
            let mut headers = FieldTable::default();
            headers.insert("ce-type".into(), AMQPValue::LongString(e.kind.as_str().into()));
            headers.insert("ce-subject".into(), AMQPValue::LongString(e.aggregate.as_str().into()));
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(e.id.as_str()))
                .with_content_type("application/cloudevents+json".into())
                .with_headers(headers);
            let sent = channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    e.envelope.as_bytes(),
                    props,
                )
                .await;
            match sent {
                Ok(confirm) => confirms.push(confirm),
                Err(err) => return Published::stopped(0, SinkError::Unavailable(err.to_string())),
            }
        }
        let mut acked = 0;
        for confirm in confirms {
            match confirm.await {
                Ok(c) if c.is_ack() => acked += 1,
                Ok(_) => return Published::stopped(acked, SinkError::Rejected("the broker refused the message (nack)".into())),
                Err(err) => return Published::stopped(acked, SinkError::Unavailable(err.to_string())),
            }
        }
        Published::all(acked)
    }
}

#[async_trait]
impl Sink for AmqpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, events: &[OutboxEvent], _deadline: std::time::Instant) -> Published {
        let channel = match self.channel().await {
            Ok(c) => c,
            Err(e) => return Published::stopped(0, e),
        };
        match tokio::time::timeout(self.timeout, self.publish_all(&channel, events)).await {
            Ok(p) => {
                if p.error.is_some() {
                    self.channel.lock().await.take();
                }
                p
            }
            Err(_) => {
                self.channel.lock().await.take();
                Published::stopped(0, SinkError::Unavailable("no confirms in time".into()))
            }
        }
    }
}
