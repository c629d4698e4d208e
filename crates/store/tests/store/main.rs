//! Integration tests of the store backends, driven through the `Store` trait only. One
//! conformance suite: every test that is not about one backend's own machinery (SQLite's file,
//! its writer queue, its counters) runs against both the SQLite store and the etcd store, as
//! `<module>::sqlite::<name>` and `<module>::etcd::<name>`. Each etcd test starts its own `etcd`
//! on loopback.

/// Runs each named test, an `async fn(Backend)` of the calling module, once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Etcd).await
                }
            )*
        }
    };
}

mod attack;
mod concurrency;
mod copy;
mod durability;
mod etcd_server;
mod kv;
mod lease;
mod replay;
mod tls;
mod watch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use enjin_store::{
    EtcdStore, KeyValue, Lease, LeaseId, Op, RangeResponse, Revision, SqliteStore, SqliteStoreConfig, Store,
    StoreError, Txn, TxnResponse, WatchBatch, WatchError, WatchStream,
};
use tempfile::TempDir;

use enjin_testkit::EtcdServer;

/// How long a test waits for something that should happen within milliseconds.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// The backend a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Etcd,
}

/// Either store, so that a test handles both through one type.
#[derive(Debug)]
pub(crate) enum AnyStore {
    Sqlite(SqliteStore),
    Etcd(EtcdStore),
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            AnyStore::Etcd($store) => $call,
        }
    };
}

#[async_trait]
impl Store for AnyStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        delegate!(self, s => s.current_revision().await)
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        delegate!(self, s => s.get(key).await)
    }
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        delegate!(self, s => s.range(prefix).await)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        delegate!(self, s => s.txn(txn).await)
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        delegate!(self, s => s.watch(prefix, from).await)
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        delegate!(self, s => s.lease_grant(ttl).await)
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, StoreError> {
        delegate!(self, s => s.lease_keep_alive(id).await)
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        delegate!(self, s => s.lease_revoke(id).await)
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        delegate!(self, s => s.compact(revision).await)
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        delegate!(self, s => s.compacted_revision().await)
    }
    async fn close(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.close().await)
    }
    fn stats(&self) -> Option<enjin_store::StoreStats> {
        delegate!(self, s => s.stats())
    }
}

/// Where a test store keeps its data: removed (or stopped) after the store is dropped.
enum Home {
    Sqlite { path: PathBuf, _dir: TempDir },
    Etcd(EtcdServer),
}

/// A fresh, empty store of either backend.
pub(crate) struct TestStore {
    pub(crate) store: AnyStore,
    pub(crate) backend: Backend,
    // Kept last so that the store goes before its file or its server.
    home: Home,
}

impl TestStore {
    pub(crate) async fn open(backend: Backend) -> Self {
        Self::open_tuned(backend, |_| {}).await
    }

    /// Opens a store; `tune` adjusts the SQLite store's limits (the etcd store has none of them).
    pub(crate) async fn open_tuned(backend: Backend, tune: impl FnOnce(&mut SqliteStoreConfig)) -> Self {
        match backend {
            Backend::Sqlite => {
                let t = SqliteTestStore::with(tune);
                TestStore {
                    store: AnyStore::Sqlite(t.store),
                    backend,
                    home: Home::Sqlite { path: t.path, _dir: t.dir },
                }
            }
            Backend::Etcd => {
                let server = EtcdServer::start();
                let store = etcd_server::connect(&server).await;
                TestStore { store: AnyStore::Etcd(store), backend, home: Home::Etcd(server) }
            }
        }
    }

    /// Closes the store and opens the same data again (for etcd: a new client of the same
    /// server).
    pub(crate) async fn reopen(self) -> Self {
        self.store.close().await.expect("close store");
        drop(self.store);
        let store = match &self.home {
            Home::Sqlite { path, .. } => AnyStore::Sqlite(open_at(path)),
            Home::Etcd(server) => AnyStore::Etcd(etcd_server::connect(server).await),
        };
        TestStore { store, backend: self.backend, home: self.home }
    }
}

/// A SQLite store in its own temporary directory, removed on drop, for the tests of the
/// SQLite store's own machinery.
pub(crate) struct SqliteTestStore {
    pub(crate) store: SqliteStore,
    pub(crate) path: PathBuf,
    // Kept last so that the store closes before the directory goes.
    pub(crate) dir: TempDir,
}

impl SqliteTestStore {
    pub(crate) fn new() -> Self {
        Self::with(|_| {})
    }

    pub(crate) fn with(tune: impl FnOnce(&mut SqliteStoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("state.db");
        let mut config = SqliteStoreConfig::new(&path);
        tune(&mut config);
        let store = SqliteStore::open(config).expect("open store");
        SqliteTestStore { store, path, dir }
    }

    /// Closes the store and opens the same file again.
    pub(crate) async fn reopen(self) -> Self {
        self.store.close().await.expect("close store");
        let store = open_at(&self.path);
        SqliteTestStore { store, path: self.path, dir: self.dir }
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
