//! The relay: per shard, one leader (the others stand by) publishes the outbox to every sink.
//! Each sink has its own cursor and lease, so a slow or broken sink holds back only itself.
//! A batch is claimed, published, and acknowledged in the store only after the sink
//! acknowledged it; the acknowledged prefix of a failed batch still counts. While a batch is
//! published the next one is read, and the batch before is acknowledged with that read, so the
//! store's round trip hides behind the sink's (`Outbox::ack_and_read`). Events a sink keeps
//! refusing become dead letters after `max_attempts`; an unreachable sink is retried with
//! backoff for as long as it takes.
//!
//! Besides the configured sinks, the leader runs the shops' webhook subscriptions: the
//! `webhooks` sink fans events out into per-subscription deliveries (or passes them by while no
//! shop of the shard subscribes), and a dispatcher sends those with their own retries, backoff
//! and dead letters.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::EventsConfig;
use super::sinks::{self, webhook, Published, Sink, SinkError};
use crate::breaker::{Breakers, BreakersConfig};
use crate::events::config::WEBHOOKS_SINK;
use crate::store::outbox::{backoff, Claimed, FanOut, Outbox, OutboxEvent, SinkState};
use crate::store::StoreResult;

/// What `GET /` shows of the relay of one shard, as this instance sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ShardRelay {
    /// `leader` (this instance publishes), `standby` (another does, or will after its lease),
    /// or `off` (this instance runs no relay).
    pub role: String,
    pub sinks: Vec<SinkState>,
}

/// The relay state per shard, shared with the report.
#[derive(Default)]
pub struct RelayStatus(RwLock<BTreeMap<String, ShardRelay>>);

impl RelayStatus {
    pub fn snapshot(&self) -> BTreeMap<String, ShardRelay> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, shard: &str, f: impl FnOnce(&mut ShardRelay)) {
        let mut all = self.0.write().unwrap_or_else(|p| p.into_inner());
        f(all.entry(shard.to_owned()).or_insert_with(|| ShardRelay { role: "off".into(), sinks: Vec::new() }));
    }
}

pub struct Relay {
    cfg: EventsConfig,
    /// Names this process in leases: `<host>/<pid>/<random>`.
    owner: String,
    sinks: Vec<Arc<dyn Sink>>,
    /// Shops' webhooks: only to public addresses, or ranges the operator allowed.
    http: reqwest::Client,
    allowed: crate::events::targets::Allowed,
    /// One breaker per webhook endpoint (scheme, host and port), shared by every shop's
    /// subscriptions to it: a dead receiver costs one probe now and then, not a timeout each.
    endpoints: Breakers,
    status: Arc<RelayStatus>,
}

/// What a sink loop publishes to.
#[derive(Clone)]
enum Target {
    Sink(Arc<dyn Sink>),
    /// The shops' webhook subscriptions: publishing is fanning out into deliveries.
    Webhooks,
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Sink(s) => s.name(),
            Target::Webhooks => WEBHOOKS_SINK,
        }
    }
}

/// Waits `d`, or less if `stop` fires; true when stopping.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
    *stop.borrow()
}

pub fn owner_id() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
    format!("{host}/{}/{:08x}", std::process::id(), rand::random::<u32>())
}

impl Relay {
    pub fn new(cfg: &EventsConfig, breakers: &BreakersConfig, status: Arc<RelayStatus>) -> anyhow::Result<Relay> {
        let timeout = Duration::from_millis((cfg.lease_ms / 3).max(100));
        let allowed = crate::events::targets::Allowed::parse(&cfg.webhooks.allowed_ranges)?;
        Ok(Relay {
            sinks: sinks::build(&cfg.sinks, timeout, &breakers.sinks)?,
            http: webhook::shop_client(Duration::from_millis(cfg.webhooks.timeout_ms), allowed.clone()),
            allowed,
            endpoints: Breakers::new("webhook", breakers.webhooks.clone()),
            cfg: cfg.clone(),
            owner: owner_id(),
            status,
        })
    }

    /// Every sink with progress of its own: the configured ones and the webhook fan-out.
    pub fn sink_names(cfg: &EventsConfig) -> Vec<String> {
        cfg.sinks.iter().map(|s| s.name()).chain([WEBHOOKS_SINK.to_owned()]).collect()
    }

