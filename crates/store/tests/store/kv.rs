//! Keys, values, revisions and transactions.

use enjin_store::{
    Compare, CompareOp, CompareTarget, KeyValue, Op, OpResponse, SqliteStore, SqliteStoreConfig, Store,
    StoreError, Txn,
};

use crate::{Backend, SqliteTestStore, TestStore, delete, put};

on_both_backends!(
    empty_store_is_at_revision_one,
    put_tracks_version_and_revisions,
    range_is_by_prefix_in_key_order,
    non_ascii_prefixes_cover_exactly_their_keys,
    delete_and_delete_prefix,
    compare_targets_and_operators,
    cas_success_writes_and_failure_runs_the_other_branch,
    txn_reads_its_own_writes_and_bumps_once,
    read_only_and_empty_txns_keep_the_revision,
    failed_txn_leaves_nothing_behind,
    invalid_requests_are_refused,
    close_refuses_later_calls,
);

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

async fn empty_store_is_at_revision_one(backend: Backend) {
    let t = TestStore::open(backend).await;
    assert_eq!(t.store.current_revision().await.expect("revision"), 1);
    assert_eq!(t.store.compacted_revision().await.expect("compacted"), 1);
    let range = t.store.range("").await.expect("range");
    assert!(range.kvs.is_empty());
    assert_eq!(range.revision, 1);
    assert_eq!(t.store.get("missing").await.expect("get"), None);
}

async fn put_tracks_version_and_revisions(backend: Backend) {
    let t = TestStore::open(backend).await;
    let first = put(&t.store, "a", "1").await;
    assert_eq!(first.revision, 2);
    assert!(first.succeeded);
    assert_eq!(first.responses, vec![OpResponse::Put { prev: None }]);

    let kv = t.store.get("a").await.expect("get").expect("a exists");
    assert_eq!(
        kv,
        KeyValue {
            key: "a".into(),
            value: b"1".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: None
        }
    );

    let second = put(&t.store, "a", "2").await;
    assert_eq!(second.revision, 3);
    assert_eq!(second.responses, vec![OpResponse::Put { prev: Some(kv) }]);
    let kv = t.store.get("a").await.expect("get").expect("a exists");
    assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version), (&b"2"[..], 2, 3, 2));

    assert_eq!(put(&t.store, "b", "x").await.revision, 4);
    assert_eq!(t.store.current_revision().await.expect("revision"), 4);
}

async fn range_is_by_prefix_in_key_order(backend: Backend) {
    let t = TestStore::open(backend).await;
    for key in ["b", "a/2", "a0", "a/10", "a/1", "a"] {
        put(&t.store, key, key).await;
    }
    let range = t.store.range("a/").await.expect("range");
    assert_eq!(keys(&range.kvs), ["a/1", "a/10", "a/2"]);
    assert_eq!(range.revision, 7);
    let all = t.store.range("").await.expect("range");
    assert_eq!(keys(&all.kvs), ["a", "a/1", "a/10", "a/2", "a0", "b"]);
    assert!(t.store.range("c").await.expect("range").kvs.is_empty());
}

async fn non_ascii_prefixes_cover_exactly_their_keys(backend: Backend) {
    let t = TestStore::open(backend).await;
    for key in ["é", "é/1", "éa", "ê", "e", "f", "\u{10FFFF}", "\u{10FFFF}x"] {
        put(&t.store, key, "v").await;
    }
    assert_eq!(keys(&t.store.range("é").await.expect("range").kvs), ["é", "é/1", "éa"]);
    assert_eq!(keys(&t.store.range("\u{10FFFF}").await.expect("range").kvs), ["\u{10FFFF}", "\u{10FFFF}x"]);
    let deleted = t.store.txn(Txn::new().then([Op::delete_prefix("é")])).await.expect("txn");
    assert!(matches!(&deleted.responses[0], OpResponse::Delete { deleted } if deleted.len() == 3));
    assert_eq!(
        keys(&t.store.range("").await.expect("range").kvs),
        ["e", "f", "ê", "\u{10FFFF}", "\u{10FFFF}x"]
    );
}

