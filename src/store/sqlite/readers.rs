//! A small pool of read-only connections. WAL lets them read while the writer writes; each read
//! runs on the blocking pool so the async executor never waits on SQLite.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::store::{StoreError, StoreResult};

#[derive(Clone)]
pub struct Readers {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub fn new(conns: Vec<Connection>) -> Readers {
        let n = conns.len();
        Readers { idle: Arc::new(Mutex::new(conns)), permits: Arc::new(Semaphore::new(n)) }
    }

    pub async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit =
            self.permits.clone().acquire_owned().await.map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let idle = self.idle.clone();
        tokio::task::spawn_blocking(move || {
            let conn = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(conn) = conn else {
                return Err(StoreError::Backend("reader pool out of connections".into()));
            };
            // The connection goes back to the pool even if the operation panics.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&conn)))
                .unwrap_or_else(|_| Err(StoreError::Backend("a read operation panicked".into())));
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}
