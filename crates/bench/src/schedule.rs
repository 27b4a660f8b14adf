//! When requests are sent. Open loop: request `i` is due at `start + i / rate` whatever became
//! of the earlier ones, and its latency counts from that due time, so a stalled server shows as
//! latency instead of quietly slowing the load down (no coordinated omission). Closed loop: each
//! of N connections sends its next request as soon as the previous one is answered, for the
//! most a server can do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Open { rate: f64 },
    Closed { connections: usize },
}

/// When the `i`-th request of an open-loop run is due, from the start.
pub fn due(rate: f64, i: u64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// One request's timing: when it was due (open loop) or sent (closed loop), and when answered.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub due: Instant,
    pub done: Instant,
}

impl Timing {
    pub fn latency(&self) -> Duration {
        self.done.saturating_duration_since(self.due)
    }
}

/// Runs `request(i)` on the schedule of `mode` until `duration` has passed, then waits for those
/// in flight. `record` gets each request's index, timing and outcome. At most `max_in_flight`
/// requests are outstanding in open loop; a due request that finds no room waits, and the wait
/// is part of its latency.
pub async fn run<F, Fut, T, R>(mode: Mode, duration: Duration, max_in_flight: usize, request: F, record: R) -> u64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    R: Fn(u64, Timing, T) + Send + Sync + 'static,
{
    let (request, record) = (Arc::new(request), Arc::new(record));
    let start = Instant::now();
    let end = start + duration;
    match mode {
        Mode::Open { rate } => {
            let room = Arc::new(Semaphore::new(max_in_flight.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0u64;
            loop {
                let at = start + due(rate, i);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let permit = room.clone().acquire_owned().await.expect("never closed");
                let (request, record) = (request.clone(), record.clone());
                tasks.spawn(async move {
                    let out = request(i).await;
                    record(i, Timing { due: at, done: Instant::now() }, out);
                    drop(permit);
                });
                i += 1;
                // Reap finished tasks as we go, so a long run does not hold them all.
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            i
        }
        Mode::Closed { connections } => {
            let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..connections.max(1) {
                let (request, record, next) = (request.clone(), record.clone(), next.clone());
                tasks.spawn(async move {
                    while Instant::now() < end {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let sent = Instant::now();
                        let out = request(i).await;
                        record(i, Timing { due: sent, done: Instant::now() }, out);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            next.load(std::sync::atomic::Ordering::Relaxed)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn arrivals_are_evenly_spaced_at_the_rate() {
        assert_eq!(due(1000.0, 0), Duration::ZERO);
        assert_eq!(due(1000.0, 1), Duration::from_millis(1));
        assert_eq!(due(1000.0, 2500), Duration::from_millis(2500));
        assert_eq!(due(3.0, 3), Duration::from_secs(1));
    }

    /// A server that answers one request at a time in 10 ms, offered 200/s (one per 5 ms): the
    /// requests pile up, and their latency counted from the due time shows it.
    #[tokio::test(start_paused = true)]
    async fn open_loop_latency_counts_from_the_due_time_not_the_send() {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let server = Arc::new(tokio::sync::Mutex::new(()));
        let seen = latencies.clone();
        let sent = run(
            Mode::Open { rate: 200.0 },
            Duration::from_millis(50),
            100,
            move |_| {
                let server = server.clone();
                async move {
                    let _one_at_a_time = server.lock().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            move |i, t, ()| seen.lock().unwrap().push((i, t.latency())),
        )
        .await;
        assert_eq!(sent, 10, "one every 5 ms for 50 ms");
        let mut l = latencies.lock().unwrap().clone();
        l.sort();
        let ms: Vec<u128> = l.iter().map(|(_, d)| d.as_millis()).collect();
        assert_eq!(ms, [10, 15, 20, 25, 30, 35, 40, 45, 50, 55], "each waits for those before it");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_keeps_each_connection_busy_until_the_end() {
        let count = Arc::new(Mutex::new(0u64));
        let seen = count.clone();
        let sent = run(
            Mode::Closed { connections: 4 },
            Duration::from_millis(100),
            0,
            |_| tokio::time::sleep(Duration::from_millis(10)),
            move |_, t, ()| {
                assert_eq!(t.latency(), Duration::from_millis(10));
                *seen.lock().unwrap() += 1;
            },
        )
        .await;
        assert_eq!(sent, 40, "4 connections x 10 requests of 10 ms in 100 ms");
        assert_eq!(*count.lock().unwrap(), 40);
    }
}
