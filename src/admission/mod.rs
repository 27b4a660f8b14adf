//! Admission control: what an instance lets in before any handler runs, so overload is a quick,
//! visible refusal instead of a slow collapse. Shop writes pass a gate per shop (a shop over its
//! share gets 429) and one per shard (a saturated shard gets 503); everything else passes one
//! gate for the instance. Token buckets per shop and per client address refuse with 429. Every
//! refusal carries `Retry-After` (longer while a gate keeps refusing) and is decided from memory,
//! without touching the database.

pub mod adaptive;
pub mod backoff;
pub mod config;
pub mod gate;
pub mod middleware;
pub mod rate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use serde::Serialize;

use self::config::AdmissionConfig;
use self::gate::{Gate, Pass};
use self::rate::Limiter;
pub use self::rate::Verdict;
use crate::shops::ShopId;

/// Beyond this many shop gates, idle ones are dropped (they are made anew on the next write).
const MAX_GATES: usize = 10_000;

pub struct Admission {
    pub(crate) cfg: AdmissionConfig,
    reads: Gate,
    shards: Mutex<HashMap<String, Arc<Gate>>>,
    shops: Mutex<HashMap<String, Arc<Gate>>>,
    shop_rate: Option<Limiter>,
    pub(crate) client_rate: Option<Limiter>,
}

/// What `GET /` shows of admission: the gates' occupancy now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdmissionReport {
    pub enabled: bool,
    pub reads_inside: usize,
    pub reads_waiting: usize,
    /// Writes inside per shard.
    pub shard_writes_inside: HashMap<String, usize>,
    /// Places for writes per shard: the configured number, or where the adaptive limit is now.
    pub shard_writes_limit: HashMap<String, usize>,
}

/// Why a request was not let in: a shop or client over its quota (429), or a full gate (503).
/// Decided from memory; `retry_after` in seconds.
#[derive(Debug, Clone)]
pub struct Refused {
    pub over_quota: bool,
    pub detail: String,
    pub retry_after: u64,
}

/// What a request is, for admission: a shop write, or anything else (perhaps of a shop).
pub enum Kind {
    ShopWrite(ShopId),
    Other(Option<ShopId>),
    /// Health, readiness and metrics: the balancer and the scraper must get through overload.
    Exempt,
}

