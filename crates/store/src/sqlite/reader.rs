//! The read side: a small pool of read-only connections used from blocking tasks. WAL lets them
//! read beside the writer thread; each read runs in one read transaction, so everything it
//! returns (keys and revision) comes from one snapshot.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::ops::backend;
use super::schema::open_reader;
use crate::StoreError;

#[derive(Debug)]
pub(super) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Caps the connections open at once (and the blocking threads the reads take).
    permits: Arc<Semaphore>,
    /// Reads run so far.
    count: AtomicU64,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf, max_readers: usize) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max_readers.max(1))),
            count: AtomicU64::new(0),
        }
    }

    /// Drops the idle connections; reads still running (a watch catching up) open new ones.
    pub(super) fn clear(&self) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Reads run so far.
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        // The lock guards only the pop: the connection is used with the lock released.
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(|e| backend(&self.path, "failed to open", &e))?,
        };
        let result = (|| -> rusqlite::Result<T> {
            let tx = conn.transaction()?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        match result {
            Ok(value) => {
                self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
                Ok(value)
            }
            // The connection is dropped rather than pooled: it may be stuck in a bad state.
            Err(e) => Err(backend(&self.path, "failed to read", &e)),
        }
    }

    /// Runs `f` inside one read transaction on a blocking thread.
    pub(super) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Invalid("the state store must be used inside a tokio runtime".into()))?;
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        // The permit moves into the blocking task: a cancelled caller must not free it while
        // the read still holds a connection.
        let result = runtime
            .spawn_blocking(move || {
                let _permit = permit;
                pool.read_blocking(f)
            })
            .await;
        result.map_err(|e| backend(&self.path, "read task failed on", &e))?
    }
}
