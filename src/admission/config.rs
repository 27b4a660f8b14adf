use serde::{Deserialize, Serialize};

/// `[admission]`: how much work an instance lets in, and the quotas of shops and clients.
/// The defaults keep a 2-core machine responsive; rate limits are off until set. Write places
/// sit at the knee of one SQLite writer measured in docs/benchmarks.md: more inside adds
/// latency, not throughput; the queues only absorb bursts, so a refusal stays immediate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    pub enabled: bool,
    /// Requests other than shop writes (catalog reads, the seed API, admin calls) inside at once.
    pub reads: usize,
    pub reads_queue: usize,
    /// Shop writes (orders, stock, catalog, feeds) inside at once per shard.
    pub shard_writes: usize,
    pub shard_queue: usize,
    /// Writes inside at once per shop: one shop's sale cannot take a whole shard.
    pub shop_writes: usize,
    pub shop_queue: usize,
    /// Longest a request waits in a queue before it is refused.
    pub queue_wait_ms: u64,
    /// `Retry-After` on a refusal for a full gate, in seconds: the base after a burst, doubled with
    /// each quarter second the gate keeps refusing up to `retry_after_max_secs` (equal to the base: fixed).
    pub retry_after_secs: u64,
    pub retry_after_max_secs: u64,
    /// Requests per second per shop (token bucket refill), 0 for none; `shop_burst` tokens at most.
    pub shop_rps: f64,
    pub shop_burst: u64,
    /// Requests per second per client address, 0 for none.
    pub client_rps: f64,
    pub client_burst: u64,
    /// Take the client address from the first `X-Forwarded-For` entry (behind a trusted proxy only).
    pub trust_forwarded_for: bool,
    /// Shard gates that find their own limit below `shard_writes` from the times of their writes.
    pub adaptive: AdaptiveConfig,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            enabled: true,
            reads: 512,
            reads_queue: 1024,
            shard_writes: 32,
            shard_queue: 16,
            shop_writes: 24,
            shop_queue: 8,
            queue_wait_ms: 10,
            retry_after_secs: 1,
            retry_after_max_secs: 30,
            shop_rps: 0.0,
            shop_burst: 0,
            client_rps: 0.0,
            client_burst: 0,
            trust_forwarded_for: false,
            adaptive: AdaptiveConfig::default(),
        }
    }
}

impl AdmissionConfig {
    /// The base and the ceiling of a gate's `Retry-After` (the gate's backoff bounds them).
    pub fn retry_after(&self) -> (u64, u64) {
        (self.retry_after_secs, self.retry_after_max_secs)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if self.enabled && (self.reads == 0 || self.shard_writes == 0 || self.shop_writes == 0) {
            anyhow::bail!("admission: reads, shard_writes and shop_writes must be positive (or enabled = false)");
        }
        for (name, rps) in [("shop_rps", self.shop_rps), ("client_rps", self.client_rps)] {
            if !(rps.is_finite() && rps >= 0.0) {
                anyhow::bail!("admission: {name} must be a number of requests per second, 0 for no limit");
            }
        }
        self.adaptive.check()
    }
}

/// `[admission.adaptive]`: whether write gates find their own limit, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConfig {
    pub enabled: bool,
    /// The admitted times may reach this multiple of the baseline before the limit shrinks.
    pub tolerance: f64,
    /// Fewest places a gate keeps, also the places while the baseline is measured.
    pub min_places: usize,
    /// Which percentile of a window's times is judged (0.9 = p90).
    pub percentile: f64,
    pub window_ms: u64,
    /// Fewest times a window needs before it is judged; a quieter window is extended.
    pub window_samples: usize,
    /// How often the baseline is measured again, and from how many times.
    pub baseline_every_secs: u64,
    pub baseline_samples: usize,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: false,
            tolerance: 2.0,
            min_places: 4,
            percentile: 0.9,
            window_ms: 250,
            window_samples: 32,
            baseline_every_secs: 30,
            baseline_samples: 64,
        }
    }
}

impl AdaptiveConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        if !(self.tolerance.is_finite() && self.tolerance >= 1.0) {
            anyhow::bail!("admission.adaptive.tolerance must be a multiple of the baseline, at least 1");
        }
        if !(self.percentile > 0.0 && self.percentile < 1.0) {
            anyhow::bail!("admission.adaptive.percentile must be between 0 and 1 (0.9 for p90)");
        }
        if self.min_places == 0 || self.window_ms == 0 || self.window_samples == 0 || self.baseline_samples == 0 {
            anyhow::bail!("admission.adaptive: min_places, window_ms, window_samples and baseline_samples must be positive");
        }
        if self.baseline_every_secs == 0 {
            anyhow::bail!("admission.adaptive.baseline_every_secs must be positive");
        }
        Ok(())
    }
}
