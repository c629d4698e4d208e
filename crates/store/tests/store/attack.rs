//! Hostile input on both backends: arbitrary bytes in values and odd characters in keys, a
//! transaction of thousands of operations, a watch from a compacted revision after more
//! writes, and a crowd racing to create one key.

use std::sync::Arc;

use enjin_store::{Compare, CompareTarget, EventKind, Op, OpResponse, Store, Txn, WatchError};

use crate::{Backend, TestStore, next_batch, next_item, put};
use enjin_testkit::ETCD_MAX_TXN_OPS as MAX_TXN_OPS;

on_both_backends!(
    any_bytes_and_odd_keys_round_trip,
    a_huge_txn_is_one_revision_and_one_batch,
    a_watch_from_a_compacted_revision_fails_however_far_behind,
    exactly_one_of_many_racing_creates_wins,
    ranges_and_watches_larger_than_a_grpc_message,
);

/// Keys with control characters, NUL, non-BMP characters and a long run; values of every byte.
async fn any_bytes_and_odd_keys_round_trip(backend: Backend) {
    let t = TestStore::open(backend).await;
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let long = "k".repeat(4096);
    let keys = ["\0", "a\0b", "\u{1}\u{7f}", "\u{10FFFF}", "é/\u{1F980}", "a\nb", long.as_str()];
    let mut watch = t.store.watch("", 0).await.expect("watch");
    for key in keys {
        let txn = Txn::new()
            .then([Op::put(key, every_byte.clone()), Op::get(key)])
            .otherwise([Op::get(key)])
            .when([Compare::absent(key)]);
        let response = t.store.txn(txn).await.expect("txn");
        assert!(response.succeeded, "{key:?}");
        let OpResponse::Get { kv: Some(kv) } = &response.responses[1] else { panic!("get {key:?}") };
        assert_eq!((kv.key.as_str(), &kv.value), (key, &every_byte));
        let batch = next_batch(&mut watch).await;
        assert_eq!((batch.events[0].kind, batch.events[0].kv.key.as_str()), (EventKind::Put, key));
        assert_eq!(batch.events[0].kv.value, every_byte);
    }
    let all = t.store.range("").await.expect("range");
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    assert_eq!(all.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), sorted);
    // A value compare looks at every byte, NULs included.
    let mut almost = every_byte.clone();
    almost[300] ^= 1;
    let compare = |value: Vec<u8>| Compare {
        key: "\0".into(),
        op: enjin_store::CompareOp::Equal,
        target: CompareTarget::Value(value),
    };
    assert!(t.store.txn(Txn::new().when([compare(every_byte.clone())])).await.expect("txn").succeeded);
    assert!(!t.store.txn(Txn::new().when([compare(almost)])).await.expect("txn").succeeded);
    // The key "\0" is a key like any other, not "every key".
    let deleted = t.store.txn(Txn::new().then([Op::delete("\0")])).await.expect("txn");
    assert!(matches!(&deleted.responses[0], OpResponse::Delete { deleted } if deleted.len() == 1));
    assert_eq!(t.store.range("").await.expect("range").kvs.len(), keys.len() - 1);
}

/// Thousands of writes in one transaction: one revision, and one watch batch holding them all
/// in order.
async fn a_huge_txn_is_one_revision_and_one_batch(backend: Backend) {
    let t = TestStore::open(backend).await;
    let count = MAX_TXN_OPS.min(5000);
    let mut watch = t.store.watch("big/", 0).await.expect("watch");
    let ops: Vec<Op> = (0..count).map(|i| Op::put(format!("big/{i:05}"), vec![b'x'; 100])).collect();
    let response = t.store.txn(Txn::new().then(ops)).await.expect("huge txn");
    assert_eq!(response.revision, 2);
    assert_eq!(response.responses.len(), count);
    let batch = next_batch(&mut watch).await;
    assert_eq!((batch.revision, batch.events.len()), (2, count));
    assert!(batch.events.windows(2).all(|pair| pair[0].kv.key < pair[1].kv.key));
    let deleted = t.store.txn(Txn::new().then([Op::delete_prefix("big/")])).await.expect("delete");
    assert!(matches!(&deleted.responses[0], OpResponse::Delete { deleted } if deleted.len() == count));
    let batch = next_batch(&mut watch).await;
    assert_eq!((batch.revision, batch.events.len()), (3, count));
    assert!(batch.events.iter().all(|e| e.kind == EventKind::Delete && e.prev.is_some()));
}

