//! Leases: expiry, keep-alive, revocation.

use std::time::Duration;

use enjin_store::{Compare, CompareOp, CompareTarget, EventKind, Op, Store, StoreError, Txn};
use tokio::time::Instant;

use crate::{Backend, TestStore, eventually, next_batch, put};

on_both_backends!(
    expiry_deletes_the_attached_keys_in_one_revision,
    keep_alive_prevents_expiry,
    revoke_deletes_the_attached_keys_in_one_revision,
    revoking_a_lease_without_keys_keeps_the_revision,
    leases_survive_reopen_with_a_fresh_deadline,
);

async fn expiry_deletes_the_attached_keys_in_one_revision(backend: Backend) {
    let t = TestStore::open(backend).await;
    let lease = t.store.lease_grant(Duration::from_millis(300)).await.expect("grant");
    // The SQLite store keeps milliseconds; etcd whole seconds, and at least its minimum.
    match backend {
        Backend::Sqlite => assert_eq!(lease.ttl, Duration::from_millis(300)),
        Backend::Etcd => assert!(lease.ttl >= Duration::from_secs(1), "{lease:?}"),
    }
    let txn =
        Txn::new().then([Op::put_with_lease("a", "1", lease.id), Op::put_with_lease("b", "1", lease.id)]);
    t.store.txn(txn).await.expect("txn"); // 2
    put(&t.store, "c", "1").await; // 3
    let a = t.store.get("a").await.expect("get").expect("a");
    assert_eq!(a.lease, Some(lease.id));
    let mut stream = t.store.watch("", 0).await.expect("watch");

    eventually("the lease to expire", || async { t.store.get("a").await.expect("get").is_none() }).await;
    assert_eq!(t.store.get("b").await.expect("get"), None);
    assert!(t.store.get("c").await.expect("get").is_some(), "c is not attached to the lease");
    assert_eq!(t.store.current_revision().await.expect("revision"), 4, "one revision for the expiry");

    let batch = next_batch(&mut stream).await;
    assert_eq!(batch.revision, 4);
    let events: Vec<_> = batch.events.iter().map(|e| (e.kind, e.kv.key.as_str())).collect();
    assert_eq!(events, [(EventKind::Delete, "a"), (EventKind::Delete, "b")]);
    assert_eq!(batch.events[0].prev, Some(a));

    let gone = t.store.lease_keep_alive(lease.id).await;
    assert!(matches!(gone, Err(StoreError::LeaseNotFound(id)) if id == lease.id), "{gone:?}");
    let put_gone = t.store.txn(Txn::new().then([Op::put_with_lease("d", "1", lease.id)])).await;
    assert!(matches!(put_gone, Err(StoreError::LeaseNotFound(_))), "{put_gone:?}");
}

async fn keep_alive_prevents_expiry(backend: Backend) {
    let t = TestStore::open(backend).await;
    // Generous against the keep-alive period so that a loaded machine does not make it flaky.
    let lease = t.store.lease_grant(Duration::from_millis(800)).await.expect("grant");
    t.store.txn(Txn::new().then([Op::put_with_lease("k", "v", lease.id)])).await.expect("txn");
    let until = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < until {
        let refreshed = t.store.lease_keep_alive(lease.id).await.expect("keep alive");
        assert_eq!(refreshed, lease);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t.store.get("k").await.expect("get").is_some(), "kept alive for well past its ttl");
    eventually("the lease to expire once no longer kept alive", || async {
        t.store.get("k").await.expect("get").is_none()
    })
    .await;
}

async fn revoke_deletes_the_attached_keys_in_one_revision(backend: Backend) {
    let t = TestStore::open(backend).await;
    let lease = t.store.lease_grant(Duration::from_secs(60)).await.expect("grant");
    let other = t.store.lease_grant(Duration::from_secs(60)).await.expect("grant");
    assert_ne!(lease.id, other.id);
    let txn = Txn::new().then([
        Op::put_with_lease("a", "1", lease.id),
        Op::put_with_lease("b", "1", lease.id),
        Op::put_with_lease("o", "1", other.id),
    ]);
    t.store.txn(txn).await.expect("txn"); // 2
    // Overwriting without a lease detaches the key.
    put(&t.store, "b", "2").await; // 3
    let lease_compare =
        Compare { key: "a".into(), op: CompareOp::Equal, target: CompareTarget::Lease(lease.id) };
    assert!(t.store.txn(Txn::new().when([lease_compare])).await.expect("txn").succeeded);

    let mut stream = t.store.watch("", 0).await.expect("watch");
    t.store.lease_revoke(lease.id).await.expect("revoke");
    assert_eq!(t.store.current_revision().await.expect("revision"), 4);
    assert_eq!(t.store.get("a").await.expect("get"), None);
    assert!(t.store.get("b").await.expect("get").is_some(), "b was detached");
    assert!(t.store.get("o").await.expect("get").is_some(), "o belongs to another lease");
    let batch = next_batch(&mut stream).await;
    assert_eq!((batch.revision, batch.events.len(), batch.events[0].kind), (4, 1, EventKind::Delete));

    let again = t.store.lease_revoke(lease.id).await;
    assert!(matches!(again, Err(StoreError::LeaseNotFound(_))), "{again:?}");
    let unknown = t.store.lease_keep_alive(12345).await;
    assert!(matches!(unknown, Err(StoreError::LeaseNotFound(12345))), "{unknown:?}");
}

async fn revoking_a_lease_without_keys_keeps_the_revision(backend: Backend) {
    let t = TestStore::open(backend).await;
    let lease = t.store.lease_grant(Duration::from_secs(60)).await.expect("grant");
    t.store.lease_revoke(lease.id).await.expect("revoke");
    assert_eq!(t.store.current_revision().await.expect("revision"), 1);
}

async fn leases_survive_reopen_with_a_fresh_deadline(backend: Backend) {
    let t = TestStore::open(backend).await;
    let long = t.store.lease_grant(Duration::from_secs(60)).await.expect("grant");
    let short = t.store.lease_grant(Duration::from_millis(300)).await.expect("grant");
    let txn = Txn::new()
        .then([Op::put_with_lease("long", "1", long.id), Op::put_with_lease("short", "1", short.id)]);
    t.store.txn(txn).await.expect("txn");

    let t = t.reopen().await;
    assert_eq!(t.store.lease_keep_alive(long.id).await.expect("keep alive"), long);
    let fresh = t.store.lease_grant(Duration::from_secs(60)).await.expect("grant");
    assert!(fresh.id > short.id, "lease ids are not reused after reopen");
    eventually("the short lease to expire after reopen", || async {
        t.store.get("short").await.expect("get").is_none()
    })
    .await;
    assert!(t.store.get("long").await.expect("get").is_some());
    t.store.lease_revoke(long.id).await.expect("revoke");
    assert_eq!(t.store.get("long").await.expect("get"), None);
}
