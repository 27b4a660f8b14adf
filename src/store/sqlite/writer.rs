//! The single writer. SQLite allows one writer at a time, so every write goes to one thread that
//! owns the write connection. It drains whatever is queued into one transaction, runs each
//! operation in its own savepoint (a failing one is rolled back alone), commits once, and only
//! then answers every caller: one fsync acknowledges the whole group (group commit). Placements
//! queued together are not run one by one: they are decided as one group in one savepoint
//! (`store::transactions::placement`), the stock handed out in memory.

use std::cell::Cell;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use rusqlite::hooks::Wal;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::orders::PlaceOutcome;
use crate::store::transactions::placement::{self, Placement};
use crate::store::{StoreError, StoreResult};

/// An operation waiting in the queue: run inside the group, then told how the commit went.
trait Pending: Send {
    /// Runs the operation; `true` when its writes should be kept.
    fn execute(&mut self, conn: &Connection) -> bool;
    fn complete(self: Box<Self>, commit: StoreResult<()>);
}

struct PendingOp<T, F> {
    op: Option<F>,
    /// The caller's span and trace context, continued on the writer thread by the events the
    /// operation records.
    span: tracing::Span,
    trace: Option<crate::telemetry::context::TraceParent>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Pending for PendingOp<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
{
    fn execute(&mut self, conn: &Connection) -> bool {
        let Some(op) = self.op.take() else { return false };
        let result = self.span.in_scope(|| crate::telemetry::context::on_this_thread(self.trace, || op(conn)));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn complete(self: Box<Self>, commit: StoreResult<()>) {
        let answer = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::Backend("the operation panicked and was rolled back".into())),
        };
        // The caller may have gone away (client disconnected); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

/// A placement waiting to be combined with the others queued beside it.
struct Waiting {
    placement: Placement,
    span: tracing::Span,
    trace: Option<crate::telemetry::context::TraceParent>,
    reply: oneshot::Sender<StoreResult<PlaceOutcome>>,
}

enum Job {
    Op(Box<dyn Pending>),
    Place(Box<Waiting>),
}

/// Decides a group of placements on the writer's connection: the outer error undoes the group,
/// the inner ones are each placement's answer.
pub type PlaceGroup = fn(&Connection, &[Placement]) -> StoreResult<Vec<StoreResult<PlaceOutcome>>>;

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

/// How the writer runs placements: the transaction, and at most how many it decides at once.
#[derive(Clone, Copy)]
pub struct Placements {
    pub group: PlaceGroup,
    pub max_group: usize,
}

pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits until every queued operation is committed and the thread has exited. Returns once
    /// the last [`Writer`] handle is dropped.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Writer {
    /// `checkpoint_pages`: WAL pages after which a commit checkpoints (0: never). It replaces the
    /// connection's `wal_autocheckpoint`.
    pub fn start(
        conn: Connection,
        queue_len: usize,
        max_batch: usize,
        checkpoint_pages: u32,
        placements: Placements,
    ) -> (Writer, WriterThread) {
        let (tx, rx) = mpsc::channel(queue_len);
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, max_batch, checkpoint_pages, placements))
            .expect("spawn sqlite writer thread");
        (Writer { queue: tx }, WriterThread(handle))
    }

    /// False once the writer thread has stopped taking work.
    pub fn is_alive(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Runs `op` inside the next group transaction and resolves once that transaction committed.
    pub async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let (span, trace) = (tracing::Span::current(), crate::telemetry::context::current());
        let job = Job::Op(Box::new(PendingOp { op: Some(op), span, trace, result: None, reply }));
        self.queue.send(job).await.map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await.map_err(|_| StoreError::Backend("the writer stopped before answering".into()))?
    }

    /// Places an order together with the others queued beside it; resolves once that committed.
    pub async fn place(&self, placement: Placement) -> StoreResult<PlaceOutcome> {
        let (reply, rx) = oneshot::channel();
        let (span, trace) = (tracing::Span::current(), crate::telemetry::context::current());
        let job = Job::Place(Box::new(Waiting { placement, span, trace, reply }));
        self.queue.send(job).await.map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await.map_err(|_| StoreError::Backend("the writer stopped before answering".into()))?
    }
}

thread_local! {
    /// The WAL size at which this thread's commits checkpoint (0: never).
    static CHECKPOINT_PAGES: Cell<u32> = const { Cell::new(0) };
}