    /// Leases and delivery schedules are written to the shard and compared by other processes,
    /// so the relay reads the wall clock (`Utc::now()`), not the app's test clock: a frozen
    /// clock in one process would otherwise hold a lease forever for all of them.
    fn lease(&self) -> Duration {
        Duration::from_millis(self.cfg.lease_ms)
    }

    /// Runs a leader-or-standby loop per shard until `stop` turns true.
    pub async fn run(self: Arc<Self>, outboxes: Vec<Arc<dyn Outbox>>, stop: watch::Receiver<bool>) {
        let mut shards = JoinSet::new();
        for outbox in outboxes {
            shards.spawn(self.clone().shard(outbox, stop.clone()));
        }
        while shards.join_next().await.is_some() {}
    }

    async fn shard(self: Arc<Self>, outbox: Arc<dyn Outbox>, mut stop: watch::Receiver<bool>) {
        let shard = outbox.shard().to_owned();
        loop {
            if *stop.borrow() {
                return;
            }
            let mut leadership = match outbox.lead().await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    self.status.update(&shard, |s| s.role = "standby".into());
                    if pause(Duration::from_secs(1), &mut stop).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "cannot contend for the relay lead; retrying");
                    if pause(Duration::from_secs(1), &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(shard, owner = %self.owner, "leading the relay of this shard");
            self.status.update(&shard, |s| s.role = "leader".into());
            let (lead_tx, lead_rx) = watch::channel(false);
            let mut workers = JoinSet::new();
            let targets = self.sinks.iter().cloned().map(Target::Sink).chain([Target::Webhooks]);
            for target in targets {
                workers.spawn(self.clone().publish_loop(outbox.clone(), target, lead_rx.clone()));
            }
            workers.spawn(self.clone().dispatch_webhooks(outbox.clone(), lead_rx.clone()));
            workers.spawn(self.clone().retention(outbox.clone(), lead_rx.clone()));
            loop {
                if pause(Duration::from_secs(1), &mut stop).await {
                    break;
                }
                if !leadership.holds().await {
                    tracing::warn!(shard, "lost the relay lead; standing by");
                    break;
                }
            }
            let _ = lead_tx.send(true);
            while workers.join_next().await.is_some() {}
            drop(leadership);
            self.status.update(&shard, |s| s.role = "standby".into());
        }
    }

