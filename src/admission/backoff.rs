//! How long a refused client is asked to stay away (`Retry-After`).
//!
//! A gate that refuses a burst asks for the base (1 s). A gate that keeps refusing, window after
//! window (a quarter second each), doubles what it asks for with each heavy window up to a
//! ceiling, and comes down a step per window that was not heavy. The windows are short because
//! the comebacks of the first second already arrive a second later: by then a sale that goes on
//! must be asking for more. Why at all: during an overload that lasts, every client that obeys
//! `Retry-After: 1` comes back into the same overload a second later, and the comebacks add up to
//! several times the load that caused them (docs/benchmarks.md, retry storms). Asking for longer,
//! each answer drawn between half and all of it, spreads the comebacks out past the overload
//! instead of stacking them on it. It cannot make a sustained overload smaller: a client that
//! retries a fixed number of times still does, later.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Backoff {
    base: u64,
    max: u64,
    /// Refusals within one window that make it a heavy window.
    heavy: u64,
    window: Duration,
    origin: Instant,
    /// The highest level: the first whose ask reaches the ceiling, and at least 1 so that
    /// `sustained` can say so even when the ceiling is the base.
    top: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The window (counted from `origin`) the refusals in `refused` fell in.
    window: u64,
    refused: u64,
    /// Doublings of the base asked for now.
    level: u32,
}

impl Backoff {
    pub fn new(base: u64, max: u64, heavy: u64, window: Duration, origin: Instant) -> Backoff {
        let base = base.max(1);
        let window = window.max(Duration::from_millis(1));
        let mut b = Backoff {
            base,
            max: max.max(base),
            heavy: heavy.max(1),
            window,
            origin,
            top: 0,
            state: Mutex::new(State::default()),
        };
        while b.ask(b.top) < b.max {
            b.top += 1;
        }
        b.top = b.top.max(1);
        b
    }

