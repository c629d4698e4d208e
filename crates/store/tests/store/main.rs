//! Integration tests of the SQLite backend, driven through the `Store` trait only.

mod concurrency;
mod durability;
mod kv;
mod lease;
mod replay;
mod watch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use enjin_store::{
    Op, SqliteStore, SqliteStoreConfig, Store, Txn, TxnResponse, WatchBatch, WatchError, WatchStream,
};
use tempfile::TempDir;

/// How long a test waits for something that should happen within milliseconds.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A store in its own temporary directory, removed on drop.
pub(crate) struct TestStore {
    pub(crate) store: SqliteStore,
    pub(crate) path: PathBuf,
    // Kept last so that the store closes before the directory goes.
    pub(crate) dir: TempDir,
}

impl TestStore {
    pub(crate) fn new() -> Self {
        Self::with(|_| {})
    }

    pub(crate) fn with(tune: impl FnOnce(&mut SqliteStoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("state.db");
        let mut config = SqliteStoreConfig::new(&path);
        tune(&mut config);
        let store = SqliteStore::open(config).expect("open store");
        TestStore { store, path, dir }
    }

    /// Closes the store and opens the same file again.
    pub(crate) async fn reopen(self) -> Self {
        self.store.close().await.expect("close store");
        let store = open_at(&self.path);
        TestStore { store, path: self.path, dir: self.dir }
    }
}

pub(crate) fn open_at(path: &Path) -> SqliteStore {
    SqliteStore::open(SqliteStoreConfig::new(path)).expect("open store")
}

pub(crate) async fn put(store: &impl Store, key: &str, value: &str) -> TxnResponse {
    store.txn(Txn::new().then([Op::put(key, value)])).await.expect("put")
}

pub(crate) async fn delete(store: &impl Store, key: &str) -> TxnResponse {
    store.txn(Txn::new().then([Op::delete(key)])).await.expect("delete")
}

/// The next item of a watch, failing the test if none comes in time.
pub(crate) async fn next_item(stream: &mut WatchStream) -> Option<Result<WatchBatch, WatchError>> {
    tokio::time::timeout(PATIENCE, stream.recv()).await.expect("watch item within the patience")
}

pub(crate) async fn next_batch(stream: &mut WatchStream) -> WatchBatch {
    next_item(stream).await.expect("watch still open").expect("watch batch, not an error")
}

/// Asserts that no item arrives for a short while (used after the expected items arrived).
pub(crate) async fn assert_quiet(stream: &mut WatchStream) {
    let item = tokio::time::timeout(Duration::from_millis(100), stream.recv()).await;
    assert!(item.is_err(), "unexpected watch item: {item:?}");
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
