//! `copy_all`: a SQLite store into an etcd with etcd's own default limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use enjin_store::{
    COPY_MARKER_KEY, CopyError, EtcdStore, KeyValue, Lease, LeaseId, Op, RangeResponse, Revision, Store,
    StoreError, Txn, TxnResponse, WatchStream, copy_all,
};
use enjin_testkit::EtcdServer;

use crate::{SqliteTestStore, etcd_server, put};

/// A SQLite store holding 300 small keys with every byte value, five values of 400 KiB (so that
/// bytes, not only the op count, cut batches), ten deleted keys and one key under a lease.
async fn populated() -> SqliteTestStore {
    let t = SqliteTestStore::new();
    for chunk in (0..300).collect::<Vec<usize>>().chunks(50) {
        let ops = chunk.iter().map(|i| {
            let value: Vec<u8> = (0..=255u8).cycle().skip(*i).take(1 + i % 300).collect();
            Op::put(format!("/registry/thing/{i:04}"), value)
        });
        t.store.txn(Txn::new().then(ops)).await.expect("put a chunk");
    }
    for i in 0..5u8 {
        put(&t.store, &format!("/blobs/{i}"), "").await;
        let value = vec![i; 400 << 10];
        t.store.txn(Txn::new().then([Op::put(format!("/blobs/{i}"), value)])).await.expect("put a blob");
    }
    for i in 0..10 {
        let key = format!("/registry/gone/{i}");
        put(&t.store, &key, "soon deleted").await;
        crate::delete(&t.store, &key).await;
    }
    let lease = t.store.lease_grant(Duration::from_secs(600)).await.expect("grant");
    t.store
        .txn(Txn::new().then([Op::put_with_lease("/leader/ring-0", "me", lease.id)]))
        .await
        .expect("leader key");
    t
}

/// Every key of `store` but the copy's marker.
async fn keys_and_values(store: &dyn Store) -> Vec<(String, Vec<u8>)> {
    let kvs = store.range("").await.expect("range").kvs;
    kvs.into_iter().filter(|kv| kv.key != COPY_MARKER_KEY).map(|kv| (kv.key, kv.value)).collect()
}

