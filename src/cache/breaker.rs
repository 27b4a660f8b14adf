//! A circuit breaker for a dependency that can fail as a whole (Redis here; brokers and other
//! units later). Closed: calls go through and their outcomes are counted. Enough failures in a
//! window, or a run of them, open it: calls are refused at once, without waiting on a timeout.
//! After `open_for` one probe is let through (half-open); its success closes the breaker, its
//! failure opens it again. Time is passed in, so tests drive it without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    dependency: &'static str,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Permission for one call; report its outcome with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    probe: bool,
}

impl Breaker {
    pub fn new(dependency: &'static str, cfg: BreakerConfig) -> Breaker {
        let now = Instant::now();
        metrics::gauge!("vitrina_breaker_state", "dependency" => dependency).set(0.0);
        Breaker {
            dependency,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go through now? Open refuses; half-open lets one probe through at a time.
    pub fn allow(&self, now: Instant) -> Option<Permit> {
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

    pub fn record(&self, permit: Permit, ok: bool, now: Instant) {
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
        match to {
            BreakerState::Open => tracing::warn!(dependency = self.dependency, "circuit breaker opened"),
            BreakerState::Closed => tracing::info!(dependency = self.dependency, "circuit breaker closed"),
            BreakerState::HalfOpen => tracing::info!(dependency = self.dependency, "circuit breaker half-open: probing"),
        }
        s.state = to;
        metrics::gauge!("vitrina_breaker_state", "dependency" => self.dependency).set(to.level());
        metrics::counter!("vitrina_breaker_transitions_total", "dependency" => self.dependency, "to" => to.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "test",
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
}
