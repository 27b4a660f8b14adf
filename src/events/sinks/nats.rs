//! NATS JetStream: the stream is created when missing, every message carries `Nats-Msg-Id` =
//! event id so the broker drops a republished duplicate, and a message counts only once
//! JetStream acknowledged storing it.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_trait::async_trait;

use super::{subject, Published, Sink, SinkError};
use crate::events::config::SinkConfig;
use crate::store::outbox::OutboxEvent;

pub struct NatsSink {
    name: String,
    url: String,
    stream: String,
    prefix: String,
    timeout: Duration,
    /// Connected client and whether the stream is known to exist.
    state: tokio::sync::Mutex<Option<(jetstream::Context, bool)>>,
}

impl NatsSink {
    pub fn new(c: &SinkConfig, timeout: Duration) -> NatsSink {
        NatsSink {
            name: c.name(),
            url: c.url.clone(),
            stream: c.stream.clone().unwrap_or_else(|| "VITRINA".into()),
            prefix: c.subject.clone().unwrap_or_else(|| "vitrina.events".into()),
            timeout,
            state: Default::default(),
        }
    }

    async fn context(&self) -> Result<jetstream::Context, SinkError> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(self.timeout)
                .request_timeout(Some(self.timeout))
                .retry_on_initial_connect()
                .connect(self.url.as_str())
                .await
                .map_err(|e| {
                    SinkError::Unavailable(format!("connecting to {}: {e}", crate::secrets::mask_url_password(&self.url)))
                })?;
            let mut js = jetstream::new(client);
            js.set_timeout(self.timeout);
            *state = Some((js, false));
        }
        let (js, ready) = state.as_mut().expect("connected above");
        if !*ready {
            js.get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.prefix)],
                storage: jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| SinkError::Unavailable(format!("stream {}: {e}", self.stream)))?;
            *ready = true;
        }
        Ok(js.clone())
    }

    /// After any failure the stream is checked again, in case the broker lost it.
    async fn recheck(&self) {
        if let Some((_, ready)) = self.state.lock().await.as_mut() {
            *ready = false;
        }
    }
}

fn classify(kind: PublishErrorKind, e: String) -> SinkError {
    match kind {
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => SinkError::Rejected(e),
        _ => SinkError::Unavailable(e),
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, events: &[OutboxEvent], _deadline: std::time::Instant) -> Published {
        let js = match self.context().await {
            Ok(js) => js,
            Err(e) => return Published::stopped(0, e),
        };
        // Pipelined: every message goes out, then the acknowledgements are awaited in order.
        let mut pending = Vec::with_capacity(events.len());
        let mut stop = None;
        for e in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.id.as_str());
            headers.insert("Ce-Type", e.kind.as_str());
            match js.publish_with_headers(subject(&self.prefix, e), headers, e.envelope.clone().into()).await {
                Ok(ack) => pending.push(ack),
                Err(err) => {
                    stop = Some(classify(err.kind(), err.to_string()));
                    break;
                }
            }
        }
        let mut acked = 0;
        for ack in pending {
            match ack.await {
                Ok(_) => acked += 1,
                Err(err) => {
                    stop = Some(classify(err.kind(), err.to_string()));
                    break;
                }
            }
        }
        match stop {
            None => Published::all(acked),
            Some(e) => {
                self.recheck().await;
                Published::stopped(acked, e)
            }
        }
    }
}