    /// Counts a refusal at `now` and returns the `Retry-After` to ask for, before jitter.
    pub fn refuse(&self, now: Instant) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut s, now);
        s.refused += 1;
        self.ask(s.level)
    }

    /// Whether the refusals have been heavy for at least a whole window, as of `now`.
    pub fn sustained(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut s, now);
        s.level > 0
    }

    /// Brings the state to the window of `now`: the window that ended counts up or down, and every
    /// window since, with no refusal at all, counts down.
    fn roll(&self, s: &mut State, now: Instant) {
        let since = now.saturating_duration_since(self.origin).as_nanos() / self.window.as_nanos();
        let window = u64::try_from(since).unwrap_or(u64::MAX);
        if window > s.window {
            let quiet = window - s.window - 1;
            s.level = if s.refused >= self.heavy { s.level + 1 } else { s.level.saturating_sub(1) };
            s.level = s.level.saturating_sub(u32::try_from(quiet).unwrap_or(u32::MAX)).min(self.top);
            s.window = window;
            s.refused = 0;
        }
    }

    fn ask(&self, level: u32) -> u64 {
        let factor = 1u64.checked_shl(level);
        factor.and_then(|f| self.base.checked_mul(f)).map_or(self.max, |a| a.min(self.max))
    }

    /// What one refused client is told: between half of `ask` and all of it, never below the base,
    /// so clients refused in the same instant do not come back in the same instant.
    pub fn jitter(&self, ask: u64) -> u64 {
        let low = ask.div_ceil(2).max(self.base);
        if low >= ask {
            ask
        } else {
            rand::random_range(low..=ask)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows of a second keep the arithmetic of these tests readable.
    const SEC: Duration = Duration::from_secs(1);

    fn at(origin: Instant, ms: u64) -> Instant {
        origin + Duration::from_millis(ms)
    }

    /// Refuses `n` times within the second starting at `sec`, returning the last ask.
    fn refuse_in(b: &Backoff, origin: Instant, sec: u64, n: u64) -> u64 {
        (0..n).map(|i| b.refuse(at(origin, sec * 1000 + i))).last().unwrap_or(0)
    }

    #[test]
    fn a_burst_asks_for_the_base_and_sustained_refusals_double_it_up_to_the_ceiling() {
        let t0 = Instant::now();
        let b = Backoff::new(1, 30, 10, SEC, t0);
        assert_eq!(refuse_in(&b, t0, 0, 50), 1, "within the first second: the base");
        assert_eq!(refuse_in(&b, t0, 1, 50), 2, "after one heavy second");
        assert_eq!(refuse_in(&b, t0, 2, 50), 4);
        assert_eq!(refuse_in(&b, t0, 3, 50), 8);
        assert_eq!(refuse_in(&b, t0, 4, 50), 16);
        assert_eq!(refuse_in(&b, t0, 5, 50), 30, "the ceiling, not 32");
        assert_eq!(refuse_in(&b, t0, 6, 50), 30, "and it stays there");
    }

    #[test]
    fn light_and_quiet_seconds_bring_it_back_down() {
        let t0 = Instant::now();
        let b = Backoff::new(1, 30, 10, SEC, t0);
        for sec in 0..4 {
            refuse_in(&b, t0, sec, 10);
        }
        assert_eq!(b.refuse(at(t0, 4000)), 16);
        assert_eq!(b.refuse(at(t0, 5000)), 8, "second 4 saw one refusal: light, one step down");
        assert_eq!(b.refuse(at(t0, 8000)), 1, "second 5 light, 6 and 7 quiet: three steps down to the base");
        assert_eq!(b.refuse(at(t0, 8999)), 1);
    }

    #[test]
    fn a_few_refusals_a_second_never_raise_it() {
        let t0 = Instant::now();
        let b = Backoff::new(1, 30, 10, SEC, t0);
        for sec in 0..20 {
            assert_eq!(refuse_in(&b, t0, sec, 9), 1, "second {sec}");
        }
    }

    #[test]
    fn the_ceiling_is_at_least_the_base_and_a_large_ceiling_does_not_overflow() {
        let t0 = Instant::now();
        let flat = Backoff::new(2, 1, 1, SEC, t0);
        assert_eq!(refuse_in(&flat, t0, 0, 5), 2);
        assert_eq!(refuse_in(&flat, t0, 1, 5), 2);
        assert!(flat.sustained(at(t0, 2000)), "a fixed Retry-After still knows the overload goes on");
        assert!(!flat.sustained(at(t0, 3000)), "and comes down in one quiet window");
        let huge = Backoff::new(1, u64::MAX, 1, SEC, t0);
        for sec in 0..80 {
            refuse_in(&huge, t0, sec, 2);
        }
        assert_eq!(huge.refuse(at(t0, 80_000)), u64::MAX);
    }

    #[test]
    fn sustained_once_a_whole_window_was_heavy_and_until_it_calms_down() {
        let t0 = Instant::now();
        let b = Backoff::new(1, 30, 10, SEC, t0);
        refuse_in(&b, t0, 0, 50);
        assert!(!b.sustained(at(t0, 999)), "the first heavy window is not over yet");
        assert!(b.sustained(at(t0, 1000)));
        assert!(b.sustained(at(t0, 1500)), "asking does not count as a refusal");
        assert!(!b.sustained(at(t0, 2000)), "window 1 had no refusal: back down");
        assert_eq!(b.refuse(at(t0, 2001)), 1);
    }

    #[test]
    fn windows_are_as_long_as_asked() {
        let t0 = Instant::now();
        let b = Backoff::new(1, 30, 10, Duration::from_millis(250), t0);
        let quarter = |q: u64| (0..10).map(|i| b.refuse(at(t0, q * 250 + i))).last().unwrap();
        assert_eq!(quarter(0), 1);
        assert_eq!(quarter(1), 2, "a heavy quarter second is enough");
        assert_eq!(quarter(2), 4);
        assert_eq!(b.refuse(at(t0, 750)), 8);
        assert_eq!(b.refuse(at(t0, 1000)), 4, "the quarter after one refusal: light, down a step");
    }

    #[test]
    fn jitter_stays_between_half_and_all_and_never_under_the_base() {
        let b = Backoff::new(1, 30, 10, SEC, Instant::now());
        assert_eq!(b.jitter(1), 1);
        let drawn: Vec<u64> = (0..2000).map(|_| b.jitter(16)).collect();
        assert!(drawn.iter().all(|s| (8..=16).contains(s)), "{drawn:?}");
        assert!(drawn.contains(&8) && drawn.contains(&16), "the whole range is used");
        let based = Backoff::new(3, 30, 10, SEC, Instant::now());
        assert!((0..200).all(|_| (3..=4).contains(&based.jitter(4))));
    }
}