async fn delete_and_delete_prefix(backend: Backend) {
    let t = TestStore::open(backend).await;
    for key in ["d/1", "d/2", "d/3", "dx", "k"] {
        put(&t.store, key, "v").await;
    }
    assert_eq!(t.store.current_revision().await.expect("revision"), 6);

    // Deleting a missing key is not an error and changes nothing, so the revision stays.
    let missing = delete(&t.store, "nope").await;
    assert!(missing.succeeded);
    assert_eq!(missing.revision, 6);
    assert_eq!(missing.responses, vec![OpResponse::Delete { deleted: vec![] }]);

    let k = t.store.get("k").await.expect("get").expect("k exists");
    let deleted = delete(&t.store, "k").await;
    assert_eq!(deleted.revision, 7);
    assert_eq!(deleted.responses, vec![OpResponse::Delete { deleted: vec![k] }]);
    assert_eq!(t.store.get("k").await.expect("get"), None);

    let prefix = t.store.txn(Txn::new().then([Op::delete_prefix("d/")])).await.expect("txn");
    assert_eq!(prefix.revision, 8, "one revision for the whole prefix");
    let OpResponse::Delete { deleted } = &prefix.responses[0] else { panic!("delete response") };
    assert_eq!(keys(deleted), ["d/1", "d/2", "d/3"]);
    assert_eq!(keys(&t.store.range("").await.expect("range").kvs), ["dx"]);

    // A recreated key starts a new life: new create revision, version 1.
    put(&t.store, "k", "again").await;
    let k = t.store.get("k").await.expect("get").expect("k exists");
    assert_eq!((k.create_revision, k.mod_revision, k.version), (9, 9, 1));
}

/// Every target and operator of a compare, against a present and a missing key.
async fn compare_targets_and_operators(backend: Backend) {
    let t = TestStore::open(backend).await;
    let lease = t.store.lease_grant(std::time::Duration::from_secs(60)).await.expect("grant");
    put(&t.store, "k", "a").await; // rev 2
    t.store.txn(Txn::new().then([Op::put_with_lease("k", "m", lease.id)])).await.expect("put"); // rev 3
    // k: version 2, create 2, mod 3, value "m", lease.

    use CompareOp::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{CreateRevision, Lease, ModRevision, Value, Version};
    let cases: Vec<(&str, CompareOp, CompareTarget, bool)> = vec![
        ("k", Equal, Version(2), true),
        ("k", Equal, Version(1), false),
        ("k", NotEqual, Version(1), true),
        ("k", NotEqual, Version(2), false),
        ("k", Greater, Version(1), true),
        ("k", Greater, Version(2), false),
        ("k", Less, Version(3), true),
        ("k", Less, Version(2), false),
        ("k", Equal, CreateRevision(2), true),
        ("k", Greater, CreateRevision(2), false),
        ("k", Less, CreateRevision(3), true),
        ("k", NotEqual, CreateRevision(2), false),
        ("k", Equal, ModRevision(3), true),
        ("k", Equal, ModRevision(2), false),
        ("k", Greater, ModRevision(2), true),
        ("k", Less, ModRevision(3), false),
        ("k", NotEqual, ModRevision(4), true),
        ("k", Equal, Value(b"m".to_vec()), true),
        ("k", Equal, Value(b"a".to_vec()), false),
        ("k", NotEqual, Value(b"a".to_vec()), true),
        ("k", NotEqual, Value(b"m".to_vec()), false),
        ("k", Greater, Value(b"l".to_vec()), true),
        ("k", Greater, Value(b"mm".to_vec()), false),
        ("k", Less, Value(b"mm".to_vec()), true),
        ("k", Less, Value(b"m".to_vec()), false),
        ("k", Equal, Lease(lease.id), true),
        ("k", Equal, Lease(0), false),
        ("k", NotEqual, Lease(0), true),
        ("k", Greater, Lease(0), true),
        ("k", Less, Lease(lease.id), false),
        // A missing key: zero version and revisions, no lease, every value compare fails.
        ("x", Equal, Version(0), true),
        ("x", Greater, Version(0), false),
        ("x", Equal, CreateRevision(0), true),
        ("x", Less, ModRevision(1), true),
        ("x", Equal, Lease(0), true),
        ("x", Equal, Value(vec![]), false),
        ("x", NotEqual, Value(b"m".to_vec()), false),
        ("x", Greater, Value(vec![]), false),
        ("x", Less, Value(b"z".to_vec()), false),
    ];
    for (key, op, target, expected) in cases {
        let compare = Compare { key: key.into(), op, target: target.clone() };
        let txn = Txn::new().when([compare]).then([Op::get("k")]).otherwise([Op::range("")]);
        let response = t.store.txn(txn).await.expect("txn");
        assert_eq!(response.succeeded, expected, "{key} {op:?} {target:?}");
        assert_eq!(response.revision, 3, "a read-only txn keeps the revision");
        let ran_success = matches!(response.responses.as_slice(), [OpResponse::Get { .. }]);
        assert_eq!(ran_success, expected, "branch for {key} {op:?} {target:?}");
    }
}

