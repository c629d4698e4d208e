//! The embedded backend: one SQLite file in WAL mode. One writer thread owns the write
//! connection and commits in groups ([`writer`]); reads run on a pool of read connections
//! ([`reader`]); watches replay the history table ([`watch`]).

mod ops;
mod reader;
mod schema;
mod watch;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use self::reader::ReadPool;
use self::watch::WatchTask;
use self::writer::{Command, Reply, Writer};
use crate::{
    KeyValue, Lease, LeaseId, RangeResponse, Revision, Store, StoreError, StoreStats, Txn, TxnResponse,
    WatchStream,
};

/// The longest lease TTL accepted. Leases exist to detect that their holder is gone; a TTL
/// longer than this is almost certainly a unit mistake.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How to open a [`SqliteStore`]. Build it with [`SqliteStoreConfig::new`] and override fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteStoreConfig {
    /// The database file; created if missing (its directory must exist). A `<path>.lock` file
    /// beside it marks it as owned by one open store.
    pub path: PathBuf,
    /// The most commands committed together in one SQLite transaction (one fsync).
    pub max_batch: usize,
    /// The most commands queued for the writer at once; more wait for room.
    pub max_queued: usize,
    /// The most read connections open (and reads running) at once.
    pub max_readers: usize,
    /// How many transactions a watch buffers for a slow watcher before it waits.
    pub watch_buffer: usize,
    /// History rows a watch reads at once while catching up.
    pub watch_rows_per_read: usize,
}

impl SqliteStoreConfig {
    /// Default of [`max_batch`](Self::max_batch), in commands.
    pub const DEFAULT_MAX_BATCH: usize = 256;
    /// Default of [`max_queued`](Self::max_queued), in commands.
    pub const DEFAULT_MAX_QUEUED: usize = 4096;
    /// Default of [`max_readers`](Self::max_readers), in connections.
    pub const DEFAULT_MAX_READERS: usize = 8;
    /// Default of [`watch_buffer`](Self::watch_buffer), in transactions per watch.
    pub const DEFAULT_WATCH_BUFFER: usize = 128;
    /// Default of [`watch_rows_per_read`](Self::watch_rows_per_read), in history rows.
    pub const DEFAULT_WATCH_ROWS_PER_READ: usize = 1024;

    /// The configuration for the database file `path`, every limit at its default. Every limit
    /// must be at least 1, which [`SqliteStore::open`] checks.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteStoreConfig {
            path: path.into(),
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_queued: Self::DEFAULT_MAX_QUEUED,
            max_readers: Self::DEFAULT_MAX_READERS,
            watch_buffer: Self::DEFAULT_WATCH_BUFFER,
            watch_rows_per_read: Self::DEFAULT_WATCH_ROWS_PER_READ,
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        let limits = [
            ("max_batch", self.max_batch),
            ("max_queued", self.max_queued),
            ("max_readers", self.max_readers),
            ("watch_buffer", self.watch_buffer),
            ("watch_rows_per_read", self.watch_rows_per_read),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(StoreError::Open {
                    path: self.path.clone(),
                    reason: format!("invalid configuration: {name} must be at least 1"),
                });
            }
        }
        if self.max_queued > Semaphore::MAX_PERMITS {
            return Err(StoreError::Open {
                path: self.path.clone(),
                reason: format!(
                    "invalid configuration: max_queued must be at most {}",
                    Semaphore::MAX_PERMITS
                ),
            });
        }
        Ok(())
    }
}

/// The embedded [`Store`]: etcd's semantics over one SQLite file.
///
/// Every acknowledged transaction is durable (WAL, `synchronous=FULL`, answered only after
/// its group committed). Revision rule: a transaction bumps the revision by one if it changed
/// at least one key; a transaction that only deleted missing keys, or only read, does not.
/// Call [`Store::close`] before dropping it to wait for the file to be released; a plain drop
/// stops the writer in the background once it has finished its queue.
pub struct SqliteStore {
    path: PathBuf,
    commands: std::sync::mpsc::Sender<Command>,
    /// Bounds the commands queued for the writer (its channel is unbounded so that sending
    /// never blocks an async task).
    queue_slots: Semaphore,
    reads: Arc<ReadPool>,
    revisions: tokio::sync::watch::Receiver<Revision>,
    closed: AtomicBool,
    watch_buffer: usize,
    watch_rows_per_read: usize,
    keys_read: AtomicU64,
    txns: AtomicU64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("revision", &*self.revisions.borrow())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the store file and starts its writer thread. Blocking: call it from
    /// a blocking context or at startup.
    pub fn open(config: SqliteStoreConfig) -> Result<SqliteStore, StoreError> {
        config.validate()?;
        let path = config.path;
        let opened = schema::open_writer(&path)?;
        let (revision, compacted) = (opened.revision, opened.compacted);
        let (commands, revisions) = Writer::spawn(path.clone(), opened, config.max_batch)?;
        tracing::info!(path = %path.display(), revision, compacted, "opened state store");
        Ok(SqliteStore {
            reads: Arc::new(ReadPool::new(path.clone(), config.max_readers)),
            path,
            commands,
            queue_slots: Semaphore::new(config.max_queued),
            revisions,
            closed: AtomicBool::new(false),
            watch_buffer: config.watch_buffer,
            watch_rows_per_read: config.watch_rows_per_read,
            keys_read: AtomicU64::new(0),
            txns: AtomicU64::new(0),
        })
    }

