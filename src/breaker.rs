//! A circuit breaker for a dependency that can fail as a whole: a database shard, Redis, a
//! broker, a webhook endpoint. Closed: calls go through and their outcomes are counted. Enough
//! failures in a window, or a run of them, open it: calls are refused at once, without waiting
//! on a timeout. After `open_ms` one probe is let through (half-open); its success closes the
//! breaker, its failure opens it again. Time is passed in, so tests drive it without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Opens when at least `min_calls` calls in `window_ms` failed at this rate (0-1)...
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window_ms: u64,
    /// ...or after this many failures in a row, whatever the traffic.
    pub consecutive_failures: u32,
    /// How long it stays open before a probe is let through.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_rate: 0.5, min_calls: 20, window_ms: 10_000, consecutive_failures: 5, open_ms: 2_000 }
    }
}

impl BreakerConfig {
    pub fn check(&self, name: &str) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            anyhow::bail!("{name}.failure_rate is a fraction between 0 and 1");
        }
        if self.consecutive_failures == 0 {
            anyhow::bail!("{name}.consecutive_failures must be positive");
        }
        Ok(())
    }
}

/// `[breakers]`: one breaker per shard's database, per event sink, per webhook endpoint (the
/// Redis tier has its own under `[cache]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakersConfig {
    pub store: BreakerConfig,
    pub sinks: BreakerConfig,
    pub webhooks: BreakerConfig,
}

impl BreakersConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        self.store.check("breakers.store")?;
        self.sinks.check("breakers.sinks")?;
        self.webhooks.check("breakers.webhooks")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 half-open, 2 open.
    fn level(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

struct Inner {
    state: BreakerState,
    window_start: Instant,
    calls: u32,
    failures: u32,
    in_a_row: u32,
    opened_at: Instant,
    probing: bool,
}

pub struct Breaker {
    /// What kind of dependency (`store`, `redis`, `sink`, `webhook`) and which one, for metrics.
    dependency: &'static str,
    name: String,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Permission for one call; its outcome goes to [`Breaker::record`]. Callers use [`Breaker::call`],
/// which also frees a probe whose caller went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permit {
    probe: bool,
}

/// Breakers made on first use, one per key (a webhook endpoint, say). Past a bound, closed
/// ones are forgotten: a breaker that has nothing to remember is as good as a new one.
pub struct Breakers {
    dependency: &'static str,
    cfg: BreakerConfig,
    map: Mutex<std::collections::HashMap<String, std::sync::Arc<Breaker>>>,
}

const MAX_KEYED_BREAKERS: usize = 10_000;

impl Breakers {
    pub fn new(dependency: &'static str, cfg: BreakerConfig) -> Breakers {
        Breakers { dependency, cfg, map: Mutex::new(std::collections::HashMap::new()) }
    }

    pub fn get(&self, key: &str) -> std::sync::Arc<Breaker> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(key) {
            return b.clone();
        }
        if map.len() >= MAX_KEYED_BREAKERS {
            map.retain(|_, b| b.state() != BreakerState::Closed);
        }
        let b = std::sync::Arc::new(Breaker::new(self.dependency, key, self.cfg.clone()));
        map.insert(key.to_owned(), b.clone());
        b
    }
}

impl Breaker {
    pub fn new(dependency: &'static str, name: impl Into<String>, cfg: BreakerConfig) -> Breaker {
        let now = Instant::now();
        let name = name.into();
        metrics::gauge!("vitrina_breaker_state", "dependency" => dependency, "name" => name.clone()).set(0.0);
        Breaker {
            dependency,
            name,
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window_start: now,
                calls: 0,
                failures: 0,
                in_a_row: 0,
                opened_at: now,
                probing: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Runs `call` through the breaker: `None` when it is refused, else its result, whose
    /// outcome `failed` judges. A call dropped before it finished (its caller went away) neither
    /// succeeds nor fails, but frees the probe's place so the next call can probe.
    pub async fn call<T, F>(&self, call: F, failed: impl FnOnce(&T) -> bool) -> Option<T>
    where
        F: std::future::Future<Output = T>,
    {
        self.call_or_return(call, failed).await.ok()
    }

    /// `call`, handing the call back unrun when the breaker refuses it.
    pub async fn call_or_return<T, F>(&self, call: F, failed: impl FnOnce(&T) -> bool) -> Result<T, F>
    where
        F: std::future::Future<Output = T>,
    {
        struct Unfinished<'a>(&'a Breaker, Option<Permit>);
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                if self.1.is_some_and(|p| p.probe) {
                    self.0.lock().probing = false;
                }
            }
        }
        let Some(permit) = self.allow(Instant::now()) else { return Err(call) };
        let mut pending = Unfinished(self, Some(permit));
        let out = call.await;
        pending.1 = None;
        self.record(permit, !failed(&out), Instant::now());
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go through now? Open refuses; half-open lets one probe through at a time.
    fn allow(&self, now: Instant) -> Option<Permit> {
        let mut s = self.lock();
        match s.state {
            BreakerState::Closed => Some(Permit { probe: false }),
            BreakerState::Open if now.duration_since(s.opened_at) >= Duration::from_millis(self.cfg.open_ms) => {
                self.set(&mut s, BreakerState::HalfOpen);
                s.probing = true;
                Some(Permit { probe: true })
            }
            BreakerState::Open => None,
            BreakerState::HalfOpen if !s.probing => {
                s.probing = true;
                Some(Permit { probe: true })
            }
            BreakerState::HalfOpen => None,
        }
    }

