//! A gate: at most `limit` requests inside, at most `queue` more waiting, none waiting longer
//! than `wait`. Everything past that is refused at once, so overload costs a refusal rather
//! than a timeout, and the work already admitted keeps its latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Gate {
    name: &'static str,
    permits: Arc<Semaphore>,
    limit: usize,
    queue: usize,
    wait: Duration,
    waiting: AtomicUsize,
}

/// Held while the request runs; leaving frees the place for the next one.
pub struct Pass(#[allow(dead_code)] OwnedSemaphorePermit);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Every place inside and in the queue was taken.
    Full,
    /// Waited in the queue for the longest allowed.
    Waited,
}

impl Gate {
    pub fn new(name: &'static str, limit: usize, queue: usize, wait: Duration) -> Gate {
        Gate { name, permits: Arc::new(Semaphore::new(limit)), limit, queue, wait, waiting: AtomicUsize::new(0) }
    }

    pub async fn enter(&self) -> Result<Pass, Shed> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            metrics::counter!("vitrina_admission_total", "gate" => self.name, "result" => "admitted").increment(1);
            return Ok(Pass(p));
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("vitrina_admission_total", "gate" => self.name, "result" => "shed").increment(1);
            return Err(Shed::Full);
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
            _ => {
                metrics::counter!("vitrina_admission_total", "gate" => self.name, "result" => "shed").increment(1);
                Err(Shed::Waited)
            }
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
        let gate = Arc::new(Gate::new("t", 2, 1, Duration::from_secs(5)));
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
        assert_eq!(gate.enter().await.err(), Some(Shed::Full), "queue full: refused");
        assert!(t0.elapsed() < Duration::from_millis(50), "without waiting");
        drop(a);
        assert_eq!(queued.await.unwrap(), Ok(()), "the queued one gets the freed place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_is_shed_after_the_longest_wait() {
        let gate = Gate::new("t", 1, 4, Duration::from_millis(100));
        let _inside = gate.enter().await.unwrap();
        let t0 = tokio::time::Instant::now();
        assert_eq!(gate.enter().await.err(), Some(Shed::Waited));
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert_eq!(gate.waiting(), 0);
        assert!(!gate.idle());
    }
}