    /// The file this store writes.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { Ok(()) }
    }

    /// Sends one command to the writer and waits for its answer. If the caller stops waiting,
    /// the command still runs (as with etcd, a cancelled request may have been applied).
    async fn request<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        self.check_open()?;
        let _slot = self.queue_slots.acquire().await.map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer stopped before answering.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.check_open()?;
        self.reads.read(f).await
    }
}

pub(crate) fn validate_ttl(ttl: Duration) -> Result<(), StoreError> {
    if ttl < Duration::from_millis(1) {
        return Err(StoreError::Invalid(format!("lease ttl {ttl:?} is shorter than 1ms")));
    }
    if ttl > MAX_LEASE_TTL {
        return Err(StoreError::Invalid(format!("lease ttl {ttl:?} is longer than {MAX_LEASE_TTL:?}")));
    }
    Ok(())
}

pub(crate) fn validate_lease_id(id: LeaseId) -> Result<(), StoreError> {
    if id <= 0 { Err(StoreError::LeaseNotFound(id)) } else { Ok(()) }
}

#[async_trait]
impl Store for SqliteStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        // The writer is the only one that commits (the lock file keeps other processes out) and
        // publishes each revision after COMMIT and before it answers: no query needed.
        self.check_open()?;
        Ok(*self.revisions.borrow())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::Invalid("key must not be empty".into()));
        }
        let key = key.to_owned();
        let kv = self.read(move |conn| ops::get_kv(conn, &key)).await?;
        self.keys_read.fetch_add(u64::from(kv.is_some()), Ordering::Relaxed);
        Ok(kv)
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let prefix = prefix.to_owned();
        let range = self
            .read(move |conn| {
                let kvs = ops::range_kvs(conn, &prefix)?;
                let revision = ops::current_revision(conn)?;
                Ok(RangeResponse { kvs, revision })
            })
            .await?;
        self.keys_read.fetch_add(range.kvs.len() as u64, Ordering::Relaxed);
        Ok(range)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display()))]
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        txn.validate()?;
        self.txns.fetch_add(1, Ordering::Relaxed);
        self.request(|reply| Command::Txn { txn, reply }).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.check_open()?;
        if from < 0 {
            return Err(StoreError::Invalid(format!("watch start revision {from} is negative")));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Invalid("the state store must be used inside a tokio runtime".into()))?;
        let mut revisions = self.revisions.clone();
        let next = if from == 0 { *revisions.borrow_and_update() + 1 } else { from };
        let (events, stream) = mpsc::channel(self.watch_buffer);
        let task = WatchTask {
            reads: Arc::clone(&self.reads),
            prefix: Arc::from(prefix),
            next,
            rows_per_read: self.watch_rows_per_read,
            revisions,
            events,
        };
        let span = tracing::debug_span!("store_watch", path = %self.path.display(), prefix, from = next);
        runtime.spawn(task.run().instrument(span));
        Ok(stream)
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        validate_ttl(ttl)?;
        // The TTL is kept in whole milliseconds; report what was granted.
        let ttl = writer::ttl_from_ms(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self.request(|reply| Command::LeaseGrant { ttl, reply }).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, StoreError> {
        validate_lease_id(id)?;
        self.request(|reply| Command::LeaseKeepAlive { id, reply }).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        validate_lease_id(id)?;
        self.request(|reply| Command::LeaseRevoke { id, reply }).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        if revision < 1 {
            return Err(StoreError::Invalid(format!("compaction revision {revision} is not positive")));
        }
        self.request(|reply| Command::Compact { revision, reply }).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.read(ops::compacted_revision).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Closed);
        }
        let (reply, done) = oneshot::channel();
        // Queued behind every command already sent, so those finish first. If the writer is
        // already gone there is nothing left to flush.
        if self.commands.send(Command::Close { reply }).is_ok() {
            drop(done.await);
        }
        self.queue_slots.close();
        self.reads.clear();
        Ok(())
    }

    fn stats(&self) -> Option<StoreStats> {
        Some(StoreStats {
            reads: self.reads.count(),
            keys_read: self.keys_read.load(Ordering::Relaxed),
            txns: self.txns.load(Ordering::Relaxed),
        })
    }
}
