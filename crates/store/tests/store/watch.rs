//! Watches: replay from history, live events, whole transactions, prefixes, compaction.

use enjin_store::{Event, EventKind, KeyValue, Op, Store, StoreError, Txn, WatchBatch, WatchError};

use crate::{Backend, SqliteTestStore, TestStore, assert_quiet, delete, next_batch, next_item, put};

on_both_backends!(
    watch_from_an_old_revision_replays_then_goes_live,
    watch_from_zero_starts_after_the_current_revision,
    watch_from_a_future_revision_waits_for_it,
    a_multi_key_txn_arrives_as_one_batch,
    a_txn_larger_than_one_read_is_still_one_batch,
    watches_filter_by_prefix,
    watch_from_before_compaction_fails_with_compacted,
    compaction_bounds,
    two_watchers_see_identical_sequences,
    closing_the_store_ends_watches_after_the_last_events,
);

fn summary(batch: &WatchBatch) -> (i64, Vec<(EventKind, String)>) {
    (batch.revision, batch.events.iter().map(|e| (e.kind, e.kv.key.clone())).collect())
}

fn puts(rev: i64, keys: &[&str]) -> (i64, Vec<(EventKind, String)>) {
    (rev, keys.iter().map(|k| (EventKind::Put, (*k).to_owned())).collect())
}

async fn watch_from_an_old_revision_replays_then_goes_live(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "a", "1").await; // 2
    put(&t.store, "b", "1").await; // 3
    put(&t.store, "a", "2").await; // 4
    let a = t.store.get("a").await.expect("get").expect("a");
    delete(&t.store, "a").await; // 5

    let mut stream = t.store.watch("", 2).await.expect("watch");
    let first = next_batch(&mut stream).await;
    assert_eq!(first.revision, 2);
    assert_eq!(
        first.events,
        vec![Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: "a".into(),
                value: b"1".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                lease: None
            },
            prev: None,
        }]
    );
    assert_eq!(summary(&next_batch(&mut stream).await), puts(3, &["b"]));
    let third = next_batch(&mut stream).await;
    assert_eq!(summary(&third), puts(4, &["a"]));
    assert_eq!((third.events[0].kv.version, third.events[0].kv.create_revision), (2, 2));
    let deleted = next_batch(&mut stream).await;
    assert_eq!(
        deleted.events,
        vec![Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: "a".into(),
                value: vec![],
                create_revision: 0,
                mod_revision: 5,
                version: 0,
                lease: None
            },
            prev: Some(a),
        }]
    );
    assert_quiet(&mut stream).await;

    // Live from here on.
    put(&t.store, "c", "1").await;
    assert_eq!(summary(&next_batch(&mut stream).await), puts(6, &["c"]));
}

async fn watch_from_zero_starts_after_the_current_revision(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "old", "1").await;
    let mut stream = t.store.watch("", 0).await.expect("watch");
    assert_quiet(&mut stream).await;
    put(&t.store, "new", "1").await;
    assert_eq!(summary(&next_batch(&mut stream).await), puts(3, &["new"]));
}

async fn watch_from_a_future_revision_waits_for_it(backend: Backend) {
    let t = TestStore::open(backend).await;
    let mut stream = t.store.watch("", 3).await.expect("watch");
    put(&t.store, "a", "1").await; // 2, before the start
    put(&t.store, "b", "1").await; // 3
    assert_eq!(summary(&next_batch(&mut stream).await), puts(3, &["b"]));
}

async fn a_multi_key_txn_arrives_as_one_batch(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "d", "1").await;
    let mut stream = t.store.watch("", 0).await.expect("watch");
    let txn = Txn::new().then([Op::put("a", "1"), Op::put("b", "1"), Op::delete("d"), Op::put("c", "1")]);
    t.store.txn(txn).await.expect("txn");
    let batch = next_batch(&mut stream).await;
    assert_eq!(batch.revision, 3);
    let kinds: Vec<_> = batch.events.iter().map(|e| (e.kind, e.kv.key.as_str(), e.kv.mod_revision)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Put, "a", 3),
            (EventKind::Put, "b", 3),
            (EventKind::Delete, "d", 3),
            (EventKind::Put, "c", 3)
        ]
    );
    assert_quiet(&mut stream).await;
}

async fn a_txn_larger_than_one_read_is_still_one_batch(backend: Backend) {
    let t = TestStore::open_tuned(backend, |config| config.watch_rows_per_read = 3).await;
    put(&t.store, "first", "1").await; // 2
    let ops: Vec<Op> = (0..10).map(|i| Op::put(format!("k{i}"), "v")).collect();
    t.store.txn(Txn::new().then(ops)).await.expect("txn"); // 3
    put(&t.store, "x", "1").await; // 4
    put(&t.store, "y", "1").await; // 5
    let mut stream = t.store.watch("", 1).await.expect("watch");
    assert_eq!(summary(&next_batch(&mut stream).await), puts(2, &["first"]));
    let big = next_batch(&mut stream).await;
    assert_eq!(big.revision, 3);
    assert_eq!(big.events.len(), 10);
    assert_eq!(summary(&next_batch(&mut stream).await), puts(4, &["x"]));
    assert_eq!(summary(&next_batch(&mut stream).await), puts(5, &["y"]));
}