    /// Claims, publishes and acknowledges one sink's events on one shard, for as long as this
    /// relay leads.
    async fn publish_loop(self: Arc<Self>, outbox: Arc<dyn Outbox>, target: Target, mut stop: watch::Receiver<bool>) {
        let (shard, name) = (outbox.shard().to_owned(), target.name().to_owned());
        let poll = Duration::from_millis(self.cfg.poll_ms);
        let (base, cap) = (Duration::from_millis(self.cfg.retry_base_ms), Duration::from_millis(self.cfg.retry_cap_ms));
        let mut failures = 0u32;
        let mut replays_checked = Instant::now() - Duration::from_secs(60);
        let mut idle_at: Option<Option<String>> = None;
        // Read ahead while the batch before it was published: the next batch, and the whole
        // batch published before it whose acknowledgement goes with the next read.
        let mut next: Option<Claimed> = None;
        let mut pending: Option<(String, u64)> = None;
        loop {
            if *stop.borrow() {
                if let Some((upto, count)) = pending.take() {
                    let _ = outbox.ack(&name, &self.owner, &upto, count, Utc::now()).await;
                }
                return;
            }
            if let Target::Sink(sink) = &target {
                if replays_checked.elapsed() >= Duration::from_secs(1) {
                    replays_checked = Instant::now();
                    self.replay(outbox.as_ref(), sink.as_ref()).await;
                    idle_at = None;
                }
            }
            // Claiming writes; while nothing new was committed since the last empty claim, a
            // look at the head (a read) is enough. While claims find events, no look is needed.
            // The head seen before a claim is what an empty claim leaves to compare with.
            let mut looked: Option<Option<String>> = None;
            if let Some(idle) = idle_at.as_ref().filter(|_| next.is_none()) {
                looked = outbox.head().await.ok();
                if looked.as_ref() == Some(idle) {
                    if pause(poll, &mut stop).await {
                        return;
                    }
                    continue;
                }
            }
            let claimed = match next.take() {
                Some(c) => Ok(Some(c)),
                None => self.claim(outbox.as_ref(), &target).await,
            };
            let claimed = match claimed {
                Ok(Some(c)) => {
                    idle_at = None;
                    c
                }
                Ok(None) => {
                    // The head as seen *before* this claim: one read after it could already
                    // include an event the claim missed, and the looks would then wait for the
                    // next event to claim it. Without such a head (the claims were finding
                    // events) the next look finds nothing equal and claims once more.
                    idle_at = Some(looked.unwrap_or_else(|| Some(String::new())));
                    if pause(poll, &mut stop).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(shard, sink = name, error = %e, "claiming from the outbox failed");
                    if pause(backoff(failures.max(1), base, cap), &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let mut ahead = Ok(Some(Vec::new()));
            // Acknowledged with the read ahead, or (below) with this batch.
            let mut unacked = pending.as_ref().map_or(0, |(_, count)| *count);
            let published = match &target {
                Target::Sink(sink) => {
                    let published;
                    (published, ahead) =
                        self.publish_reading_ahead(outbox.as_ref(), sink.as_ref(), &claimed, pending.take()).await;
                    if matches!(ahead, Ok(Some(_))) {
                        unacked = 0;
                    }
                    published
                }
                Target::Webhooks => {
                    let deliver_for = Duration::from_secs(self.cfg.webhooks.deliver_for_secs);
                    match outbox.fan_out(&name, &self.owner, &claimed.events, deliver_for, Utc::now()).await {
                        Ok(true) => Published::all(claimed.events.len()),
                        Ok(false) => {
                            tracing::warn!(shard, sink = name, "lease lost before the fan-out committed");
                            continue;
                        }
                        Err(e) => Published::stopped(0, SinkError::Unavailable(e.to_string())),
                    }
                }
            };
            record(&name, &claimed.events[..published.acked], started, published.error.as_ref());
            // A sink may stop early without an error (its time for the batch ran out).
            let whole = published.error.is_none() && published.acked == claimed.events.len();
            match ahead {
                Ok(Some(events)) if !events.is_empty() && whole => {
                    // The whole batch went out and more follows: its acknowledgement goes with
                    // the next batch's read.
                    let last = claimed.events[published.acked - 1].position.clone();
                    pending = Some((last, published.acked as u64));
                    next = Some(Claimed { events, attempts: 1 });
                    failures = 0;
                    continue;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(shard, sink = name, "lease lost before the acknowledgement; the batch will be claimed again");
                    continue;
                }
                Err(e) => tracing::warn!(shard, sink = name, error = %e, "reading ahead failed; acknowledging this batch alone"),
            }
            if published.acked > 0 && matches!(target, Target::Sink(_)) {
                let last = &claimed.events[published.acked - 1];
                let count = published.acked as u64 + unacked;
                match outbox.ack(&name, &self.owner, &last.position, count, Utc::now()).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        shard,
                        sink = name,
                        "lease lost before the acknowledgement; the batch will be claimed again"
                    ),
                    Err(e) => {
                        tracing::warn!(shard, sink = name, error = %e, "recording an acknowledgement failed; the batch will be claimed again")
                    }
                }
            }
            let Some(err) = published.error else {
                failures = 0;
                continue;
            };
            if published.acked > 0 {
                continue;
            }
            let counts = matches!(err, SinkError::Rejected(_));
            let head = &claimed.events[0];
            if counts && claimed.attempts >= self.cfg.max_attempts {
                tracing::error!(shard, sink = name, event = %head.id, attempts = claimed.attempts, error = %err, "giving up on an event: dead letter");
                match outbox.bury(&name, &self.owner, head, &err.to_string(), Utc::now()).await {
                    Ok(_) => metrics::counter!("vitrina_outbox_dead_letters_total", "sink" => name.clone()).increment(1),
                    Err(e) => tracing::warn!(shard, sink = name, error = %e, "recording a dead letter failed"),
                }
                continue;
            }
            tracing::warn!(shard, sink = name, attempts = claimed.attempts, error = %err, "publishing failed; retrying");
            if let Err(e) = outbox.fail(&name, &self.owner, &err.to_string(), counts, Utc::now()).await {
                tracing::warn!(shard, sink = name, error = %e, "recording a failed attempt failed");
            }
            failures = failures.saturating_add(1);
            if pause(backoff(failures, base, cap), &mut stop).await {
                return;
            }
        }
    }

    /// The next batch for `target`; for the webhook fan-out, none while no shop of the shard
    /// subscribes (its cursor passes the events by, `Outbox::pass_by`).
    async fn claim(&self, outbox: &dyn Outbox, target: &Target) -> StoreResult<Option<Claimed>> {
        if matches!(target, Target::Webhooks) {
            match outbox.pass_by(target.name(), &self.owner, Utc::now()).await? {
                FanOut::Needed => {}
                FanOut::Passed | FanOut::Held => return Ok(None),
            }
        }
        outbox.claim(target.name(), &self.owner, self.lease(), self.cfg.batch, Utc::now()).await
    }

    /// Publishes `claimed` to `sink` while the store reads what follows it and records
    /// `pending`'s acknowledgement (`Outbox::ack_and_read`): the store's round trip hides behind
    /// the sink's. What was read is used only if the whole batch went out.
    async fn publish_reading_ahead(
        &self,
        outbox: &dyn Outbox,
        sink: &dyn Sink,
        claimed: &Claimed,
        pending: Option<(String, u64)>,
    ) -> (Published, StoreResult<Option<Vec<OutboxEvent>>>) {
        // Sends stop at half the lease; the hard limit leaves room for the ack.
        let soft = Instant::now() + self.lease() / 2;
        let publish = async {
            tokio::time::timeout(self.lease() * 3 / 4, sink.publish(&claimed.events, soft))
                .await
                .unwrap_or_else(|_| Published::stopped(0, SinkError::Unavailable("publish timed out".into())))
        };
        let after = &claimed.events[claimed.events.len() - 1].position;
        let acked = pending.as_ref().map(|(upto, count)| (upto.as_str(), *count));
        let ahead = outbox.ack_and_read(sink.name(), &self.owner, acked, after, self.lease(), self.cfg.batch, Utc::now());
        tokio::join!(publish, ahead)
    }

    /// Publishes the dead letters whose replay was asked for.
    async fn replay(&self, outbox: &dyn Outbox, sink: &dyn Sink) {
        let Ok(letters) = outbox.replays(sink.name(), 64).await else { return };
        for dl in letters {
            let event = OutboxEvent {
                position: dl.position.clone(),
                id: dl.event_id.clone(),
                shop: dl.shop.clone(),
                aggregate: dl.event.get("subject").and_then(|s| s.as_str()).unwrap_or_default().to_owned(),
                kind: dl.kind.clone(),
                sequence: dl.event.get("sequence").and_then(|s| s.as_i64()).unwrap_or_default(),
                envelope: dl.event.to_string(),
                created_at: Utc::now(),
            };
            let p = sink.publish(std::slice::from_ref(&event), Instant::now() + self.lease() / 2).await;
            let result = match p.error {
                None => Ok(()),
                Some(e) => Err(e.to_string()),
            };
            tracing::info!(sink = sink.name(), event = %dl.event_id, ok = result.is_ok(), "replayed a dead letter");
            if let Err(e) = outbox.replayed(sink.name(), &dl.event_id, result, Utc::now()).await {
                tracing::warn!(sink = sink.name(), error = %e, "recording a replay failed");
            }
        }
    }

    /// Sends due webhook deliveries of this shard, a bounded number at once.
    async fn dispatch_webhooks(self: Arc<Self>, outbox: Arc<dyn Outbox>, mut stop: watch::Receiver<bool>) {
        let cfg = &self.cfg.webhooks;
        let idle = Duration::from_millis((self.cfg.poll_ms * 5).max(50));
        loop {
            if *stop.borrow() {
                return;
            }
            let lease = Duration::from_millis(cfg.timeout_ms * 3);
            let due = match outbox.claim_deliveries(&self.owner, lease, cfg.concurrency.max(1) * 2, Utc::now()).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(shard = outbox.shard(), error = %e, "claiming webhook deliveries failed");
                    Vec::new()
                }
            };
            if due.is_empty() {
                if pause(idle, &mut stop).await {
                    return;
                }
                continue;
            }
            futures::stream::iter(due)
                .for_each_concurrent(cfg.concurrency.max(1), |(delivery, hook)| {
                    let outbox = outbox.clone();
                    let http = self.http.clone();
                    let allowed = &self.allowed;
                    let endpoint = self.endpoints.get(&webhook::origin(&hook.url));
                    async move {
                        let outcome = webhook::deliver(&http, allowed, &hook, &delivery, cfg, &endpoint, Utc::now()).await;
                        let label = match &outcome {
                            crate::store::outbox::DeliveryOutcome::Delivered { .. } => "delivered",
                            crate::store::outbox::DeliveryOutcome::Retry { .. } => "retry",
                            crate::store::outbox::DeliveryOutcome::Dead { .. } => "dead",
                        };
                        metrics::counter!("vitrina_webhook_attempts_total", "outcome" => label).increment(1);
                        if let Err(e) = outbox.finish_delivery(delivery.id, outcome, Utc::now()).await {
                            tracing::warn!(delivery = delivery.id, error = %e, "recording a webhook attempt failed; it will be retried after its lease");
                        }
                    }
                })
                .await;
        }
    }

    /// Removes published events past the retention, now and every ten minutes.
    async fn retention(self: Arc<Self>, outbox: Arc<dyn Outbox>, mut stop: watch::Receiver<bool>) {
        let names = Self::sink_names(&self.cfg);
        loop {
            let now = Utc::now();
            let before = now - chrono::Duration::hours(self.cfg.retention_hours as i64);
            match outbox.prune(before, &names, now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(shard = outbox.shard(), events = n, "removed published events past the retention"),
                Err(e) => tracing::warn!(shard = outbox.shard(), error = %e, "outbox retention failed"),
            }
            if pause(Duration::from_secs(600), &mut stop).await {
                return;
            }
        }
    }
}

