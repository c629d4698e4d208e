//! Watches: each is one task that reads the history table from a revision on, hands whole
//! transactions to the watcher over a bounded channel (waiting for room, never dropping), and
//! sleeps on the writer's published revision when it has caught up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::ops::{self, HistoryRead};
use super::reader::ReadPool;
use crate::{Revision, WatchBatch, WatchError};

/// How often a failed history read is tried before the watch gives up with an error.
const READ_ATTEMPTS: u32 = 5;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);

pub(super) struct WatchTask {
    pub(super) reads: Arc<ReadPool>,
    pub(super) prefix: Arc<str>,
    /// The next revision the watcher has not seen.
    pub(super) next: Revision,
    /// History rows per read; a transaction larger than this is still read whole.
    pub(super) rows_per_read: usize,
    pub(super) revisions: watch::Receiver<Revision>,
    pub(super) events: mpsc::Sender<Result<WatchBatch, WatchError>>,
}

impl WatchTask {
    pub(super) async fn run(mut self) {
        tracing::debug!(prefix = %self.prefix, from = self.next, "watch started");
        let mut store_closed = false;
        loop {
            let read = match self.read().await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "watch failed");
                    drop(self.events.send(Err(e)).await);
                    return;
                }
            };
            match read {
                HistoryRead::Compacted { requested, compacted } => {
                    tracing::debug!(prefix = %self.prefix, requested, compacted, "watch compacted");
                    drop(self.events.send(Err(WatchError::Compacted { requested, compacted })).await);
                    return;
                }
                HistoryRead::Batches { batches, next, more } => {
                    for batch in batches {
                        if self.events.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    self.next = next;
                    if more {
                        continue;
                    }
                }
            }
            // Caught up with the snapshot: sleep until the writer publishes a revision we have
            // not read, the store closes, or the watcher goes away.
            loop {
                if *self.revisions.borrow_and_update() >= self.next {
                    break;
                }
                if store_closed {
                    drop(self.events.send(Err(WatchError::Closed)).await);
                    tracing::debug!(prefix = %self.prefix, "watch ended: store closed");
                    return;
                }
                tokio::select! {
                    changed = self.revisions.changed() => {
                        // The writer is gone; what it committed last is still to be read.
                        store_closed = changed.is_err();
                    }
                    () = self.events.closed() => {
                        tracing::debug!(prefix = %self.prefix, "watch cancelled");
                        return;
                    }
                }
            }
        }
    }

    async fn read(&self) -> Result<HistoryRead, WatchError> {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            let prefix = Arc::clone(&self.prefix);
            let (from, limit) = (self.next, self.rows_per_read);
            match self.reads.read(move |conn| ops::read_history(conn, &prefix, from, limit)).await {
                Ok(read) => return Ok(read),
                Err(e) if attempt >= READ_ATTEMPTS => {
                    return Err(WatchError::Backend(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, attempt, error = %e, "watch read failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }
}