/// What SQLite's `wal_autocheckpoint` does, inside the COMMIT that fills the WAL, but timed:
/// those copies stall the one writer (`vitrina_sqlite_checkpoint_seconds`). Answering the group
/// first and copying after was tried: fewer slow groups, but the places freed early let in
/// orders that then waited for the copy, and the admitted p99 rose (docs/benchmarks.md).
fn checkpoint_when_full(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    let due = CHECKPOINT_PAGES.with(Cell::get);
    if due == 0 || pages < 0 || (pages as u32) < due {
        return Ok(());
    }
    let started = Instant::now();
    // As SQLite's own hook: a checkpoint that cannot finish now is retried on the next commit,
    // and its failure must not fail the commit that is already durable.
    if let Err(e) = wal.checkpoint() {
        tracing::warn!(error = %e, "sqlite checkpoint failed");
    }
    metrics::histogram!("vitrina_sqlite_checkpoint_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Job>, max_batch: usize, checkpoint_pages: u32, placements: Placements) {
    CHECKPOINT_PAGES.with(|p| p.set(checkpoint_pages));
    conn.wal_hook(Some(checkpoint_when_full));
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let size = batch.len();
        commit_group(&conn, batch.drain(..), placements);
        metrics::histogram!("vitrina_sqlite_group_size").record(size as f64);
        metrics::histogram!("vitrina_sqlite_group_seconds").record(started.elapsed().as_secs_f64());
    }
    tracing::debug!("sqlite writer drained and stopped");
}

/// What the group's commit decides: an operation's answer, or a placement's.
enum Ran {
    Op(Job),
    Placed(Box<Waiting>, StoreResult<PlaceOutcome>),
}

impl Ran {
    fn complete(self, commit: StoreResult<()>) {
        match self {
            Ran::Op(Job::Op(op)) => op.complete(commit),
            Ran::Op(Job::Place(w)) => drop(w.reply.send(commit.and(Err(StoreError::Backend("placement not run".into()))))),
            Ran::Placed(w, answer) => drop(w.reply.send(commit.and(answer))),
        }
    }
}

fn commit_group(conn: &Connection, jobs: impl Iterator<Item = Job>, placements: Placements) {
    let fail_all = |jobs: Vec<Ran>, err: StoreError| jobs.into_iter().for_each(|r| r.complete(Err(err.clone())));
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "sqlite writer could not begin a transaction");
        fail_all(jobs.map(Ran::Op).collect(), StoreError::Backend(format!("begin: {e}")));
        return;
    }
    let mut ran: Vec<Ran> = Vec::new();
    let mut waiting: Vec<Box<Waiting>> = Vec::new();
    for job in jobs {
        match job {
            Job::Op(mut op) => {
                // A failed or panicking operation is undone alone; its neighbours keep theirs. Its
                // answer stays in the job, to be sent once the commit is known.
                let keep = || op.execute(conn).then_some(()).ok_or_else(|| StoreError::Backend("the operation failed".into()));
                let _ = in_savepoint(conn, keep);
                ran.push(Ran::Op(Job::Op(op)));
            }
            Job::Place(w) => waiting.push(w),
        }
        if !rolled_back(conn, &mut ran) {
            continue;
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "sqlite writer could not begin a transaction");
            fail_all(waiting.into_iter().map(|w| Ran::Op(Job::Place(w))).collect(), StoreError::Backend(format!("begin: {e}")));
            return;
        }
    }
    while !waiting.is_empty() {
        let rest = waiting.split_off(waiting.len().min(placements.max_group.max(1)));
        let group = std::mem::replace(&mut waiting, rest);
        ran.extend(place_group(conn, group, placements.group));
        if rolled_back(conn, &mut ran) && conn.execute_batch("BEGIN IMMEDIATE").is_err() {
            fail_all(waiting.into_iter().map(|w| Ran::Op(Job::Place(w))).collect(), StoreError::Backend("begin failed".into()));
            return;
        }
    }
    let commit = conn.execute_batch("COMMIT").map_err(|e| {
        tracing::error!(error = %e, "sqlite group commit failed");
        let _ = conn.execute_batch("ROLLBACK");
        StoreError::Backend(format!("commit: {e}"))
    });
    for r in ran {
        r.complete(commit.clone());
    }
}

/// Some errors (disk full, I/O) make SQLite roll back the whole transaction: nothing of this
/// group is durable, so nobody in it may be told otherwise. True when that happened.
fn rolled_back(conn: &Connection, ran: &mut Vec<Ran>) -> bool {
    if !conn.is_autocommit() {
        return false;
    }
    let err = StoreError::Backend("the database rolled the transaction back".into());
    ran.drain(..).for_each(|r| r.complete(Err(err.clone())));
    true
}