async fn watches_filter_by_prefix(backend: Backend) {
    let t = TestStore::open(backend).await;
    let mut apps = t.store.watch("app/", 0).await.expect("watch");
    put(&t.store, "app/x", "1").await; // 2
    put(&t.store, "other", "1").await; // 3
    put(&t.store, "apple", "1").await; // 4
    let txn = Txn::new().then([Op::put("other/q", "1"), Op::put("app/z", "1")]);
    t.store.txn(txn).await.expect("txn"); // 5
    t.store.txn(Txn::new().then([Op::delete_prefix("")])).await.expect("txn"); // 6

    assert_eq!(summary(&next_batch(&mut apps).await), puts(2, &["app/x"]));
    assert_eq!(summary(&next_batch(&mut apps).await), puts(5, &["app/z"]));
    let cleared = next_batch(&mut apps).await;
    assert_eq!(
        summary(&cleared),
        (6, vec![(EventKind::Delete, "app/x".to_owned()), (EventKind::Delete, "app/z".to_owned())])
    );
    assert_quiet(&mut apps).await;

    // The same filter when replaying from history.
    let mut replay = t.store.watch("app/", 1).await.expect("watch");
    let revisions =
        [next_batch(&mut replay).await, next_batch(&mut replay).await, next_batch(&mut replay).await]
            .map(|b| b.revision);
    assert_eq!(revisions, [2, 5, 6]);
    assert_quiet(&mut replay).await;
}

async fn watch_from_before_compaction_fails_with_compacted(backend: Backend) {
    let t = TestStore::open(backend).await;
    for i in 0..5 {
        put(&t.store, "k", &i.to_string()).await; // 2..=6
    }
    t.store.compact(4).await.expect("compact");
    assert_eq!(t.store.compacted_revision().await.expect("compacted"), 4);

    let mut stream = t.store.watch("", 2).await.expect("watch");
    assert_eq!(next_item(&mut stream).await, Some(Err(WatchError::Compacted { requested: 2, compacted: 4 })));
    assert_eq!(next_item(&mut stream).await, None, "the stream ends after the error");

    let mut kept = t.store.watch("", 4).await.expect("watch");
    assert_eq!(next_batch(&mut kept).await.revision, 4);
    assert_eq!(next_batch(&mut kept).await.revision, 5);
    assert_eq!(next_batch(&mut kept).await.revision, 6);
}

async fn compaction_bounds(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "a", "1").await; // 2
    put(&t.store, "a", "2").await; // 3
    let future = t.store.compact(4).await;
    assert!(matches!(future, Err(StoreError::FutureRevision { requested: 4, current: 3 })), "{future:?}");
    t.store.compact(3).await.expect("compact to current");
    t.store.compact(3).await.expect("compacting again is a no-op");
    let older = t.store.compact(2).await;
    assert!(matches!(older, Err(StoreError::Compacted { requested: 2, compacted: 3 })), "{older:?}");
    // Compaction drops history, not data, and uses no revision.
    assert_eq!(t.store.current_revision().await.expect("revision"), 3);
    assert_eq!(t.store.get("a").await.expect("get").expect("a").value, b"2");
}

#[tokio::test]
async fn a_lagging_watcher_whose_next_revision_is_compacted_gets_compacted() {
    let t = SqliteTestStore::with(|config| {
        config.watch_buffer = 1;
        config.watch_rows_per_read = 2;
    });
    for i in 0..20 {
        put(&t.store, &format!("k{i}"), "v").await; // 2..=21
    }
    let mut stream = t.store.watch("", 1).await.expect("watch");
    // Once the first batch is taken the watch is under way; it can only have read a few
    // revisions ahead, since its buffer holds one batch.
    assert_eq!(next_batch(&mut stream).await.revision, 2);
    t.store.compact(15).await.expect("compact");
    let mut expected = 3;
    loop {
        match next_item(&mut stream).await.expect("an item before the end") {
            Ok(batch) => {
                assert_eq!(batch.revision, expected);
                expected += 1;
            }
            Err(err) => {
                assert_eq!(err, WatchError::Compacted { requested: expected, compacted: 15 });
                break;
            }
        }
    }
    assert!(expected < 15, "the watcher got ahead of the compaction: {expected}");
    assert_eq!(next_item(&mut stream).await, None);
}

async fn two_watchers_see_identical_sequences(backend: Backend) {
    let t = TestStore::open(backend).await;
    let mut early = t.store.watch("", 1).await.expect("watch");
    let store = std::sync::Arc::new(t.store);
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = std::sync::Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                let key = format!("k{}", (w * 7 + i) % 10);
                let op = if i % 5 == 4 { Op::delete(key) } else { Op::put(key, format!("{w}-{i}")) };
                store.txn(Txn::new().then([op])).await.expect("txn");
            }
        }));
    }
    let mut late = store.watch("", 1).await.expect("watch");
    for writer in writers {
        writer.await.expect("writer task");
    }
    let last = store.current_revision().await.expect("revision");
    let mut sequences = Vec::new();
    for stream in [&mut early, &mut late] {
        let mut batches = Vec::new();
        while batches.last().map_or(1, |b: &WatchBatch| b.revision) < last {
            batches.push(next_batch(stream).await);
        }
        let revisions: Vec<i64> = batches.iter().map(|b| b.revision).collect();
        assert_eq!(revisions, (2..=last).collect::<Vec<_>>());
        sequences.push(batches);
    }
    assert_eq!(sequences[0], sequences[1]);
    for batch in &sequences[0] {
        assert!(batch.events.iter().all(|e| e.kv.mod_revision == batch.revision), "{batch:?}");
    }
}

async fn closing_the_store_ends_watches_after_the_last_events(backend: Backend) {
    let t = TestStore::open(backend).await;
    let mut stream = t.store.watch("", 0).await.expect("watch");
    put(&t.store, "a", "1").await;
    put(&t.store, "b", "1").await;
    t.store.close().await.expect("close");
    assert_eq!(next_batch(&mut stream).await.revision, 2);
    assert_eq!(next_batch(&mut stream).await.revision, 3);
    assert_eq!(next_item(&mut stream).await, Some(Err(WatchError::Closed)));
    assert_eq!(next_item(&mut stream).await, None);
}