async fn cas_success_writes_and_failure_runs_the_other_branch(backend: Backend) {
    let t = TestStore::open(backend).await;
    // Create only if absent.
    let create =
        Txn::new().when([Compare::absent("lock")]).then([Op::put("lock", "me")]).otherwise([Op::get("lock")]);
    let first = t.store.txn(create.clone()).await.expect("txn");
    assert!(first.succeeded);
    assert_eq!(first.revision, 2);
    let second = t.store.txn(create).await.expect("txn");
    assert!(!second.succeeded);
    assert_eq!(second.revision, 2);
    let OpResponse::Get { kv: Some(holder) } = &second.responses[0] else { panic!("get response") };
    assert_eq!(holder.value, b"me");

    // Update only at the revision we read; a stale revision fails and writes the failure branch.
    let update = |rev| {
        Txn::new()
            .when([Compare::mod_revision("lock", rev)])
            .then([Op::put("lock", "you")])
            .otherwise([Op::put("conflicts", "1")])
    };
    let stale = t.store.txn(update(1)).await.expect("txn");
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, 3, "the failure branch wrote");
    assert_eq!(t.store.get("lock").await.expect("get").expect("lock").value, b"me");
    let fresh = t.store.txn(update(2)).await.expect("txn");
    assert!(fresh.succeeded);
    assert_eq!(fresh.revision, 4);
    assert_eq!(t.store.get("lock").await.expect("get").expect("lock").value, b"you");

    // Every compare must hold.
    let both = Txn::new()
        .when([Compare::value("lock", "you"), Compare::absent("lock")])
        .then([Op::put("never", "1")]);
    assert!(!t.store.txn(both).await.expect("txn").succeeded);
    assert_eq!(t.store.get("never").await.expect("get"), None);
}

async fn txn_reads_its_own_writes_and_bumps_once(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "a", "0").await; // rev 2
    put(&t.store, "c", "0").await; // rev 3
    let txn = Txn::new().then([
        Op::get("a"),
        Op::put("a", "1"),
        Op::get("a"),
        Op::put("b", "1"),
        Op::range(""),
        Op::delete("c"),
        Op::get("c"),
        Op::range(""),
    ]);
    let response = t.store.txn(txn).await.expect("txn");
    assert_eq!(response.revision, 4);
    assert_eq!(t.store.current_revision().await.expect("revision"), 4);
    let r = &response.responses;
    let OpResponse::Get { kv: Some(before) } = &r[0] else { panic!("get a") };
    assert_eq!((before.value.as_slice(), before.version, before.mod_revision), (&b"0"[..], 1, 2));
    let OpResponse::Put { prev: Some(prev) } = &r[1] else { panic!("put a") };
    assert_eq!(prev, before);
    let OpResponse::Get { kv: Some(a) } = &r[2] else { panic!("get a") };
    assert_eq!((a.value.as_slice(), a.version, a.mod_revision, a.create_revision), (&b"1"[..], 2, 4, 2));
    assert_eq!(r[3], OpResponse::Put { prev: None });
    let OpResponse::Range { kvs } = &r[4] else { panic!("range") };
    assert_eq!(keys(kvs), ["a", "b", "c"]);
    assert_eq!((kvs[1].value.as_slice(), kvs[1].version, kvs[1].create_revision), (&b"1"[..], 1, 4));
    let OpResponse::Delete { deleted } = &r[5] else { panic!("delete") };
    assert_eq!(keys(deleted), ["c"]);
    assert_eq!(r[6], OpResponse::Get { kv: None });
    let OpResponse::Range { kvs } = &r[7] else { panic!("range") };
    assert_eq!(keys(kvs), ["a", "b"]);
}

