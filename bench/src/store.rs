//! Transactions straight on the embedded SQLite store, and the raw fsync rate of the same
//! directory that bounds them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use enjin_store::{Compare, Op, OpResponse, Revision, SqliteStore, SqliteStoreConfig, Store, Txn};

use crate::report::Row;
use crate::run::{self, Limits, Sample, TaskReport};

/// The size of every value written: about what a small model object takes as JSON.
pub const VALUE_BYTES: usize = 256;

/// Tasks in the concurrent rows.
pub const TASKS: usize = 32;

/// Append one byte and `fdatasync`, in a loop: the most acknowledged writes per second this
/// disk allows one writer without batching.
pub async fn fsync_anchor(dir: &Path, limits: Limits) -> anyhow::Result<Sample> {
    let path = dir.join("fsync-anchor");
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    let sample = run::run_blocking(limits, move || {
        file.write_all(&[0])?;
        file.sync_data()
    })
    .await?;
    std::fs::remove_file(&path).with_context(|| format!("failed to remove {}", path.display()))?;
    Ok(sample)
}

/// Opens a store at `dir/state.db` (which must not exist yet).
pub async fn open(dir: &Path) -> anyhow::Result<Arc<SqliteStore>> {
    let path = dir.join("state.db");
    let config = SqliteStoreConfig::new(&path);
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(config))
        .await
        .context("the store opening thread panicked")?
        .with_context(|| format!("failed to open the store at {}", path.display()))?;
    Ok(Arc::new(store))
}

/// Every store row, on one fresh store in `dir`.
pub async fn rows(dir: &Path, limits: Limits) -> anyhow::Result<Vec<Row>> {
    let store = open(dir).await?;
    let value: Arc<[u8]> = vec![b'x'; VALUE_BYTES].into();
    let mut rows = Vec::new();

    let seq = puts(&store, &value, 1, limits, "seq").await?;
    rows.push(Row::write("put, 1 new key per txn", seq));
    let conc = puts(&store, &value, TASKS, limits, "conc").await?;
    rows.push(Row::write("put, 1 new key per txn", conc));
    let cas = cas_own_keys(&store, &value, TASKS, limits).await?;
    rows.push(Row::write("CAS (mod_revision) + put, own key per task", cas));
    let hot = cas_hot_key(&store, &value, TASKS, limits).await?;
    rows.push(Row::write("CAS (mod_revision) + put, 1 shared key, retry until won", hot));
    let reread = cas_hot_key_reread(&store, &value, TASKS, limits).await?;
    rows.push(Row::write("CAS (mod_revision) + put, 1 shared key, get then CAS, re-read on loss", reread));
    // Reads of the keys the first row wrote: what each store read the API makes costs.
    let written = rows[0].sample.ops().max(1);
    for tasks in [1, TASKS] {
        let sample = gets(&store, tasks, limits, written).await?;
        rows.push(Row::read("get 1 key (read pool)", sample));
    }

    store.close().await.context("failed to close the benchmark store")?;
    Ok(rows)
}

/// Single-key put transactions, each on a key never written before.
async fn puts(
    store: &Arc<SqliteStore>,
    value: &Arc<[u8]>,
    tasks: usize,
    limits: Limits,
    name: &'static str,
) -> anyhow::Result<Sample> {
    run::run(tasks, limits, |_, budget| {
        let (store, value) = (Arc::clone(store), Arc::clone(value));
        async move {
            let mut report = TaskReport::default();
            while let Some(i) = budget.claim() {
                let txn = Txn::new().then([Op::put(format!("/bench/{name}/{i}"), &value[..])]);
                let start = Instant::now();
                match store.txn(txn).await {
                    Ok(_) => report.latencies.push(start.elapsed()),
                    Err(e) => report.error(e),
                }
            }
            report
        }
    })
    .await
}

/// Single-key gets of the keys `puts(.., "seq")` wrote (`written` of them).
async fn gets(
    store: &Arc<SqliteStore>,
    tasks: usize,
    limits: Limits,
    written: u64,
) -> anyhow::Result<Sample> {
    run::run(tasks, limits, |_, budget| {
        let store = Arc::clone(store);
        async move {
            let mut report = TaskReport::default();
            while let Some(i) = budget.claim() {
                let key = format!("/bench/seq/{}", i % written);
                let start = Instant::now();
                match store.get(&key).await {
                    Ok(Some(_)) => report.latencies.push(start.elapsed()),
                    Ok(None) => report.error(format!("{key} is missing")),
                    Err(e) => report.error(e),
                }
            }
            report
        }
    })
    .await
}

/// One compare-and-swap attempt: put `key` if it is still at `rev`; returns whether it won
/// and the key's revision afterwards.
async fn cas(
    store: &SqliteStore,
    key: &str,
    rev: Revision,
    value: &[u8],
    lost: u64,
) -> Result<(bool, Revision), enjin_store::StoreError> {
    let txn = Txn::new()
        .when([Compare::mod_revision(key, rev)])
        .then([Op::put(key, value)])
        .otherwise([Op::get(key)]);
    let resp = store.txn(retried(txn, lost)).await?;
    if resp.succeeded {
        // The put is the only write of the txn: the key's new mod_revision is the txn's.
        return Ok((true, resp.revision));
    }
    let current = match resp.responses.first() {
        Some(OpResponse::Get { kv: Some(kv) }) => kv.mod_revision,
        _ => 0,
    };
    Ok((false, current))
}