/// One group of placements in one savepoint. If the group as a whole fails with a write error
/// (or a panic), each placement is tried again alone, so one bad order cannot fail its
/// neighbours (`placement::retry_alone`).
fn place_group(conn: &Connection, group: Vec<Box<Waiting>>, decide: PlaceGroup) -> Vec<Ran> {
    let size = group.len();
    metrics::histogram!("vitrina_order_group_size").record(size as f64);
    let placements: Vec<Placement> = group.iter().map(|w| w.placement.clone()).collect();
    let span = tracing::info_span!("place_orders", orders = size);
    let first = group.first().and_then(|w| w.trace);
    let outcome =
        span.in_scope(|| in_savepoint(conn, || crate::telemetry::context::on_this_thread(first, || decide(conn, &placements))));
    match outcome {
        Ok(answers) if answers.len() == size => group.into_iter().zip(answers).map(|(w, a)| Ran::Placed(w, a)).collect(),
        Ok(_) => {
            group.into_iter().map(|w| Ran::Placed(w, Err(StoreError::Backend("a placement went unanswered".into())))).collect()
        }
        Err(e) if placement::retry_alone(&e, size) => group
            .into_iter()
            .map(|w| {
                let alone = std::slice::from_ref(&w.placement);
                let answer = w.span.in_scope(|| {
                    in_savepoint(conn, || crate::telemetry::context::on_this_thread(w.trace, || decide(conn, alone)))
                });
                Ran::Placed(w, placement::answer_alone(answer))
            })
            .collect(),
        Err(e) => group.into_iter().map(|w| Ran::Placed(w, Err(e.clone()))).collect(),
    }
}

/// Runs `f` in a savepoint, kept if it succeeds and undone if it fails or panics.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    // Cached statements: these run around every operation, and parsing them each time was work
    // on the one thread every write waits for.
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop);
    if let Err(e) = exec("SAVEPOINT op") {
        tracing::error!(error = %e, "sqlite savepoint failed");
        return Err(e.into());
    }
    let result = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("a store operation panicked; its writes were rolled back");
        Err(StoreError::Backend("the operation panicked and was rolled back".into()))
    });
    let end = if result.is_ok() { exec("RELEASE op") } else { conn.execute_batch("ROLLBACK TO op; RELEASE op") };
    if let Err(e) = end {
        tracing::error!(error = %e, "sqlite savepoint release failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_placements() -> Placements {
        Placements { group: |_, _| Err(StoreError::Backend("no placements here".into())), max_group: 1 }
    }

    fn writer() -> (Writer, WriterThread, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (n INTEGER NOT NULL UNIQUE)").unwrap();
        let (w, t) = Writer::start(conn, 1024, 64, 1000, no_placements());
        (w, t, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_or_panicking_operation_is_undone_alone() {
        let (w, thread, dir) = writer();
        let tasks: Vec<_> = (0..100i64)
            .map(|n| {
                let w = w.clone();
                tokio::spawn(async move {
                    w.write(move |c| {
                        c.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(StoreError::from)?;
                        match n % 10 {
                            3 => Err(StoreError::conflict("refused", "after writing")),
                            7 => panic!("boom"),
                            _ => Ok(n),
                        }
                    })
                    .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict { .. }) | Err(StoreError::Backend(_)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok, 80);
        drop(w);
        thread.join();
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        let rows: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 80, "only the successful operations left rows");
        let bad: i64 = c.query_row("SELECT count(*) FROM t WHERE n % 10 IN (3, 7)", [], |r| r.get(0)).unwrap();
        assert_eq!(bad, 0);
    }

    /// Until a checkpoint, committed pages live only in the WAL; the database file grows when the
    /// writer copies them back.
    #[tokio::test]
    async fn the_writer_checkpoints_once_the_wal_passes_its_size_and_never_at_zero() {
        for (pages, grows) in [(8, true), (0, false)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("w.db");
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (n INTEGER, pad TEXT)")
                .unwrap();
            let size = || std::fs::metadata(&path).unwrap().len();
            let before = size();
            let (w, thread) = Writer::start(conn, 1024, 64, pages, no_placements());
            for n in 0..50i64 {
                w.write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![n, "x".repeat(2000)])?))
                    .await
                    .unwrap();
            }
            assert_eq!(size() >= before + 50 * 2000 / 2, grows, "checkpoint at {pages} pages: file {} from {before}", size());
            drop(w);
            thread.join();
        }
    }

    #[tokio::test]
    async fn queued_writes_commit_before_the_thread_exits() {
        let (w, thread, dir) = writer();
        let pending: Vec<_> = (0..20i64)
            .map(|n| {
                tokio::spawn({
                    let w = w.clone();
                    async move { w.write(move |c| Ok(c.execute("INSERT INTO t (n) VALUES (?1)", [n])?)).await }
                })
            })
            .collect();
        for p in pending {
            p.await.unwrap().unwrap();
        }
        drop(w);
        thread.join();
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        assert_eq!(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 20);
    }
}