    fn record(&self, permit: Permit, ok: bool, now: Instant) {
        let mut s = self.lock();
        if permit.probe {
            s.probing = false;
            if ok {
                self.set(&mut s, BreakerState::Closed);
                s.window_start = now;
                (s.calls, s.failures, s.in_a_row) = (0, 0, 0);
            } else {
                s.opened_at = now;
                self.set(&mut s, BreakerState::Open);
            }
            return;
        }
        if s.state != BreakerState::Closed {
            // A call let through before the breaker opened: its outcome is old news.
            return;
        }
        if now.duration_since(s.window_start) >= Duration::from_millis(self.cfg.window_ms) {
            s.window_start = now;
            (s.calls, s.failures) = (0, 0);
        }
        s.calls += 1;
        if ok {
            s.in_a_row = 0;
            return;
        }
        s.failures += 1;
        s.in_a_row += 1;
        let rate_tripped = s.calls >= self.cfg.min_calls && f64::from(s.failures) >= self.cfg.failure_rate * f64::from(s.calls);
        if rate_tripped || s.in_a_row >= self.cfg.consecutive_failures {
            s.opened_at = now;
            self.set(&mut s, BreakerState::Open);
        }
    }

    fn set(&self, s: &mut Inner, to: BreakerState) {
        if s.state == to {
            return;
        }
        let (dependency, name) = (self.dependency, self.name.as_str());
        match to {
            BreakerState::Open => tracing::warn!(dependency, name, "circuit breaker opened"),
            BreakerState::Closed => tracing::info!(dependency, name, "circuit breaker closed"),
            BreakerState::HalfOpen => tracing::info!(dependency, name, "circuit breaker half-open: probing"),
        }
        s.state = to;
        metrics::gauge!("vitrina_breaker_state", "dependency" => dependency, "name" => name.to_owned()).set(to.level());
        metrics::counter!("vitrina_breaker_transitions_total", "dependency" => dependency, "name" => name.to_owned(), "to" => to.as_str())
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "test",
            "t",
            BreakerConfig { failure_rate: 0.5, min_calls: 4, window_ms: 1000, consecutive_failures: 3, open_ms: 500 },
        )
    }

    fn call(b: &Breaker, ok: bool, at: Instant) -> bool {
        match b.allow(at) {
            Some(p) => {
                b.record(p, ok, at);
                true
            }
            None => false,
        }
    }

    #[test]
    fn a_run_of_failures_opens_it_and_it_refuses_until_the_probe_time() {
        let b = breaker();
        let t = Instant::now();
        assert!(call(&b, false, t) && call(&b, false, t));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(call(&b, false, t));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!call(&b, true, t + Duration::from_millis(499)), "refused while open");
        // One probe at a time once open_for passed.
        let probe = b.allow(t + Duration::from_millis(500)).expect("a probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow(t + Duration::from_millis(501)).is_none(), "a second probe waits");
        b.record(probe, true, t + Duration::from_millis(502));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_full_period() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            call(&b, false, t);
        }
        let later = t + Duration::from_millis(600);
        assert!(call(&b, false, later), "the probe goes through and fails");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow(later + Duration::from_millis(400)).is_none());
        assert!(b.allow(later + Duration::from_millis(500)).is_some());
    }

    #[test]
    fn the_failure_rate_opens_it_only_past_the_minimum_traffic_and_within_the_window() {
        let b = breaker();
        let t = Instant::now();
        // Alternating outcomes never make a run of three, but reach 50 % at the fourth call.
        assert!(call(&b, false, t) && call(&b, true, t) && call(&b, false, t));
        assert_eq!(b.state(), BreakerState::Closed, "below min_calls");
        call(&b, true, t);
        assert_eq!(b.state(), BreakerState::Closed, "2 of 4 failed but the last one succeeded");
        call(&b, false, t);
        assert_eq!(b.state(), BreakerState::Open, "3 of 5 failed");

        let b = breaker();
        let t = Instant::now();
        call(&b, false, t);
        call(&b, true, t);
        // A new window forgets the old failures.
        let next = t + Duration::from_millis(1000);
        call(&b, true, next);
        call(&b, false, next);
        call(&b, true, next);
        call(&b, true, next);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn outcomes_of_calls_admitted_before_it_opened_do_not_close_it() {
        let b = breaker();
        let t = Instant::now();
        let early = b.allow(t).unwrap();
        for _ in 0..3 {
            call(&b, false, t);
        }
        b.record(early, true, t);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn a_probe_whose_caller_went_away_lets_the_next_call_probe() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            call(&b, false, t);
        }
        tokio::time::sleep(Duration::from_millis(510)).await;
        // The probe's caller gives up before the dependency answers.
        let abandoned = tokio::time::timeout(Duration::from_millis(10), b.call(std::future::pending::<bool>(), |_| false)).await;
        assert!(abandoned.is_err());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.call(async { true }, |ok| !ok).await, Some(true), "the next call probes");
        assert_eq!(b.state(), BreakerState::Closed);
        // Refused while open, judged by the caller's rule.
        for _ in 0..3 {
            assert_eq!(b.call(async { Err::<(), _>("down") }, Result::is_err).await, Some(Err("down")));
        }
        assert_eq!(b.call(async { Ok::<_, ()>(()) }, Result::is_err).await, None);
    }
}