fn record(sink: &str, acked: &[OutboxEvent], started: Instant, error: Option<&SinkError>) {
    let outcome = match error {
        None => "ok",
        Some(SinkError::Unavailable(_)) => "unavailable",
        Some(SinkError::Rejected(_)) => "rejected",
    };
    metrics::counter!("vitrina_outbox_attempts_total", "sink" => sink.to_owned(), "outcome" => outcome).increment(1);
    metrics::histogram!("vitrina_outbox_publish_seconds", "sink" => sink.to_owned()).record(started.elapsed().as_secs_f64());
    metrics::counter!("vitrina_outbox_published_total", "sink" => sink.to_owned()).increment(acked.len() as u64);
    let now = Utc::now();
    for e in acked {
        let lag = (now - e.created_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        metrics::histogram!("vitrina_outbox_lag_seconds", "sink" => sink.to_owned()).record(lag);
    }
}

/// Keeps the relay status and the outbox gauges current, on every instance (leader or not).
pub async fn watch_status(
    outboxes: Vec<Arc<dyn Outbox>>,
    cfg: EventsConfig,
    status: Arc<RelayStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let names = Relay::sink_names(&cfg);
    loop {
        for outbox in &outboxes {
            let shard = outbox.shard().to_owned();
            match outbox.sink_states(&names, Utc::now()).await {
                Ok(states) => {
                    for s in &states {
                        let labels = [("shard", shard.clone()), ("sink", s.sink.clone())];
                        metrics::gauge!("vitrina_outbox_backlog", &labels).set(s.backlog as f64);
                        metrics::gauge!("vitrina_outbox_oldest_pending_seconds", &labels)
                            .set(s.oldest_pending_ms.unwrap_or(0) as f64 / 1000.0);
                        metrics::gauge!("vitrina_outbox_dead_letters", &labels).set(s.dead_letters as f64);
                        metrics::gauge!("vitrina_outbox_head_attempts", &labels).set(f64::from(s.head_attempts));
                    }
                    status.update(&shard, |r| r.sinks = states);
                }
                Err(e) => tracing::debug!(shard, error = %e, "reading relay progress failed"),
            }
        }
        if pause(Duration::from_secs(2), &mut stop).await {
            return;
        }
    }
}
