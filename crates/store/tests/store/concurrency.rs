//! Group commit under concurrency: many callers, each answered with its own revision.

use std::collections::BTreeSet;
use std::sync::Arc;

use enjin_store::{Compare, Op, OpResponse, Store, StoreError, Txn};

use crate::TestStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_txns_get_distinct_consecutive_revisions() {
    let t = TestStore::new();
    let store = Arc::new(t.store);
    let (tasks, per_task) = (8, 50);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..per_task {
                let key = format!("t{task}/{i}");
                let response = store.txn(Txn::new().then([Op::put(&key, "v")])).await.expect("txn");
                revisions.push((key, response.revision));
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("task"));
    }
    let revisions: BTreeSet<i64> = all.iter().map(|(_, rev)| *rev).collect();
    let total = i64::from(tasks * per_task);
    assert_eq!(revisions, (2..=total + 1).collect::<BTreeSet<_>>(), "distinct and consecutive");
    assert_eq!(store.current_revision().await.expect("revision"), total + 1);
    for (key, revision) in &all {
        let kv = store.get(key).await.expect("get").expect("key written");
        assert_eq!(kv.mod_revision, *revision, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_txns_do_not_affect_their_group() {
    let t = TestStore::new();
    let store = Arc::new(t.store);
    let mut handles = Vec::new();
    for i in 0..200 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let key = format!("k{i:03}");
            // Every other txn names a lease that does not exist and must fail alone.
            let op = if i % 2 == 0 { Op::put(&key, "v") } else { Op::put_with_lease(&key, "v", 424242) };
            (key, store.txn(Txn::new().then([op])).await)
        }));
    }
    let mut revisions = BTreeSet::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let (key, result) = handle.await.expect("task");
        if i % 2 == 0 {
            revisions.insert(result.expect("good txn").revision);
            assert!(store.get(&key).await.expect("get").is_some());
        } else {
            assert!(matches!(result, Err(StoreError::LeaseNotFound(424242))), "{result:?}");
            assert_eq!(store.get(&key).await.expect("get"), None);
        }
    }
    assert_eq!(revisions, (2..=101).collect::<BTreeSet<_>>());
}

/// Read-modify-write with compare-and-swap from many tasks: no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_increments_from_many_tasks_lose_nothing() {
    let t = TestStore::new();
    let store = Arc::new(t.store);
    let (tasks, per_task) = (6, 20);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                loop {
                    let current = store.get("counter").await.expect("get");
                    let (value, guard) = match &current {
                        Some(kv) => {
                            let n: u32 =
                                std::str::from_utf8(&kv.value).expect("utf8").parse().expect("number");
                            (n, Compare::mod_revision("counter", kv.mod_revision))
                        }
                        None => (0, Compare::absent("counter")),
                    };
                    let txn = Txn::new().when([guard]).then([Op::put("counter", (value + 1).to_string())]);
                    let response = store.txn(txn).await.expect("txn");
                    if response.succeeded {
                        assert!(matches!(response.responses[0], OpResponse::Put { .. }));
                        break;
                    }
                }
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    let counter = store.get("counter").await.expect("get").expect("counter");
    assert_eq!(counter.value, (tasks * per_task).to_string().into_bytes());
    assert_eq!(counter.version, i64::from(tasks * per_task));
}
