//! An adaptive limit for a write gate: how many requests it lets inside, found from how long the
//! admitted ones take rather than fixed by hand.
//!
//! Why: a fixed number of places is right for one machine only. Past the store's knee more
//! requests inside add waiting, not throughput (docs/benchmarks.md: one SQLite writer's knee moved
//! from ~24 places to fewer on a slower machine), and the admitted latency is what a buyer sees.
//!
//! How (a gradient controller, as in Envoy's adaptive concurrency and Netflix's
//! concurrency-limits, written for this gate):
//! - **Baseline.** First, and now and then after, the gate holds the limit at `min` places, waits until what was
//!   inside before has left, and takes the `percentile` of the next `baseline_samples` times as the
//!   time a request takes without waiting for others. The first baseline is taken at the first
//!   requests and the limit grows from `min`; later ones every `baseline_every` (with jitter so
//!   instances do not probe together), and the limit goes back to where it was.
//! - **Windows.** Otherwise every `window` (once it holds enough samples) the `percentile` of its
//!   times is compared with `tolerance` x baseline: gradient = target / observed, bounded to
//!   [0.5, 2], and the new limit is gradient x limit + sqrt(limit) of headroom, within [`min`, `max`].
//!   Slower than the target shrinks the limit at most by half per window; faster grows it.
//!
//! Time is passed in, so the controller is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::AdaptiveConfig;

/// The most times one window keeps; past it the window is judged on those (it is long enough).
const MAX_SAMPLES: usize = 4096;

pub struct Controller {
    cfg: AdaptiveConfig,
    max: usize,
    state: Mutex<State>,
}

struct State {
    limit: usize,
    /// The time a request takes without waiting for others; none before the first measurement.
    baseline: Option<Duration>,
    phase: Phase,
    window_start: Instant,
    samples: Vec<Duration>,
    /// Varies the baseline period by up to a quarter, seeded per controller.
    jitter: u64,
}

enum Phase {
    /// Holding `min_places` until what was inside before has left (`clear_since` is then set);
    /// only requests that entered after that count. `resume` is the limit to go back to.
    Baseline { clear_since: Option<Instant>, resume: usize },
    /// Judging windows until the next baseline is due.
    Windows { next_baseline: Instant },
}