async fn etcd(server: &EtcdServer) -> EtcdStore {
    etcd_server::connect(server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_every_live_key_to_an_etcd_within_its_default_limits() {
    let source = populated().await;
    let server = EtcdServer::start_with_default_limits();
    let target = etcd(&server).await;

    // The server does enforce etcd's defaults, so a copy in one transaction would fail.
    let too_many = Txn::new().then((0..129).map(|i| Op::put(format!("/probe/{i}"), "x")));
    assert!(matches!(target.txn(too_many).await, Err(StoreError::Invalid(_))));
    let too_big = Txn::new().then((0..5).map(|i| Op::put(format!("/probe/{i}"), vec![0u8; 400 << 10])));
    assert!(matches!(target.txn(too_big).await, Err(StoreError::Invalid(_))));
    assert!(target.range("").await.expect("range").kvs.is_empty());

    let source_revision = source.store.current_revision().await.expect("revision");
    let report = copy_all(&source.store, &target).await.expect("copy");

    assert_eq!(report.source_revision, source_revision);
    assert_eq!(report.keys, 305);
    assert_eq!(report.leased, ["/leader/ring-0"]);
    assert!(report.batches >= 4, "300 keys and 2 MiB of blobs take at least 4 transactions: {report:?}");
    let expected: Vec<(String, Vec<u8>)> = keys_and_values(&source.store)
        .await
        .into_iter()
        .filter(|(key, _)| !key.starts_with("/leader/"))
        .collect();
    let bytes: usize = expected.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(report.bytes, bytes as u64);

    let copied = keys_and_values(&target).await;
    assert_eq!(copied.len(), expected.len());
    assert!(copied == expected, "the target's keys and values differ from the source's");
    assert!(
        copied.iter().all(|(key, _)| !key.starts_with("/registry/gone/") && !key.starts_with("/leader/"))
    );

    let marker = target.get(COPY_MARKER_KEY).await.expect("get").expect("the marker is written");
    let marker = String::from_utf8(marker.value).expect("utf-8");
    assert_eq!(marker, format!(r#"{{"source_revision":{source_revision},"keys":305,"bytes":{bytes}}}"#));
    assert_eq!(report.target_revision, target.current_revision().await.expect("revision"));
    // The source is read, never written.
    assert_eq!(source.store.current_revision().await.expect("revision"), source_revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_not_empty_is_refused_and_left_untouched() {
    let source = populated().await;
    let server = EtcdServer::start();
    let target = etcd(&server).await;
    put(&target, "/registry/thing/0001", "theirs").await;
    let before = target.range("").await.expect("range");

    match copy_all(&source.store, &target).await {
        Err(CopyError::TargetNotEmpty { count, first, marker }) => {
            assert_eq!((count, first, marker), (1, vec!["/registry/thing/0001".to_string()], None));
        }
        other => panic!("expected TargetNotEmpty, got {other:?}"),
    }
    assert_eq!(target.range("").await.expect("range"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_large_for_etcd_is_refused_by_name_before_anything_is_written() {
    let source = SqliteTestStore::new();
    put(&source.store, "/a", "small").await;
    source.store.txn(Txn::new().then([Op::put("/huge", vec![1u8; 2 << 20])])).await.expect("put");
    let server = EtcdServer::start_with_default_limits();
    let target = etcd(&server).await;

    match copy_all(&source.store, &target).await {
        Err(e @ CopyError::TooLarge { .. }) => assert!(e.to_string().contains("/huge"), "{e}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(target.range("").await.expect("range").kvs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_changes_during_the_copy_is_refused_as_stale() {
    let source = Arc::new(populated().await);
    let server = EtcdServer::start();
    let target = Meddling {
        inner: etcd(&server).await,
        done: AtomicBool::new(false),
        meddle: Meddle::Source(Arc::clone(&source)),
    };
    let copied_at = source.store.current_revision().await.expect("revision");

    match copy_all(&source.store, &target).await {
        Err(CopyError::SourceChanged { copied, now }) => {
            assert_eq!(copied, copied_at);
            assert_eq!(now, copied_at + 1);
        }
        other => panic!("expected SourceChanged, got {other:?}"),
    }
    assert!(target.inner.get(COPY_MARKER_KEY).await.expect("get").is_none(), "a stale copy is not marked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_to_the_target_during_the_copy_is_never_overwritten() {
    let source = populated().await;
    let server = EtcdServer::start();
    let target = Meddling {
        inner: etcd(&server).await,
        done: AtomicBool::new(false),
        meddle: Meddle::Target("/registry/thing/0200"),
    };

    match copy_all(&source.store, &target).await {
        Err(CopyError::TargetChanged { .. }) => {}
        other => panic!("expected TargetChanged, got {other:?}"),
    }
    let theirs = target.inner.get("/registry/thing/0200").await.expect("get").expect("still there");
    assert_eq!(theirs.value, b"theirs");
    assert_eq!(theirs.version, 1);
    assert!(target.inner.get(COPY_MARKER_KEY).await.expect("get").is_none());
}

enum Meddle {
    /// Writes a key to the source.
    Source(Arc<SqliteTestStore>),
    /// Writes this key to the target.
    Target(&'static str),
}

/// A target that, just before the copy's first write reaches it, has something else write:
/// to the source (the cloud was not stopped) or to the target itself.
struct Meddling {
    inner: EtcdStore,
    done: AtomicBool,
    meddle: Meddle,
}

impl std::fmt::Debug for Meddling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meddling").field("inner", &self.inner).finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for Meddling {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.inner.range(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        if !self.done.swap(true, Ordering::SeqCst) {
            match &self.meddle {
                Meddle::Source(source) => {
                    drop(put(&source.store, "/registry/late", "written while copying").await)
                }
                Meddle::Target(key) => drop(put(&self.inner, key, "theirs").await),
            }
        }
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, StoreError> {
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_revoke(id).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}
