//! Self-registration in the service registry (etcd, through its JSON gateway): while this
//! instance is ready, `discovery.prefix + name` holds its address under a lease it keeps alive.
//! Draining withdraws the key at once; a crashed instance's key expires with its lease. The
//! gateway is driven from the registry (`vitrina cluster`'s registrar), not from here: vitrina
//! knows only the registry.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};

pub mod config;

use self::config::DiscoveryConfig;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// This instance's registration: its lease while it holds one.
pub struct Registration {
    cfg: DiscoveryConfig,
    http: reqwest::Client,
    lease: Mutex<Option<String>>,
    withdrawn: watch::Sender<bool>,
}

impl Registration {
    /// `None` when no registry is configured.
    pub fn new(cfg: &DiscoveryConfig) -> anyhow::Result<Option<Arc<Registration>>> {
        if cfg.etcd.is_empty() {
            return Ok(None);
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let (withdrawn, _) = watch::channel(false);
        Ok(Some(Arc::new(Registration { cfg: cfg.clone().with_defaults(), http, lease: Mutex::new(None), withdrawn })))
    }

    fn key(&self) -> String {
        format!("{}{}", self.cfg.prefix, self.cfg.name)
    }

    /// One call to the first etcd member that answers.
    async fn call(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let mut last = None;
        for endpoint in &self.cfg.etcd {
            match self.http.post(format!("{}{path}", endpoint.trim_end_matches('/'))).json(&body).send().await {
                Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                Ok(r) => last = Some(anyhow::anyhow!("{endpoint}{path}: {}", r.status())),
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint")))
    }

    async fn register(&self) -> anyhow::Result<String> {
        let grant = self.call("/v3/lease/grant", json!({ "TTL": self.cfg.ttl_secs })).await?;
        let lease = grant["ID"].as_str().context("etcd granted no lease")?.to_owned();
        let value = json!({ "name": self.cfg.name, "url": self.cfg.advertise }).to_string();
        let put = json!({ "key": B64.encode(self.key()), "value": B64.encode(value), "lease": lease });
        self.call("/v3/kv/put", put).await?;
        Ok(lease)
    }

    /// Whether the lease is still alive after renewing it.
    async fn renew(&self, lease: &str) -> anyhow::Result<bool> {
        let r = self.call("/v3/lease/keepalive", json!({ "ID": lease })).await?;
        // An expired lease comes back without a TTL (zero is left out of the JSON).
        Ok(r["result"]["TTL"].as_str().and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| t > 0))
    }

    /// Keeps the key registered until withdrawn or `stop`: registers, renews the lease every
    /// third of its TTL, and registers again if the lease was lost (an etcd outage longer
    /// than the TTL).
    pub async fn keep(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut withdrawn = self.withdrawn.subscribe();
        let period = Duration::from_millis(self.cfg.ttl_secs * 1000 / 3).max(Duration::from_millis(200));
        loop {
            {
                let mut lease = self.lease.lock().await;
                if *self.withdrawn.borrow() {
                    return;
                }
                let alive = match lease.as_deref() {
                    Some(id) => self.renew(id).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "registry: renewing the lease failed");
                        true // not known to be lost: renew again next period
                    }),
                    None => false,
                };
                if !alive {
                    match self.register().await {
                        Ok(id) => {
                            tracing::info!(key = %self.key(), "registered in the registry");
                            *lease = Some(id);
                        }
                        Err(e) => tracing::warn!(error = %e, "registry: registering failed; retrying"),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => break,
                _ = withdrawn.wait_for(|w| *w) => return,
            }
        }
        self.withdraw().await;
    }

    /// Leaves the registry now (revoking the lease deletes the key); bounded by the client's
    /// timeout, and the lease's expiry covers a failure.
    pub async fn withdraw(&self) {
        self.withdrawn.send_replace(true);
        let mut lease = self.lease.lock().await;
        if let Some(id) = lease.take() {
            match self.call("/v3/lease/revoke", json!({ "ID": id })).await {
                Ok(_) => tracing::info!(key = %self.key(), "withdrawn from the registry"),
                Err(e) => tracing::warn!(error = %e, "registry: withdrawing failed; the lease will expire"),
            }
        }
    }
}
