//! Placement groups on PostgreSQL. One task per shard takes the placements that queued while its
//! previous group committed and runs them as the next group: one transaction, one connection,
//! one commit (`store::transactions::placement`). An idle shard's order goes alone at once, so
//! combining adds no wait; under a sale, the orders that would each have queued on the hot
//! stock rows' locks through their own commit share one.

use std::sync::OnceLock;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{held, Tx};
use crate::orders::PlaceOutcome;
use crate::store::transactions::placement::{self, Placement};
use crate::store::{StoreError, StoreResult};

/// Placements queued beyond this wait for room: admission bounds what reaches the store long
/// before, so this only guards memory.
const QUEUE: usize = 4096;

struct Waiting {
    placement: Placement,
    reply: oneshot::Sender<StoreResult<PlaceOutcome>>,
}

pub struct Groups {
    /// Started on first use, inside the runtime that serves the orders.
    queue: OnceLock<mpsc::Sender<Waiting>>,
    pool: Pool,
    shard: String,
    max_group: usize,
}

impl Groups {
    pub fn new(pool: Pool, shard: &str, max_group: usize) -> Groups {
        Groups { queue: OnceLock::new(), pool, shard: shard.to_owned(), max_group: max_group.max(1) }
    }

    /// Places an order in the next group of this shard; resolves once that group committed.
    pub async fn place(&self, placement: Placement) -> StoreResult<PlaceOutcome> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(serve(rx, self.pool.clone(), self.shard.clone(), self.max_group));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Waiting { placement, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        answer.await.map_err(|_| StoreError::Backend("the placement group stopped before answering".into()))?
    }
}

/// Until the store is dropped: a group of whatever queued, written, answered; then the next.
/// One group at a time: a second one in flight (deciding while the first commits) was measured
/// and made smaller groups for more database work at the same throughput (docs/benchmarks.md).
async fn serve(mut queue: mpsc::Receiver<Waiting>, pool: Pool, shard: String, max_group: usize) {
    let mut batch: Vec<Waiting> = Vec::with_capacity(max_group);
    while queue.recv_many(&mut batch, max_group).await > 0 {
        let (group, replies): (Vec<Placement>, Vec<_>) = batch.drain(..).map(|w| (w.placement, w.reply)).unzip();
        metrics::histogram!("vitrina_order_group_size").record(group.len() as f64);
        // A task of its own, so a panic fails this group's orders and not every later one.
        let answers = match tokio::spawn(decide(pool.clone(), shard.clone(), group)).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::error!(error = %e, "a placement group panicked");
                replies.iter().map(|_| Err(StoreError::Backend("the placement group failed".into()))).collect()
            }
        };
        // A caller gone (client disconnected) leaves its order standing.
        replies.into_iter().zip(answers).for_each(|(reply, answer)| drop(reply.send(answer)));
    }
}

/// Every placement's answer. If the group as a whole fails with a write error, each placement
/// is tried again alone, so one bad order cannot fail its neighbours (`placement::retry_alone`).
async fn decide(pool: Pool, shard: String, group: Vec<Placement>) -> Vec<StoreResult<PlaceOutcome>> {
    let span = tracing::info_span!("place_orders", shard = %shard, orders = group.len());
    match transaction(&pool, &shard, &group).instrument(span).await {
        Ok(answers) => answers,
        Err(e) if placement::retry_alone(&e, group.len()) => {
            tracing::warn!(error = %e, orders = group.len(), "a placement group failed; placing its orders one by one");
            let mut answers = Vec::with_capacity(group.len());
            for p in group {
                answers.push(placement::answer_alone(transaction(&pool, &shard, std::slice::from_ref(&p)).await));
            }
            answers
        }
        Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// One group in one transaction on the shard's primary. The BEGIN goes out together with the
/// group's reads (a round trip less per group); the writes wait for both, so nothing is written
/// unless the transaction is open.
pub async fn transaction(pool: &Pool, shard: &str, group: &[Placement]) -> StoreResult<Vec<StoreResult<PlaceOutcome>>> {
    let open = Open(Some(held::take(pool, shard).await?));
    let (outcome, ended) = {
        let c = open.client();
        let rows = Tx(c);
        let (began, decided) = tokio::join!(c.batch_execute("BEGIN"), placement::decide_group(&rows, group));
        // A failed BEGIN: the reads ran on their own and nothing was written.
        began?;
        match decided {
            Ok(decided) => match placement::write_group(&rows, group, decided).await {
                Ok(answers) => {
                    c.batch_execute("COMMIT").await?;
                    (Ok(answers), true)
                }
                Err(e) => (Err(e), c.batch_execute("ROLLBACK").await.is_ok()),
            },
            Err(e) => (Err(e), c.batch_execute("ROLLBACK").await.is_ok()),
        }
    };
    if ended {
        open.close();
    }
    outcome
}

/// A pooled connection with a transaction open on it. Dropped before the transaction ended (a
/// failed COMMIT or ROLLBACK, an early return, a cancelled group), the connection leaves the
/// pool and closes, so the server rolls the transaction back and no later caller inherits it.
struct Open(Option<held::Held>);

impl Open {
    fn client(&self) -> &deadpool_postgres::Client {
        self.0.as_ref().expect("present until closed")
    }

    /// The transaction ended: the connection goes back to the pool.
    fn close(mut self) {
        self.0.take();
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            drop(deadpool_postgres::Object::take(held.into_client()));
        }
    }
}