impl Controller {
    /// A controller for a gate of at most `max` places. It begins by measuring the baseline.
    pub fn new(cfg: &AdaptiveConfig, max: usize, now: Instant, seed: u64) -> Controller {
        let cfg = cfg.clone();
        let max = max.max(1);
        let min = cfg.min_places.min(max);
        let state = State {
            limit: min,
            baseline: None,
            // From its fewest places it grows window by window; opening all at once would let a
            // sale that is already on fill them before the first window could judge.
            phase: Phase::Baseline { clear_since: None, resume: min },
            window_start: now,
            samples: Vec::new(),
            jitter: seed | 1,
        };
        Controller { cfg: AdaptiveConfig { min_places: min, ..cfg }, max, state: Mutex::new(state) }
    }

    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    pub fn baseline(&self) -> Option<Duration> {
        self.lock().baseline
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request that entered at `entered` left at `now`, leaving `inside` others inside.
    /// Returns the new limit when it changed.
    pub fn left(&self, entered: Instant, now: Instant, inside: usize) -> Option<usize> {
        let mut s = self.lock();
        let before = s.limit;
        let took = now.saturating_duration_since(entered);
        match s.phase {
            Phase::Baseline { clear_since, resume } => match clear_since {
                Some(since) if entered >= since => {
                    s.samples.push(took);
                    if s.samples.len() >= self.cfg.baseline_samples {
                        let measured = percentile(&mut s.samples, self.cfg.percentile);
                        s.baseline = Some(measured.max(Duration::from_micros(1)));
                        s.limit = resume;
                        let next_baseline = now + self.baseline_period(&mut s);
                        s.phase = Phase::Windows { next_baseline };
                        s.window_start = now;
                        s.samples.clear();
                    }
                }
                Some(_) => {}
                // Those inside when the baseline began are leaving; once no more are inside than
                // its places, whoever enters next waits only for requests of the baseline.
                None if inside <= self.cfg.min_places => {
                    s.phase = Phase::Baseline { clear_since: Some(now), resume };
                }
                None => {}
            },
            Phase::Windows { next_baseline } => {
                if s.samples.len() < MAX_SAMPLES {
                    s.samples.push(took);
                }
                let full = now.saturating_duration_since(s.window_start) >= Duration::from_millis(self.cfg.window_ms);
                if full && s.samples.len() >= self.cfg.window_samples {
                    let observed = percentile(&mut s.samples, self.cfg.percentile);
                    s.limit = self.next_limit(s.limit, s.baseline.unwrap_or(observed), observed);
                    s.samples.clear();
                    s.window_start = now;
                }
                if now >= next_baseline {
                    s.phase = Phase::Baseline { clear_since: None, resume: s.limit };
                    s.limit = self.cfg.min_places;
                    s.samples.clear();
                }
            }
        }
        (s.limit != before).then_some(s.limit)
    }

    fn next_limit(&self, limit: usize, baseline: Duration, observed: Duration) -> usize {
        let target = baseline.as_secs_f64() * self.cfg.tolerance;
        let gradient = (target / observed.as_secs_f64().max(1e-9)).clamp(0.5, 2.0);
        let current = limit as f64;
        // Headroom only while not shrinking: it lets a gate at its target try one step more.
        let headroom = if gradient >= 1.0 { current.sqrt() } else { 0.0 };
        let next = (gradient * current + headroom).round() as usize;
        next.clamp(self.cfg.min_places, self.max)
    }

    fn baseline_period(&self, s: &mut State) -> Duration {
        // xorshift: spread instances' baselines so they do not all hold back at once.
        s.jitter ^= s.jitter << 13;
        s.jitter ^= s.jitter >> 7;
        s.jitter ^= s.jitter << 17;
        let every = Duration::from_secs(self.cfg.baseline_every_secs);
        let spread = every.as_millis() as u64 / 4;
        every + Duration::from_millis(s.jitter % (spread + 1))
    }
}

/// The `p` quantile (0 < p < 1) of `samples`, which must not be empty; reorders them.
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    let rank = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    *samples.select_nth_unstable(rank).1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig { enabled: true, window_samples: 4, baseline_samples: 8, ..AdaptiveConfig::default() }
    }

    /// Feeds `n` departures that each took `took`, spread over `over`, starting at `at`.
    fn feed(c: &Controller, at: Instant, n: u32, took: Duration, over: Duration) -> Instant {
        let mut now = at;
        for _ in 0..n {
            now += over / n;
            c.left(now - took, now, 0);
        }
        now
    }

    #[test]
    fn percentile_is_the_rank_above_the_share() {
        let mut v: Vec<Duration> = (1..=10).rev().map(|i| MS * i).collect();
        assert_eq!(percentile(&mut v, 0.9), MS * 9);
        assert_eq!(percentile(&mut v, 0.5), MS * 5);
        assert_eq!(percentile(&mut [MS], 0.99), MS);
    }

    #[test]
    fn it_measures_the_baseline_first_at_its_fewest_places_then_opens_up() {
        let t0 = Instant::now();
        let c = Controller::new(&cfg(), 24, t0, 7);
        assert_eq!((c.limit(), c.baseline()), (4, None), "starts holding its fewest places");
        // Those inside before the baseline began do not count, even once it can start.
        assert_eq!(c.left(t0, t0 + MS * 50, 10), None);
        assert_eq!(c.left(t0, t0 + MS * 51, 4), None, "inside down to its places: measuring from now");
        c.left(t0, t0 + MS * 52, 3);
        let now = feed(&c, t0 + MS * 60, 7, MS * 2, MS * 7);
        assert_eq!((c.limit(), c.baseline()), (4, None), "seven of eight times so far");
        assert_eq!(c.left(now - MS, now + MS, 3), None, "eight times: measured, and growing from here");
        assert_eq!(c.baseline(), Some(MS * 2));
        let now = feed(&c, now + MS, 8, MS * 2, MS * 250);
        assert_eq!(c.limit(), 10, "twice as fast as the target: 4 x 2 + sqrt(4)");
        feed(&c, now, 8, MS * 2, MS * 250);
        assert_eq!(c.limit(), 23);
    }

    fn measured(max: usize, baseline: Duration) -> (Controller, Instant) {
        let t0 = Instant::now();
        let c = Controller::new(&cfg(), max, t0, 7);
        c.left(t0, t0, 0);
        let mut now = feed(&c, t0 + MS, 8, baseline, MS * 8);
        assert_eq!(c.baseline(), Some(baseline));
        // Grown to its ceiling by windows at the baseline, as the tests below start from there.
        for _ in 0..10 {
            now = feed(&c, now, 8, baseline, MS * 250);
        }
        assert_eq!(c.limit(), max);
        (c, now)
    }

    #[test]
    fn a_window_slower_than_the_target_shrinks_the_limit_and_at_most_by_half() {
        let (c, now) = measured(24, MS * 2);
        let now = feed(&c, now, 8, MS * 5, MS * 250);
        assert_eq!(c.limit(), 19, "p90 5 ms against a 4 ms target: 24 x 0.8");
        feed(&c, now, 8, MS * 100, MS * 250);
        assert_eq!(c.limit(), 10, "far slower: halved, not more");
    }

    #[test]
    fn a_window_within_the_target_grows_it_up_to_the_ceiling_with_headroom() {
        let (c, now) = measured(24, MS * 2);
        let now = feed(&c, now, 8, MS * 30, MS * 250);
        let now = feed(&c, now, 8, MS * 30, MS * 250);
        assert_eq!(c.limit(), 6);
        feed(&c, now, 8, MS * 4, MS * 250);
        assert_eq!(c.limit(), 8, "at the target: 6 + sqrt(6)");
        let (c, now) = measured(24, MS * 2);
        feed(&c, now, 8, MS, MS * 250);
        assert_eq!(c.limit(), 24, "never past the configured places");
    }

    #[test]
    fn a_window_is_judged_only_when_long_enough_and_with_enough_times() {
        let (c, now) = measured(24, MS * 2);
        let now = feed(&c, now, 8, MS * 10, MS * 100);
        assert_eq!(c.limit(), 24, "a tenth of a second is not a window yet");
        let now = now + MS * 300;
        c.left(now - MS * 10, now, 0);
        assert_eq!(c.limit(), 12, "judged at the next departure past the window");
    }

    #[test]
    fn the_baseline_is_measured_again_after_its_period() {
        let (c, now) = measured(24, MS * 2);
        // Comfortably inside the target for half a minute and a quarter: it stays open.
        let mut now = now;
        while c.limit() == 24 {
            now = feed(&c, now, 8, MS * 3, MS * 250);
            assert!(now < Instant::now() + Duration::from_secs(38), "a new baseline within 30 s plus a quarter");
        }
        assert_eq!(c.limit(), 4, "holding its fewest places for the new baseline");
        c.left(now, now + MS, 0);
        feed(&c, now + MS * 5, 8, MS * 3, MS * 8);
        assert_eq!((c.limit(), c.baseline()), (24, Some(MS * 3)), "the new baseline, back where it was");
    }

    /// A store whose every request waits for all others inside once more than `knee` are:
    /// the time inside is base x max(1, limit / knee). The controller settles where the time
    /// stays near the tolerance: about twice the knee, far below the ceiling.
    #[test]
    fn against_a_store_with_a_knee_it_settles_where_the_time_meets_the_tolerance() {
        let (c, mut now) = measured(256, MS * 2);
        let knee = 20.0;
        let mut seen = Vec::new();
        for _ in 0..80 {
            let took = MS.mul_f64(2.0 * (c.limit() as f64 / knee).max(1.0));
            now = feed(&c, now, 8, took, MS * 250);
            seen.push(c.limit());
        }
        let settled = &seen[40..];
        assert!(settled.iter().all(|&l| (20..=48).contains(&l)), "limits after settling: {settled:?}");
    }
}