pub fn classify(method: &Method, path: &str) -> Kind {
    if path.starts_with("/health/") || path == "/metrics" {
        return Kind::Exempt;
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let shop = match (parts.next(), parts.next()) {
        (Some("shops"), Some(id)) if !id.is_empty() => ShopId::parse(id).ok(),
        _ => None,
    };
    let write = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match shop {
        Some(shop) if write => Kind::ShopWrite(shop),
        shop => Kind::Other(shop),
    }
}

fn burst(rps: f64, burst: u64) -> u64 {
    if burst == 0 {
        rps.ceil() as u64
    } else {
        burst
    }
}

impl Admission {
    pub fn new(cfg: &AdmissionConfig) -> Admission {
        let wait = Duration::from_millis(cfg.queue_wait_ms);
        Admission {
            reads: Gate::new("reads", cfg.reads, cfg.reads_queue, wait, cfg.retry_after()),
            shards: Mutex::new(HashMap::new()),
            shops: Mutex::new(HashMap::new()),
            shop_rate: Limiter::new(cfg.shop_rps, burst(cfg.shop_rps, cfg.shop_burst)),
            client_rate: Limiter::new(cfg.client_rps, burst(cfg.client_rps, cfg.client_burst)),
            cfg: cfg.clone(),
        }
    }

    pub fn report(&self) -> AdmissionReport {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        AdmissionReport {
            enabled: self.cfg.enabled,
            reads_inside: self.reads.inside(),
            reads_waiting: self.reads.waiting(),
            shard_writes_inside: shards.iter().map(|(k, g)| (k.clone(), g.inside())).collect(),
            shard_writes_limit: shards.iter().map(|(k, g)| (k.clone(), g.limit())).collect(),
        }
    }

    /// The gate of `key` in `gates`, made on first use; idle ones are dropped past the bound.
    fn gate(
        &self,
        gates: &Mutex<HashMap<String, Arc<Gate>>>,
        key: &str,
        name: &'static str,
        limit: usize,
        queue: usize,
    ) -> Arc<Gate> {
        let mut gates = gates.lock().unwrap_or_else(|p| p.into_inner());
        if gates.len() >= MAX_GATES && !gates.contains_key(key) {
            gates.retain(|_, g| Arc::strong_count(g) > 1 || !g.idle());
        }
        let wait = Duration::from_millis(self.cfg.queue_wait_ms);
        let make = || {
            let gate = Gate::new(name, limit, queue, wait, self.cfg.retry_after());
            // The knee belongs to the shard's store, so only its gate adapts; a shop's places are
            // its share of the shard, a policy that stays as configured. Two gates adapting to
            // the same times would also take their baselines twice as often between them.
            if self.cfg.adaptive.enabled && name == "shard" {
                return Arc::new(gate.adaptive(&self.cfg.adaptive, Some(key.to_owned())));
            }
            Arc::new(gate)
        };
        gates.entry(key.to_owned()).or_insert_with(make).clone()
    }

    fn too_many(&self, detail: String, retry_after: u64) -> Refused {
        Refused { over_quota: true, detail, retry_after: retry_after.max(1) }
    }

    fn overloaded(&self, detail: String, retry_after: u64) -> Refused {
        Refused { over_quota: false, detail, retry_after: retry_after.max(1) }
    }

    /// Checks the buckets that apply; the verdict with the least left is the one reported.
    pub fn rate(&self, client: Option<&str>, shop: Option<&ShopId>, now: Instant) -> Result<Option<Verdict>, Refused> {
        let mut shown: Option<Verdict> = None;
        let checks = [(&self.client_rate, client, "client"), (&self.shop_rate, shop.map(ShopId::as_str), "shop")];
        for (limiter, key, scope) in checks {
            let (Some(limiter), Some(key)) = (limiter, key) else { continue };
            let v = limiter.check(key, now);
            if !v.allowed {
                metrics::counter!("vitrina_rate_limited_total", "scope" => scope).increment(1);
                let whose = if scope == "shop" { format!("shop {key}") } else { "this client".to_owned() };
                return Err(self.too_many(format!("{whose} is over its request rate; retry later"), v.reset_secs));
            }
            if shown.is_none_or(|s| v.remaining < s.remaining) {
                shown = Some(v);
            }
        }
        Ok(shown)
    }

    /// Admits a request or says why not. The passes are held until the response is produced;
    /// `shard_of` names a shop's shard.
    pub async fn admit(&self, kind: &Kind, shard_of: impl FnOnce(&ShopId) -> String) -> Result<Vec<Pass>, Refused> {
        match kind {
            Kind::Exempt => Ok(Vec::new()),
            Kind::Other(_) => {
                let pass =
                    self.reads.enter().await.map_err(|r| self.overloaded("the instance is at capacity".into(), r.retry_after))?;
                Ok(vec![pass])
            }
            Kind::ShopWrite(shop) => {
                let cfg = &self.cfg;
                let own = self.gate(&self.shops, shop.as_str(), "shop", cfg.shop_writes, cfg.shop_queue);
                let own = own
                    .enter()
                    .await
                    .map_err(|r| self.too_many(format!("shop {shop} has too many writes in progress"), r.retry_after))?;
                let shard = shard_of(shop);
                let shared = self.gate(&self.shards, &shard, "shard", cfg.shard_writes, cfg.shard_queue);
                let shared =
                    shared.enter().await.map_err(|r| self.overloaded(format!("shard {shard} is at capacity"), r.retry_after))?;
                Ok(vec![own, shared])
            }
        }
    }
}
