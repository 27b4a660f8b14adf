//! Token buckets per key (a shop, a client address): `rate` tokens a second up to `burst`. Time
//! is passed in, so the arithmetic is tested without sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Beyond this many keys, full (idle) buckets are forgotten: a full bucket and a new one agree.
const MAX_KEYS: usize = 100_000;

pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What one request learnt about its key's bucket, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again (allowed) or holds a token (refused), rounded up.
    pub reset_secs: u64,
}

impl Limiter {
    /// `None` when `rate` is zero: no limit.
    pub fn new(rate: f64, burst: u64) -> Option<Limiter> {
        (rate > 0.0).then(|| Limiter { rate, burst: burst.max(1) as f64, buckets: Mutex::new(HashMap::new()) })
    }

    pub fn check(&self, key: &str, now: Instant) -> Verdict {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        let missing = if allowed { self.burst - b.tokens } else { 1.0 - b.tokens };
        Verdict {
            allowed,
            limit: self.burst as u64,
            remaining: b.tokens.floor() as u64,
            reset_secs: Duration::from_secs_f64(missing / self.rate).as_secs_f64().ceil() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new(2.0, 3).unwrap();
        let t0 = Instant::now();
        let v: Vec<bool> = (0..4).map(|_| l.check("a", t0).allowed).collect();
        assert_eq!(v, [true, true, true, false], "burst of 3");
        let refused = l.check("a", t0);
        assert_eq!((refused.remaining, refused.reset_secs), (0, 1), "a token in half a second, rounded up");
        assert!(l.check("b", t0).allowed, "keys are apart");
        assert!(l.check("a", t0 + Duration::from_millis(500)).allowed, "one token per 1/rate");
        assert!(!l.check("a", t0 + Duration::from_millis(500)).allowed);
        let later = l.check("a", t0 + Duration::from_secs(60));
        assert!(later.allowed);
        assert_eq!((later.limit, later.remaining), (3, 2), "never more than the burst");
    }

    #[test]
    fn zero_rate_means_no_limiter() {
        assert!(Limiter::new(0.0, 10).is_none());
    }
}
