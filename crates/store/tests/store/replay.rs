//! Property: for any mix of transactions, some submitted concurrently, a watch from the start
//! sees exactly the transactions that changed something, one batch each, at consecutive
//! revisions, with the events their responses describe; and replaying those events rebuilds
//! the final state, including versions and create revisions.

use std::collections::BTreeMap;
use std::sync::Arc;

use enjin_store::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, Op, OpResponse, Store, StoreError, Txn,
    TxnResponse, WatchBatch,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::{AnyStore, Backend, TestStore, next_batch};

const KEYS: [&str; 5] = ["a", "b", "c", "d/1", "d/2"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), 0u8..4).prop_map(|(k, v)| Op::put(k, vec![b'0' + v])),
        2 => key().prop_map(Op::delete),
        1 => prop::sample::select(vec!["d/", "", "x"]).prop_map(Op::delete_prefix),
        1 => key().prop_map(Op::get),
        1 => prop::sample::select(vec!["", "d/"]).prop_map(Op::range),
    ]
}

fn compare() -> impl Strategy<Value = Compare> {
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ]);
    let target = prop_oneof![
        (0i64..3).prop_map(CompareTarget::Version),
        (0i64..8).prop_map(CompareTarget::CreateRevision),
        (0i64..8).prop_map(CompareTarget::ModRevision),
        (0u8..4).prop_map(|v| CompareTarget::Value(vec![b'0' + v])),
        Just(CompareTarget::Lease(0)),
    ];
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn txn() -> impl Strategy<Value = Txn> {
    (
        prop::collection::vec(compare(), 0..2),
        prop::collection::vec(op(), 0..4),
        prop::collection::vec(op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| Txn { compare, success, failure, retry: 0 })
}

/// Groups of transactions: the groups run one after the other, the transactions of one group
/// concurrently from their own tasks.
fn plan() -> impl Strategy<Value = Vec<Vec<Txn>>> {
    prop::collection::vec(prop::collection::vec(txn(), 1..5), 1..7)
}

/// Whether a response shows a change (and so a revision of its own).
fn changed(response: &TxnResponse) -> bool {
    response.responses.iter().any(|r| match r {
        OpResponse::Put { .. } => true,
        OpResponse::Delete { deleted } => !deleted.is_empty(),
        _ => false,
    })
}

/// The (kind, key, value, prev) of the events a committed transaction must have produced.
fn expected_events(txn: &Txn, response: &TxnResponse) -> Vec<(EventKind, String, Vec<u8>, Option<KeyValue>)> {
    let ops = if response.succeeded { &txn.success } else { &txn.failure };
    let mut events = Vec::new();
    for (op, result) in ops.iter().zip(&response.responses) {
        match (op, result) {
            (Op::Put { key, value, .. }, OpResponse::Put { .. }) => {
                events.push((EventKind::Put, key.clone(), value.clone(), None));
            }
            (_, OpResponse::Delete { deleted }) => {
                for kv in deleted {
                    events.push((EventKind::Delete, kv.key.clone(), Vec::new(), Some(kv.clone())));
                }
            }
            _ => {}
        }
    }
    events
}

fn holds(state: &BTreeMap<String, KeyValue>, compare: &Compare) -> bool {
    let kv = state.get(&compare.key);
    let ordering = match &compare.target {
        CompareTarget::Version(v) => kv.map_or(0, |kv| kv.version).cmp(v),
        CompareTarget::CreateRevision(r) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
        CompareTarget::ModRevision(r) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
        CompareTarget::Lease(l) => kv.and_then(|kv| kv.lease).unwrap_or(0).cmp(l),
        CompareTarget::Value(v) => match kv {
            Some(kv) => kv.value.cmp(v),
            None => return false,
        },
    };
    match compare.op {
        CompareOp::Equal => ordering.is_eq(),
        CompareOp::NotEqual => ordering.is_ne(),
        CompareOp::Greater => ordering.is_gt(),
        CompareOp::Less => ordering.is_lt(),
    }
}

/// Applies one batch to the replayed state, checking each event against it.
fn apply(state: &mut BTreeMap<String, KeyValue>, batch: &WatchBatch) {
    for Event { kind, kv, prev } in &batch.events {
        assert_eq!(kv.mod_revision, batch.revision);
        match kind {
            EventKind::Put => {
                let (create, version) = match state.get(&kv.key) {
                    Some(old) => (old.create_revision, old.version + 1),
                    None => (batch.revision, 1),
                };
                assert_eq!((kv.create_revision, kv.version), (create, version), "{kv:?}");
                state.insert(kv.key.clone(), kv.clone());
            }
            EventKind::Delete => {
                let old = state.remove(&kv.key);
                assert_eq!(&old, prev, "a delete carries the value it removed");
            }
        }
    }
}

/// Whether a branch writes one key twice, which etcd refuses (see the etcd store's docs).
fn writes_a_key_twice(ops: &[Op]) -> bool {
    let mut put = std::collections::BTreeSet::new();
    let deletes = |key: &str| {
        ops.iter().any(|op| match op {
            Op::Delete { key: deleted } => deleted == key,
            Op::DeletePrefix { prefix } => key.starts_with(prefix.as_str()),
            _ => false,
        })
    };
    ops.iter().any(|op| matches!(op, Op::Put { key, .. } if !put.insert(key.clone()) || deletes(key)))
}

/// Runs `plan` on `store` and checks it against a watch from the store's revision before it.
/// The store's keys are cleared first, so that one etcd can serve many cases.
async fn check(store: Arc<AnyStore>, backend: Backend, plan: Vec<Vec<Txn>>) {
    store.txn(Txn::new().then([Op::delete_prefix("")])).await.expect("clear");
    let first = store.current_revision().await.expect("revision");
    let mut stream = store.watch("", first + 1).await.expect("watch");

    let mut done: Vec<(Txn, TxnResponse)> = Vec::new();
    for group in plan {
        let tasks: Vec<_> = group
            .into_iter()
            .map(|txn| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    match store.txn(txn.clone()).await {
                        Ok(response) => Some((txn, response)),
                        Err(StoreError::Invalid(_))
                            if backend == Backend::Etcd
                                && (writes_a_key_twice(&txn.success) || writes_a_key_twice(&txn.failure)) =>
                        {
                            None
                        }
                        Err(e) => panic!("txn {txn:?} failed: {e}"),
                    }
                })
            })
            .collect();
        for task in tasks {
            done.extend(task.await.expect("txn task"));
        }
    }
    let last = store.range("").await.expect("range");

    // The writing transactions got exactly the revisions after the first, one each.
    let mut by_revision: BTreeMap<i64, &(Txn, TxnResponse)> = BTreeMap::new();
    for entry in &done {
        let response = &entry.1;
        assert!(response.revision >= first && response.revision <= last.revision);
        if changed(response) {
            assert!(entry.0.writes(response.succeeded), "only a writing branch changes keys");
            assert!(by_revision.insert(response.revision, entry).is_none(), "revision given twice");
        }
    }
    assert_eq!(
        by_revision.keys().copied().collect::<Vec<_>>(),
        (first + 1..=last.revision).collect::<Vec<_>>()
    );

    // The watch delivers each of them once, in order, with the events their responses name,
    // and each one's compare result matches the state the replay has reached.
    let mut state = BTreeMap::new();
    for (&revision, (txn, response)) in &by_revision {
        let batch = next_batch(&mut stream).await;
        assert_eq!(batch.revision, revision);
        let got: Vec<_> = batch
            .events
            .iter()
            .map(|e| (e.kind, e.kv.key.clone(), e.kv.value.clone(), e.prev.clone()))
            .collect();
        assert_eq!(got, expected_events(txn, response), "revision {revision}");
        let succeeded = txn.compare.iter().all(|c| holds(&state, c));
        assert_eq!(succeeded, response.succeeded, "compare outcome at revision {revision}");
        apply(&mut state, &batch);
    }
    assert_eq!(state.into_values().collect::<Vec<_>>(), last.kvs, "replay rebuilds the final state");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn watch_replay_matches_committed_transactions(plan in plan()) {
        let runtime = runtime();
        runtime.block_on(async {
            let t = TestStore::open(Backend::Sqlite).await;
            let store = Arc::new(t.store);
            check(Arc::clone(&store), Backend::Sqlite, plan).await;
            store.close().await.expect("close");
        });
    }
}

/// The same property on one etcd for every case (each case starts by clearing its keys).
#[test]
fn etcd_watch_replay_matches_committed_transactions() {
    let runtime = runtime();
    let t = runtime.block_on(TestStore::open(Backend::Etcd));
    let store = Arc::new(t.store);
    let mut runner = TestRunner::new(ProptestConfig { cases: 24, ..ProptestConfig::default() });
    let result = runner.run(&plan(), |plan| {
        runtime.block_on(check(Arc::clone(&store), Backend::Etcd, plan));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