/// Each task updates its own key, knowing its revision: every CAS should win, so this is the
/// cost of the guarded write alone.
async fn cas_own_keys(
    store: &Arc<SqliteStore>,
    value: &Arc<[u8]>,
    tasks: usize,
    limits: Limits,
) -> anyhow::Result<Sample> {
    run::run(tasks, limits, |t, budget| {
        let (store, value) = (Arc::clone(store), Arc::clone(value));
        async move {
            let mut report = TaskReport::default();
            let key = format!("/bench/cas/{t}");
            // Untimed seed: the key exists before the first CAS.
            let mut rev = match store.txn(Txn::new().then([Op::put(&key, &value[..])])).await {
                Ok(resp) => resp.revision,
                Err(e) => {
                    report.error(e);
                    return report;
                }
            };
            while budget.claim().is_some() {
                let start = Instant::now();
                match cas(&store, &key, rev, &value, 0).await {
                    Ok((won, now)) => {
                        rev = now;
                        if won {
                            report.latencies.push(start.elapsed());
                        } else {
                            report.conflicts += 1;
                        }
                    }
                    Err(e) => report.error(e),
                }
            }
            report
        }
    })
    .await
}

/// Every task updates the same key and retries a lost CAS with the revision it learned: the
/// latency is that of one successful update, retries included.
async fn cas_hot_key(
    store: &Arc<SqliteStore>,
    value: &Arc<[u8]>,
    tasks: usize,
    limits: Limits,
) -> anyhow::Result<Sample> {
    const KEY: &str = "/bench/hot";
    let seeded = store
        .txn(Txn::new().then([Op::put(KEY, &value[..])]))
        .await
        .context("failed to seed the shared CAS key")?;
    let seed_rev = seeded.revision;
    run::run(tasks, limits, |_, budget| {
        let (store, value) = (Arc::clone(store), Arc::clone(value));
        async move {
            let mut report = TaskReport::default();
            let mut rev = seed_rev;
            'ops: while budget.claim().is_some() {
                let start = Instant::now();
                let mut lost = 0;
                loop {
                    match cas(&store, KEY, rev, &value, lost).await {
                        Ok((true, now)) => {
                            rev = now;
                            report.latencies.push(start.elapsed());
                            report.most_conflicts = report.most_conflicts.max(lost);
                            break;
                        }
                        Ok((false, now)) => {
                            rev = now;
                            lost += 1;
                            report.conflicts += 1;
                            // An update still losing at the deadline is dropped, not counted.
                            if budget.expired() {
                                break 'ops;
                            }
                        }
                        Err(e) => {
                            report.error(e);
                            break;
                        }
                    }
                }
            }
            report
        }
    })
    .await
}

/// The usual read-modify-write: read the shared key, compare-and-swap on the revision read,
/// and on a loss read it again and retry. The latency is that of one successful update: its
/// first read, every lost attempt and every re-read.
async fn cas_hot_key_reread(
    store: &Arc<SqliteStore>,
    value: &Arc<[u8]>,
    tasks: usize,
    limits: Limits,
) -> anyhow::Result<Sample> {
    const KEY: &str = "/bench/hot-reread";
    store
        .txn(Txn::new().then([Op::put(KEY, &value[..])]))
        .await
        .context("failed to seed the shared CAS key")?;
    run::run(tasks, limits, |_, budget| {
        let (store, value) = (Arc::clone(store), Arc::clone(value));
        async move {
            let mut report = TaskReport::default();
            'ops: while budget.claim().is_some() {
                let start = Instant::now();
                let mut lost = 0;
                loop {
                    let rev = match store.get(KEY).await {
                        Ok(Some(kv)) => kv.mod_revision,
                        Ok(None) => {
                            report.error(format!("{KEY} is missing"));
                            break 'ops;
                        }
                        Err(e) => {
                            report.error(e);
                            break 'ops;
                        }
                    };
                    let txn =
                        Txn::new().when([Compare::mod_revision(KEY, rev)]).then([Op::put(KEY, &value[..])]);
                    match store.txn(retried(txn, lost)).await {
                        Ok(resp) if resp.succeeded => {
                            report.latencies.push(start.elapsed());
                            report.most_conflicts = report.most_conflicts.max(lost);
                            break;
                        }
                        Ok(_) => {
                            lost += 1;
                            report.conflicts += 1;
                            // An update still losing at the deadline is dropped, not counted.
                            if budget.expired() {
                                break 'ops;
                            }
                        }
                        Err(e) => {
                            report.error(e);
                            break;
                        }
                    }
                }
            }
            report
        }
    })
    .await
}

/// Tells the store how many times this update has already lost its compare.
fn retried(txn: Txn, lost: u64) -> Txn {
    txn.retry(u32::try_from(lost).unwrap_or(u32::MAX))
}