/// A watch from before the compacted revision fails with `Compacted` naming it, on every prefix
/// and from revision 1, however many writes came after; from the compacted revision on it
/// replays everything, deletes included.
async fn a_watch_from_a_compacted_revision_fails_however_far_behind(backend: Backend) {
    let t = TestStore::open(backend).await;
    for i in 0..30 {
        put(&t.store, &format!("k{}", i % 3), &i.to_string()).await; // 2..=31
    }
    t.store.txn(Txn::new().then([Op::delete("k0")])).await.expect("delete"); // 32
    put(&t.store, "k1", "x").await; // 33
    t.store.compact(32).await.expect("compact");
    assert_eq!(t.store.compacted_revision().await.expect("compacted"), 32);
    for (prefix, from) in [("", 1), ("k1", 2), ("nothing/", 31)] {
        let mut stream = t.store.watch(prefix, from).await.expect("watch");
        assert_eq!(
            next_item(&mut stream).await,
            Some(Err(WatchError::Compacted { requested: from, compacted: 32 })),
            "{prefix:?} from {from}"
        );
        assert_eq!(next_item(&mut stream).await, None);
    }
    let mut kept = t.store.watch("", 32).await.expect("watch");
    let delete = next_batch(&mut kept).await;
    assert_eq!(delete.revision, 32);
    assert_eq!((delete.events[0].kind, delete.events[0].kv.key.as_str()), (EventKind::Delete, "k0"));
    assert_eq!(delete.events[0].prev.as_ref().map(|kv| kv.value.as_slice()), Some(&b"27"[..]));
    assert_eq!(next_batch(&mut kept).await.revision, 33);
    // Compacting to where it already is changes nothing; below it is refused.
    t.store.compact(32).await.expect("again");
    assert!(t.store.compact(31).await.is_err());
}

/// Many tasks race to create one key: exactly one wins, and every loser reads the winner's
/// value in its failure branch.
async fn exactly_one_of_many_racing_creates_wins(backend: Backend) {
    let t = TestStore::open(backend).await;
    let store = Arc::new(t.store);
    let start = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (store, start) = (Arc::clone(&store), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let txn = Txn::new()
                .when([Compare::absent("leader")])
                .then([Op::put("leader", format!("{i}"))])
                .otherwise([Op::get("leader")]);
            (i, store.txn(txn).await.expect("txn"))
        }));
    }
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for task in tasks {
        let (i, response) = task.await.expect("task");
        if response.succeeded {
            winners.push(i.to_string());
        } else {
            let OpResponse::Get { kv: Some(kv) } = &response.responses[0] else { panic!("{response:?}") };
            seen.push(String::from_utf8(kv.value.clone()).expect("utf8"));
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    assert!(seen.iter().all(|value| *value == winners[0]), "losers saw {seen:?}, winner {winners:?}");
    let leader = store.get("leader").await.expect("get").expect("leader");
    assert_eq!((leader.version, leader.create_revision), (1, 2));
    assert_eq!(store.current_revision().await.expect("revision"), 2);
}

/// Values of a mebibyte: a range of them all, a transaction reading them all and a watch
/// replaying them are each far larger than gRPC's default message limit of 4 MiB.
async fn ranges_and_watches_larger_than_a_grpc_message(backend: Backend) {
    let t = TestStore::open(backend).await;
    let value = vec![b'v'; 1 << 20];
    for i in 0..8 {
        let response = t.store.txn(Txn::new().then([Op::put(format!("big/{i}"), value.clone())])).await;
        assert!(response.is_ok(), "put {i}: {response:?}");
    }
    let range = t.store.range("big/").await.expect("range of 8 MiB");
    assert_eq!(range.kvs.len(), 8);
    assert!(range.kvs.iter().all(|kv| kv.value == value));
    let read = t.store.txn(Txn::new().then([Op::range("big/")])).await.expect("txn reading 8 MiB");
    assert!(matches!(&read.responses[0], OpResponse::Range { kvs } if kvs.len() == 8));
    let mut watch = t.store.watch("big/", 1).await.expect("watch");
    for revision in 2..10 {
        let batch = next_batch(&mut watch).await;
        assert_eq!((batch.revision, batch.events[0].kv.value.len()), (revision, 1 << 20));
    }
}
