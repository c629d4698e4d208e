//! Durability: what was acknowledged is there after a reopen, and after a `kill -9`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use enjin_store::{EventKind, Op, Store, Txn};

use crate::{PATIENCE, SqliteTestStore, assert_quiet, next_batch, open_at, put};

#[tokio::test]
async fn reopen_resumes_data_revision_history_and_compaction() {
    let t = SqliteTestStore::new();
    put(&t.store, "a", "1").await; // 2
    put(&t.store, "b", "1").await; // 3
    put(&t.store, "a", "2").await; // 4
    t.store.txn(Txn::new().then([Op::delete("b"), Op::put("c", "1")])).await.expect("txn"); // 5
    t.store.compact(3).await.expect("compact");
    let before = t.store.range("").await.expect("range");

    let t = t.reopen().await;
    assert_eq!(t.store.current_revision().await.expect("revision"), 5);
    assert_eq!(t.store.compacted_revision().await.expect("compacted"), 3);
    assert_eq!(t.store.range("").await.expect("range"), before);

    // History from before the reopen is still there for watches.
    let mut stream = t.store.watch("", 3).await.expect("watch");
    assert_eq!(next_batch(&mut stream).await.revision, 3);
    let four = next_batch(&mut stream).await;
    assert_eq!((four.revision, four.events[0].kv.version), (4, 2));
    let five = next_batch(&mut stream).await;
    let events: Vec<_> = five.events.iter().map(|e| (e.kind, e.kv.key.as_str())).collect();
    assert_eq!((five.revision, events), (5, vec![(EventKind::Delete, "b"), (EventKind::Put, "c")]));
    assert_quiet(&mut stream).await;

    // New writes continue the revision sequence.
    assert_eq!(put(&t.store, "d", "1").await.revision, 6);
    assert_eq!(next_batch(&mut stream).await.revision, 6);
}

const CHILD_DB: &str = "ENJIN_STORE_TEST_KILL9_DB";
const CHILD_TEST: &str = "durability::kill9_child_writer";

/// The writer half of [`no_acknowledged_write_is_lost_to_kill_9`], run in a child process.
/// Without its environment variable (a normal test run) it does nothing.
#[test]
fn kill9_child_writer() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let store = Arc::new(open_at(std::path::Path::new(&path)));
        let mut tasks = Vec::new();
        for writer in 0..4 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                // Bounded, so that an orphaned child stops on its own.
                for i in 0..5000 {
                    let key = format!("w{writer}/{i:05}");
                    let response = store.txn(Txn::new().then([Op::put(&key, "v")])).await.expect("txn");
                    println!("acked {key} {}", response.revision);
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer task");
        }
    });
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_to_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child writer");
    let stdout = child.stdout.take().expect("child stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        // Only whole lines count: a line cut short by the kill is not an acknowledgement.
        while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) && line.ends_with('\n') {
            if lines_tx.send(line.trim_end().to_owned()).is_err() {
                break;
            }
            line.clear();
        }
    });

    // Let it acknowledge a good number of writes, then kill it mid-stream.
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = lines_rx.recv_timeout(PATIENCE).expect("child keeps acknowledging writes");
        if let Some(rest) = line.strip_prefix("acked ") {
            acked.push(rest.to_owned());
        }
    }
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread");
    acked.extend(lines_rx.try_iter().filter_map(|line| line.strip_prefix("acked ").map(str::to_owned)));

    let store = open_at(&path);
    let revision = store.current_revision().await.expect("revision");
    for entry in &acked {
        let (key, acked_revision) = entry.split_once(' ').expect("key and revision");
        let acked_revision: i64 = acked_revision.parse().expect("revision number");
        let kv = store.get(key).await.expect("get").unwrap_or_else(|| panic!("acknowledged {key} was lost"));
        assert_eq!(kv.mod_revision, acked_revision, "{key}");
        assert!(acked_revision <= revision);
    }
    // The history agrees with the data: every revision up to the current one is there once.
    let mut stream = store.watch("", 1).await.expect("watch");
    for expected in 2..=revision {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .expect("batch in time")
            .expect("stream open")
            .expect("no watch error");
        assert_eq!(batch.revision, expected);
    }
    store.close().await.expect("close");
}