/// The SQLite store runs a branch that writes one key twice; etcd refuses it (below).
#[tokio::test]
async fn a_branch_may_write_one_key_twice() {
    let t = SqliteTestStore::new();
    put(&t.store, "a", "0").await; // rev 2
    let txn = Txn::new().then([
        Op::put("a", "1"),
        Op::get("a"),
        Op::put("b", "1"),
        Op::put("a", "2"),
        Op::range(""),
        Op::delete("b"),
        Op::get("b"),
        Op::range(""),
    ]);
    let response = t.store.txn(txn).await.expect("txn");
    assert_eq!(response.revision, 3);
    assert_eq!(t.store.current_revision().await.expect("revision"), 3);
    let r = &response.responses;
    let OpResponse::Get { kv: Some(a) } = &r[1] else { panic!("get a") };
    assert_eq!((a.value.as_slice(), a.version, a.mod_revision, a.create_revision), (&b"1"[..], 2, 3, 2));
    let OpResponse::Range { kvs } = &r[4] else { panic!("range") };
    assert_eq!(keys(kvs), ["a", "b"]);
    assert_eq!((kvs[0].value.as_slice(), kvs[0].version), (&b"2"[..], 3));
    let OpResponse::Delete { deleted } = &r[5] else { panic!("delete") };
    assert_eq!(keys(deleted), ["b"]);
    assert_eq!(r[6], OpResponse::Get { kv: None });
    let OpResponse::Range { kvs } = &r[7] else { panic!("range") };
    assert_eq!(keys(kvs), ["a"]);
}

/// etcd refuses a branch that writes one key twice, whether or not the branch would run; the
/// etcd store says so before sending it, and changes nothing.
#[tokio::test]
async fn etcd_refuses_a_branch_that_writes_one_key_twice() {
    let t = TestStore::open(Backend::Etcd).await;
    put(&t.store, "a", "0").await; // rev 2
    let twice = [
        Txn::new().then([Op::put("a", "1"), Op::put("a", "2")]),
        Txn::new().then([Op::put("b", "1"), Op::delete("b")]),
        Txn::new().then([Op::delete_prefix("d/"), Op::put("d/x", "1")]),
        Txn::new().when([Compare::absent("a")]).otherwise([Op::put("a", "1"), Op::put("a", "1")]),
    ];
    for txn in twice {
        let err = t.store.txn(txn.clone()).await.expect_err("refused");
        assert!(matches!(&err, StoreError::Invalid(message) if message.contains("twice")), "{txn:?}: {err}");
    }
    assert_eq!(t.store.current_revision().await.expect("revision"), 2);
    // Reads of one key, and deletes whose ranges overlap, are fine.
    let fine = Txn::new().then([Op::get("a"), Op::get("a"), Op::delete_prefix(""), Op::delete("a")]);
    assert_eq!(t.store.txn(fine).await.expect("txn").revision, 3);
}

/// The etcd store checks its configuration and says which endpoint does not answer.
#[tokio::test]
async fn etcd_connection_errors_name_the_endpoint() {
    use enjin_store::{EtcdStore, EtcdStoreConfig};
    let none = EtcdStore::connect(EtcdStoreConfig::new(Vec::<String>::new())).await.expect_err("no endpoint");
    assert!(none.to_string().contains("no etcd endpoint"), "{none}");
    let https = EtcdStore::connect(EtcdStoreConfig::new(["https://127.0.0.1:1"])).await.expect_err("no tls");
    assert!(https.to_string().contains("https://127.0.0.1:1"), "{https}");
    let bare = EtcdStore::connect(EtcdStoreConfig::new(["127.0.0.1:1"])).await.expect_err("no scheme");
    assert!(bare.to_string().contains("not an http"), "{bare}");
    // A port nothing listens on: a loopback port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut config = EtcdStoreConfig::new([endpoint.as_str()]);
    config.request_timeout = std::time::Duration::from_secs(1);
    let dead = EtcdStore::connect(config).await.expect_err("nothing listens");
    assert!(matches!(dead, StoreError::Open { .. }), "{dead}");
    assert!(dead.to_string().contains(&endpoint), "{dead}");
}

async fn read_only_and_empty_txns_keep_the_revision(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "a", "1").await;
    let read = t.store.txn(Txn::new().then([Op::get("a"), Op::range("")])).await.expect("txn");
    assert_eq!(read.revision, 2);
    let empty = t.store.txn(Txn::new()).await.expect("txn");
    assert!(empty.succeeded);
    assert_eq!(empty.revision, 2);
    assert!(empty.responses.is_empty());
    assert_eq!(t.store.current_revision().await.expect("revision"), 2);
    assert_eq!(put(&t.store, "a", "2").await.revision, 3);
}

