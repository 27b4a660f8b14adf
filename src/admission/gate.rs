//! A gate: at most `limit` requests inside, at most `queue` more waiting, none waiting longer
//! than `wait`. Everything past that is refused at once, so overload costs a refusal rather
//! than a timeout, and the work already admitted keeps its latency. While a gate keeps refusing
//! (`backoff`), it queues nothing and asks the refused to stay away longer. An adaptive gate
//! (`adaptive`) moves its limit below the configured one from the times of those it admitted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::adaptive::Controller;
use super::backoff::Backoff;
use super::config::AdaptiveConfig;

/// How often a gate judges whether it is still refusing heavily (see `backoff`).
const BACKOFF_WINDOW: Duration = Duration::from_millis(250);

pub struct Gate {
    places: Arc<Places>,
    queue: usize,
    wait: Duration,
    waiting: AtomicUsize,
    backoff: Backoff,
}

/// The places inside, whose number may change while requests hold them.
struct Places {
    name: &'static str,
    /// What `vitrina_admission_limit` is labelled with (a shard's id), when it is recorded at all.
    key: Option<String>,
    permits: Semaphore,
    limit: AtomicUsize,
    /// Places to take away as they come back: a limit lowered below those inside.
    owed: AtomicUsize,
    adaptive: Option<Controller>,
    resizing: Mutex<()>,
    /// Handles of the series every admitted request touches, resolved once.
    admitted: metrics::Counter,
    inside: metrics::Histogram,
}

/// Held while the request runs; leaving frees the place for the next one.
pub struct Pass {
    places: Arc<Places>,
    entered: Instant,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.entered);
        self.places.inside.record(took.as_secs_f64());
        self.places.give_back();
        if let Some(c) = &self.places.adaptive {
            if c.left(self.entered.into_std(), now.into_std(), self.places.inside()).is_some() {
                self.places.follow(c);
            }
        }
    }
}

impl Places {
    fn inside(&self) -> usize {
        (self.limit.load(Ordering::SeqCst) + self.owed.load(Ordering::SeqCst)).saturating_sub(self.permits.available_permits())
    }

    fn give_back(&self) {
        let owed = self.owed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| o.checked_sub(1));
        if owed.is_err() {
            self.permits.add_permits(1);
        }
    }

    /// Brings the places to the controller's limit. Departures that changed it may get here in
    /// another order than they changed it; whichever comes last reads the latest limit.
    fn follow(&self, c: &Controller) {
        let _one_at_a_time = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        self.set_limit(c.limit());
    }

    fn set_limit(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::SeqCst);
        if limit < old {
            let fewer = old - limit;
            let taken = self.permits.forget_permits(fewer);
            self.owed.fetch_add(fewer - taken, Ordering::SeqCst);
        } else if limit > old {
            let more = limit - old;
            let forgiven = match self.owed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| Some(o - o.min(more))) {
                Ok(o) | Err(o) => o.min(more),
            };
            self.permits.add_permits(more - forgiven);
        }
        if let Some(key) = &self.key {
            metrics::gauge!("vitrina_admission_limit", "gate" => self.name, "key" => key.clone()).set(limit as f64);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Every place inside and in the queue was taken, or the gate is refusing without queueing.
    Full,
    /// Waited in the queue for the longest allowed.
    Waited,
}

/// A refusal: why, and the `Retry-After` in seconds to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub why: Shed,
    pub retry_after: u64,
}

impl Gate {
    /// `retry_after` is the base and the ceiling of what a refusal asks for, in seconds.
    pub fn new(name: &'static str, limit: usize, queue: usize, wait: Duration, retry_after: (u64, u64)) -> Gate {
        // A window is heavy once it refused as many as the gate holds inside and in its queue.
        let heavy = (limit + queue) as u64;
        let backoff = Backoff::new(retry_after.0, retry_after.1, heavy, BACKOFF_WINDOW, Instant::now().into_std());
        let places = Places {
            name,
            key: None,
            permits: Semaphore::new(limit),
            limit: AtomicUsize::new(limit),
            owed: AtomicUsize::new(0),
            adaptive: None,
            resizing: Mutex::new(()),
            admitted: metrics::counter!("vitrina_admission_total", "gate" => name, "result" => "admitted"),
            inside: metrics::histogram!("vitrina_admission_inside_seconds", "gate" => name),
        };
        Gate { places: Arc::new(places), queue, wait, waiting: AtomicUsize::new(0), backoff }
    }

