//! A gate: at most `limit` requests inside, at most `queue` more waiting, none waiting longer
//! than `wait`. Everything past that is refused at once, so overload costs a refusal rather
//! than a timeout, and the work already admitted keeps its latency. While a gate keeps refusing
//! (`backoff`), it queues nothing and asks the refused to stay away longer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::backoff::Backoff;

/// How often a gate judges whether it is still refusing heavily (see `backoff`).
const BACKOFF_WINDOW: Duration = Duration::from_millis(250);

pub struct Gate {
    name: &'static str,
    permits: Arc<Semaphore>,
    limit: usize,
    queue: usize,
    wait: Duration,
    waiting: AtomicUsize,
    backoff: Backoff,
}

/// Held while the request runs; leaving frees the place for the next one.
pub struct Pass(#[allow(dead_code)] OwnedSemaphorePermit);

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
        Gate { name, permits: Arc::new(Semaphore::new(limit)), limit, queue, wait, waiting: AtomicUsize::new(0), backoff }
    }

    fn refuse(&self, why: Shed) -> Refused {
        metrics::counter!("vitrina_admission_total", "gate" => self.name, "result" => "shed").increment(1);
        let ask = self.backoff.refuse(Instant::now().into_std());
        metrics::gauge!("vitrina_admission_retry_after_seconds", "gate" => self.name).set(ask as f64);
        Refused { why, retry_after: self.backoff.jitter(ask) }
    }

    pub async fn enter(&self) -> Result<Pass, Refused> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            metrics::counter!("vitrina_admission_total", "gate" => self.name, "result" => "admitted").increment(1);
            return Ok(Pass(p));
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
        let got = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        metrics::histogram!("vitrina_admission_queue_seconds", "gate" => self.name).record(t0.elapsed().as_secs_f64());
        match got {
            Ok(Ok(p)) => {
                metrics::counter!("vitrina_admission_total", "gate" => self.name, "result" => "queued").increment(1);
                Ok(Pass(p))
            }
            _ => Err(self.refuse(Shed::Waited)),
        }
    }

    /// Requests inside now.
    pub fn inside(&self) -> usize {
        self.limit - self.permits.available_permits()
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
}