async fn failed_txn_leaves_nothing_behind(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "a", "1").await;
    let txn = Txn::new().then([Op::put("x", "1"), Op::delete("a"), Op::put_with_lease("y", "1", 999)]);
    let err = t.store.txn(txn).await.expect_err("unknown lease");
    assert!(matches!(err, StoreError::LeaseNotFound(999)), "{err}");
    assert_eq!(t.store.get("x").await.expect("get"), None);
    assert!(t.store.get("a").await.expect("get").is_some());
    assert_eq!(t.store.current_revision().await.expect("revision"), 2);
    assert_eq!(put(&t.store, "z", "1").await.revision, 3, "the failed txn used no revision");
}

async fn invalid_requests_are_refused(backend: Backend) {
    let t = TestStore::open(backend).await;
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Invalid(_)));
    assert!(invalid(t.store.txn(Txn::new().then([Op::put("", "v")])).await.map(|_| ())));
    assert!(invalid(t.store.txn(Txn::new().then([Op::delete("")])).await.map(|_| ())));
    assert!(invalid(t.store.txn(Txn::new().when([Compare::absent("")])).await.map(|_| ())));
    assert!(invalid(t.store.get("").await.map(|_| ())));
    assert!(invalid(t.store.watch("", -1).await.map(|_| ())));
    assert!(invalid(t.store.compact(0).await));
    assert!(invalid(t.store.lease_grant(std::time::Duration::ZERO).await.map(|_| ())));
    assert!(invalid(t.store.lease_grant(std::time::Duration::from_secs(u64::MAX)).await.map(|_| ())));
    let zero_lease = t.store.txn(Txn::new().then([Op::put_with_lease("k", "v", 0)])).await;
    assert!(matches!(zero_lease, Err(StoreError::LeaseNotFound(0))));
    assert_eq!(t.store.current_revision().await.expect("revision"), 1);
}

async fn close_refuses_later_calls(backend: Backend) {
    let t = TestStore::open(backend).await;
    put(&t.store, "a", "1").await;
    t.store.close().await.expect("close");
    let closed = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Closed));
    assert!(closed(t.store.txn(Txn::new()).await.map(|_| ())));
    assert!(closed(t.store.get("a").await.map(|_| ())));
    assert!(closed(t.store.range("").await.map(|_| ())));
    assert!(closed(t.store.current_revision().await.map(|_| ())));
    assert!(closed(t.store.watch("", 0).await.map(|_| ())));
    assert!(closed(t.store.lease_grant(std::time::Duration::from_secs(1)).await.map(|_| ())));
    assert!(closed(t.store.compact(1).await));
    assert!(closed(t.store.close().await));
}

#[tokio::test]
async fn a_file_has_one_owner() {
    let t = SqliteTestStore::new();
    let second = SqliteStore::open(SqliteStoreConfig::new(&t.path)).expect_err("already open");
    let message = second.to_string();
    assert!(matches!(second, StoreError::Open { .. }));
    assert!(message.contains(&t.path.display().to_string()), "{message}");
    assert!(message.starts_with("failed to open state store at "), "{message}");
    t.store.close().await.expect("close");
    let again = SqliteStore::open(SqliteStoreConfig::new(&t.path)).expect("open after close");
    again.close().await.expect("close");
}

#[tokio::test]
async fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no/such/dir/state.db");
    let err = SqliteStore::open(SqliteStoreConfig::new(&missing)).expect_err("missing directory");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42; 8192]).expect("write garbage");
    let err = SqliteStore::open(SqliteStoreConfig::new(&garbage)).expect_err("not a database");
    assert!(err.to_string().contains(&garbage.display().to_string()), "{err}");

    let mut config = SqliteStoreConfig::new(dir.path().join("state.db"));
    config.watch_buffer = 0;
    let err = SqliteStore::open(config).expect_err("bad config");
    assert!(err.to_string().contains("watch_buffer"), "{err}");
}

#[tokio::test]
async fn stats_count_reads_keys_returned_and_transactions() {
    let t = SqliteTestStore::new();
    let before = t.store.stats().expect("the SQLite store counts");
    put(&t.store, "a/1", "1").await;
    put(&t.store, "a/2", "2").await;
    t.store.range("a/").await.expect("range");
    t.store.get("a/1").await.expect("get");
    t.store.get("missing").await.expect("get");
    let after = t.store.stats().expect("the SQLite store counts");
    assert_eq!(after.txns - before.txns, 2);
    assert_eq!(after.reads - before.reads, 3, "one range and two gets");
    assert_eq!(after.keys_read - before.keys_read, 3, "two keys ranged and one found");
}