    /// Lets the limit move between `cfg.min_places` and the configured one. `key` labels the
    /// limit in `vitrina_admission_limit` (a shard's id; none where gates are too many to label).
    pub fn adaptive(self, cfg: &AdaptiveConfig, key: Option<String>) -> Gate {
        let places = Arc::into_inner(self.places).expect("a new gate has no passes out");
        let max = places.limit.load(Ordering::SeqCst);
        let seed = key.as_deref().map_or(max as u64, |k| k.bytes().fold(max as u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)));
        let controller = Controller::new(cfg, max, Instant::now().into_std(), seed);
        let start = controller.limit();
        let places = Places { key, adaptive: Some(controller), ..places };
        places.set_limit(start);
        Gate { places: Arc::new(places), ..self }
    }

    fn refuse(&self, why: Shed) -> Refused {
        metrics::counter!("vitrina_admission_total", "gate" => self.places.name, "result" => "shed").increment(1);
        let ask = self.backoff.refuse(Instant::now().into_std());
        metrics::gauge!("vitrina_admission_retry_after_seconds", "gate" => self.places.name).set(ask as f64);
        Refused { why, retry_after: self.backoff.jitter(ask) }
    }

    fn pass(&self) -> Pass {
        Pass { places: self.places.clone(), entered: Instant::now() }
    }

    pub async fn enter(&self) -> Result<Pass, Refused> {
        if let Ok(p) = self.places.permits.try_acquire() {
            p.forget();
            self.places.admitted.increment(1);
            return Ok(self.pass());
        }
        // A queue absorbs a burst; under an overload that goes on it only adds its wait to the
        // latency of what gets in, and what does not get in is refused later instead of at once.
        // So a gate that has refused heavily for a whole window stops queueing until it calms down
        // (as in CoDel: a standing queue is no use).
        if self.backoff.sustained(Instant::now().into_std()) {
            return Err(self.refuse(Shed::Full));
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(self.refuse(Shed::Full));
        }
        let t0 = Instant::now();
        let got = tokio::time::timeout(self.wait, self.places.permits.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        metrics::histogram!("vitrina_admission_queue_seconds", "gate" => self.places.name).record(t0.elapsed().as_secs_f64());
        match got {
            Ok(Ok(p)) => {
                p.forget();
                metrics::counter!("vitrina_admission_total", "gate" => self.places.name, "result" => "queued").increment(1);
                Ok(self.pass())
            }
            _ => Err(self.refuse(Shed::Waited)),
        }
    }

    /// Requests inside now.
    pub fn inside(&self) -> usize {
        self.places.inside()
    }

    /// Places inside now: the configured number, or where an adaptive gate has moved it.
    pub fn limit(&self) -> usize {
        self.places.limit.load(Ordering::SeqCst)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Nobody inside or waiting: the gate can be dropped and made anew later.
    pub fn idle(&self) -> bool {
        self.inside() == 0 && self.waiting() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_limit_queues_a_few_and_sheds_the_rest_at_once() {
        let gate = Arc::new(Gate::new("t", 2, 1, Duration::from_secs(5), (1, 30)));
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        assert_eq!(gate.inside(), 2);
        let queued = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.map(|_| ()) }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        let refused = gate.enter().await.err();
        assert_eq!(refused, Some(Refused { why: Shed::Full, retry_after: 1 }), "queue full: refused, come back in 1 s");
        assert!(t0.elapsed() < Duration::from_millis(50), "without waiting");
        drop(a);
        assert_eq!(queued.await.unwrap(), Ok(()), "the queued one gets the freed place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_is_shed_after_the_longest_wait() {
        let gate = Gate::new("t", 1, 4, Duration::from_millis(100), (1, 30));
        let _inside = gate.enter().await.unwrap();
        let t0 = tokio::time::Instant::now();
        assert_eq!(gate.enter().await.err().map(|r| r.why), Some(Shed::Waited));
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert_eq!(gate.waiting(), 0);
        assert!(!gate.idle());
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_sustained_overload_it_stops_queueing_and_asks_for_longer_until_it_calms_down() {
        let gate = Arc::new(Gate::new("t", 1, 1, Duration::from_millis(100), (1, 30)));
        let inside = gate.enter().await.unwrap();
        let queued = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.err().map(|r| r.why) }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.enter().await.err().map(|r| r.why), Some(Shed::Full));
        assert_eq!(queued.await.unwrap(), Some(Shed::Waited), "two refusals in the first window: heavy");
        tokio::time::advance(BACKOFF_WINDOW).await;
        let t0 = Instant::now();
        let refused = gate.enter().await.err().unwrap();
        assert_eq!((refused.why, t0.elapsed()), (Shed::Full, Duration::ZERO), "refused at once, not queued");
        assert!((1..=2).contains(&refused.retry_after), "asks for up to 2 s: {refused:?}");
        drop(inside);
        let inside = gate.enter().await.expect("a free place is still taken");
        tokio::time::advance(BACKOFF_WINDOW * 2).await;
        let calm = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.is_ok() }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(inside);
        assert!(calm.await.unwrap(), "after a light and a quiet window it queues again");
    }

    #[tokio::test]
    async fn a_limit_lowered_below_those_inside_takes_places_back_as_they_leave() {
        let gate = Gate::new("t", 3, 0, Duration::ZERO, (1, 30));
        let mut inside: Vec<Pass> = Vec::new();
        for _ in 0..3 {
            inside.push(gate.enter().await.unwrap());
        }
        gate.places.set_limit(1);
        assert_eq!((gate.inside(), gate.limit()), (3, 1));
        inside.pop();
        inside.pop();
        assert_eq!(gate.inside(), 1);
        assert!(gate.enter().await.is_err(), "two left, but the one still inside holds the only place");
        inside.pop();
        let only = gate.enter().await.expect("the one place is free");
        assert!(gate.enter().await.is_err());
        gate.places.set_limit(3);
        let more = [gate.enter().await, gate.enter().await];
        assert!(more.iter().all(Result::is_ok), "raised again: two more places");
        assert!(gate.enter().await.is_err());
        drop((only, more));
        assert!(gate.idle());
    }

    /// Behind a store that serves one request at a time, more places only mean a longer line:
    /// an adaptive gate of 32 places settles near its tolerance of the time one request takes.
    #[tokio::test(start_paused = true)]
    async fn an_adaptive_gate_gives_up_places_that_only_add_waiting() {
        let cfg = AdaptiveConfig {
            enabled: true,
            min_places: 2,
            window_ms: 50,
            window_samples: 8,
            baseline_samples: 8,
            ..AdaptiveConfig::default()
        };
        let gate = Arc::new(Gate::new("t", 32, 0, Duration::ZERO, (1, 30)).adaptive(&cfg, None));
        assert_eq!(gate.limit(), 2, "it measures its baseline first");
        let store = Arc::new(tokio::sync::Mutex::new(()));
        let until = Instant::now() + Duration::from_secs(5);
        let clients: Vec<_> = (0..64)
            .map(|_| {
                let (gate, store) = (gate.clone(), store.clone());
                tokio::spawn(async move {
                    let mut most_inside = 0;
                    while Instant::now() < until {
                        match gate.enter().await {
                            Ok(pass) => {
                                most_inside = most_inside.max(gate.inside());
                                let _served = store.lock().await;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                drop(pass);
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                    most_inside
                })
            })
            .collect();
        let mut most_inside = 0;
        for c in clients {
            most_inside = most_inside.max(c.await.unwrap());
        }
        let limit = gate.limit();
        assert!((2..=8).contains(&limit), "settled at {limit} of 32 places");
        assert!((3..32).contains(&most_inside), "grew past its baseline's 2 places, never to all 32: {most_inside}");
        assert!(gate.idle());
    }
}
