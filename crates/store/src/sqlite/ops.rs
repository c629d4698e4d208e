//! The SQL of the store over one connection, shared by the writer thread (inside its
//! transaction and savepoints) and the readers (inside one read transaction each).
//!
//! Keys are bound and stored as BLOBs of their UTF-8 bytes, never as TEXT: SQLite orders BLOBs
//! with `memcmp`, which is Rust's string order, and a prefix's range end (see
//! [`prefix_end`](crate::prefix_end)) need not be valid UTF-8.

use std::cmp::Ordering;
use std::path::Path;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, LeaseId, Op, OpResponse, Revision,
    StoreError, Txn, WatchBatch, prefix_end,
};

/// Names of the rows of the `meta` table.
pub(super) const META_SCHEMA_VERSION: &str = "schema_version";
pub(super) const META_REVISION: &str = "revision";
pub(super) const META_COMPACTED: &str = "compacted";
pub(super) const META_NEXT_LEASE: &str = "next_lease";

const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

/// Why one command failed inside the writer's transaction: either the request itself was
/// refused (it goes back to its caller as is) or SQLite failed.
#[derive(Debug)]
pub(super) enum ExecError {
    Store(StoreError),
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for ExecError {
    fn from(e: rusqlite::Error) -> Self {
        ExecError::Db(e)
    }
}

impl From<StoreError> for ExecError {
    fn from(e: StoreError) -> Self {
        ExecError::Store(e)
    }
}

impl ExecError {
    pub(super) fn into_store(self, path: &Path) -> StoreError {
        match self {
            ExecError::Store(e) => e,
            ExecError::Db(e) => backend(path, "failed to write", &e),
        }
    }
}

/// A backend error that names the database file, e.g.
/// "failed to write /var/lib/enjin/state.db: disk I/O error".
pub(super) fn backend(path: &Path, doing: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{doing} {}: {e}", path.display()))
}

fn kv_at(row: &Row<'_>, first: usize) -> rusqlite::Result<KeyValue> {
    let key: Vec<u8> = row.get(first)?;
    let key = String::from_utf8(key)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(first, Type::Blob, Box::new(e)))?;
    Ok(KeyValue {
        key,
        value: row.get(first + 1)?,
        create_revision: row.get(first + 2)?,
        mod_revision: row.get(first + 3)?,
        version: row.get(first + 4)?,
        lease: row.get(first + 5)?,
    })
}

pub(super) fn meta_get(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()
}

pub(super) fn meta_set(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

fn meta_required(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    meta_get(conn, name)?
        .ok_or_else(|| rusqlite::Error::InvalidColumnName(format!("meta row {name} is missing")))
}

pub(super) fn current_revision(conn: &Connection) -> rusqlite::Result<Revision> {
    meta_required(conn, META_REVISION)
}

pub(super) fn compacted_revision(conn: &Connection) -> rusqlite::Result<Revision> {
    meta_required(conn, META_COMPACTED)
}

pub(super) fn get_kv(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    conn.prepare_cached("SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key = ?1")?
        .query_row([key.as_bytes()], |row| kv_at(row, 0))
        .optional()
}

pub(super) fn range_kvs(conn: &Connection, prefix: &str) -> rusqlite::Result<Vec<KeyValue>> {
    let start = prefix.as_bytes();
    match prefix_end(start) {
        Some(end) => conn
            .prepare_cached(
                "SELECT key, value, create_rev, mod_rev, version, lease FROM kv
                 WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )?
            .query_map(params![start, end], |row| kv_at(row, 0))?
            .collect(),
        None => conn
            .prepare_cached(
                "SELECT key, value, create_rev, mod_rev, version, lease FROM kv
                 WHERE key >= ?1 ORDER BY key",
            )?
            .query_map([start], |row| kv_at(row, 0))?
            .collect(),
    }
}

/// The TTL of a lease in milliseconds, `None` if it does not exist.
pub(super) fn lease_ttl_ms(conn: &Connection, id: LeaseId) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT ttl_ms FROM leases WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()
}

pub(super) fn insert_lease(conn: &Connection, id: LeaseId, ttl_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO leases (id, ttl_ms) VALUES (?1, ?2)")?.execute(params![id, ttl_ms])?;
    Ok(())
}

pub(super) fn delete_lease(conn: &Connection, id: LeaseId) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM leases WHERE id = ?1")?.execute([id])?;
    Ok(())
}

/// Every lease with its TTL in milliseconds.
pub(super) fn all_leases(conn: &Connection) -> rusqlite::Result<Vec<(LeaseId, i64)>> {
    conn.prepare_cached("SELECT id, ttl_ms FROM leases ORDER BY id")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect()
}

/// Drops the history of every revision below `revision`.
pub(super) fn compact_history(conn: &Connection, revision: Revision) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM history WHERE rev < ?1")?.execute([revision])?;
    Ok(())
}

/// Whether `compare` holds for `kv` (`None` for a missing key), with etcd's rules: a missing key
/// has version, create and mod revision 0 and lease 0, and fails every value comparison.
pub(super) fn compare_holds(kv: Option<&KeyValue>, compare: &Compare) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Version(v) => kv.map_or(0, |kv| kv.version).cmp(v),
        CompareTarget::CreateRevision(r) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
        CompareTarget::ModRevision(r) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
        CompareTarget::Lease(l) => kv.and_then(|kv| kv.lease).unwrap_or(0).cmp(l),
        CompareTarget::Value(v) => match kv {
            Some(kv) => kv.value.as_slice().cmp(v.as_slice()),
            None => return false,
        },
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Greater => ordering == Ordering::Greater,
        CompareOp::Less => ordering == Ordering::Less,
    }
}

/// The writes of one transaction at one candidate revision. The revision is only consumed if
/// at least one event was recorded ([`WriteCtx::changed`]); otherwise nothing was written under
/// it and the writer hands it to the next transaction.
pub(super) struct WriteCtx<'c> {
    conn: &'c Connection,
    rev: Revision,
    sub: i64,
}

impl<'c> WriteCtx<'c> {
    pub(super) fn new(conn: &'c Connection, rev: Revision) -> Self {
        WriteCtx { conn, rev, sub: 0 }
    }

    pub(super) fn changed(&self) -> bool {
        self.sub > 0
    }

    fn record(&mut self, kind: i64, kv: &KeyValue) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO history
                 (rev, sub, key, kind, value, create_rev, mod_rev, version, lease)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                self.rev,
                self.sub,
                kv.key.as_bytes(),
                kind,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
            ])?;
        self.sub += 1;
        Ok(())
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<KeyValue>, ExecError> {
        if let Some(lease) = lease
            && lease_ttl_ms(self.conn, lease)?.is_none()
        {
            return Err(StoreError::LeaseNotFound(lease).into());
        }
        let prev = get_kv(self.conn, key)?;
        let (create_revision, version) = match &prev {
            Some(prev) => (prev.create_revision, prev.version + 1),
            None => (self.rev, 1),
        };
        let kv = KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision,
            mod_revision: self.rev,
            version,
            lease,
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO kv (key, value, create_rev, mod_rev, version, lease)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                kv.key.as_bytes(),
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
            ])?;
        self.record(KIND_PUT, &kv)?;
        Ok(prev)
    }

    /// Deletes the given keys (already read, in key order), recording one event each.
    fn delete_kvs(&mut self, kvs: &[KeyValue]) -> rusqlite::Result<()> {
        for kv in kvs {
            self.conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?.execute([kv.key.as_bytes()])?;
            self.record(KIND_DELETE, kv)?;
        }
        Ok(())
    }

    pub(super) fn delete(&mut self, key: &str) -> rusqlite::Result<Vec<KeyValue>> {
        let deleted: Vec<KeyValue> = get_kv(self.conn, key)?.into_iter().collect();
        self.delete_kvs(&deleted)?;
        Ok(deleted)
    }

    pub(super) fn delete_prefix(&mut self, prefix: &str) -> rusqlite::Result<Vec<KeyValue>> {
        let deleted = range_kvs(self.conn, prefix)?;
        self.delete_kvs(&deleted)?;
        Ok(deleted)
    }

    /// Deletes every key attached to `lease`.
    pub(super) fn delete_lease_keys(&mut self, lease: LeaseId) -> rusqlite::Result<Vec<KeyValue>> {
        let deleted = self
            .conn
            .prepare_cached(
                "SELECT key, value, create_rev, mod_rev, version, lease FROM kv
                 WHERE lease = ?1 ORDER BY key",
            )?
            .query_map([lease], |row| kv_at(row, 0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.delete_kvs(&deleted)?;
        Ok(deleted)
    }
}

/// What a transaction did at its candidate revision.
pub(super) struct TxnOutcome {
    pub(super) succeeded: bool,
    pub(super) responses: Vec<OpResponse>,
    /// Whether it changed at least one key, and so consumed the candidate revision.
    pub(super) changed: bool,
}

/// Runs `txn` at candidate revision `rev`; the caller wraps it in a savepoint so that an error
/// leaves nothing behind.
pub(super) fn exec_txn(conn: &Connection, txn: &Txn, rev: Revision) -> Result<TxnOutcome, ExecError> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let kv = get_kv(conn, &compare.key)?;
        if !compare_holds(kv.as_ref(), compare) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut ctx = WriteCtx::new(conn, rev);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op {
            Op::Put { key, value, lease } => OpResponse::Put { prev: ctx.put(key, value, *lease)? },
            Op::Delete { key } => OpResponse::Delete { deleted: ctx.delete(key)? },
            Op::DeletePrefix { prefix } => OpResponse::Delete { deleted: ctx.delete_prefix(prefix)? },
            Op::Get { key } => OpResponse::Get { kv: get_kv(conn, key)? },
            Op::Range { prefix } => OpResponse::Range { kvs: range_kvs(conn, prefix)? },
        };
        responses.push(response);
    }
    Ok(TxnOutcome { succeeded, responses, changed: ctx.changed() })
}

/// One read of the history for a watch, from one snapshot.
#[derive(Debug)]
pub(super) enum HistoryRead {
    /// The watch needs revision `requested`, but history before `compacted` is gone.
    Compacted { requested: Revision, compacted: Revision },
    /// Whole transactions, in revision order, and the revision to read from next.
    Batches {
        batches: Vec<WatchBatch>,
        next: Revision,
        /// Whether the read stopped at its row limit, so that more history may already be
        /// there to read without waiting.
        more: bool,
    },
}

fn event_at(row: &Row<'_>) -> rusqlite::Result<(Revision, Event)> {
    let rev: Revision = row.get(0)?;
    let kind: i64 = row.get(1)?;
    let kv = kv_at(row, 2)?;
    let event = match kind {
        KIND_PUT => Event { kind: EventKind::Put, kv, prev: None },
        KIND_DELETE => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: kv.key.clone(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: None,
            },
            prev: Some(kv),
        },
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                1,
                Type::Integer,
                format!("unknown history event kind {other}").into(),
            ));
        }
    };
    Ok((rev, event))
}

fn group(rows: Vec<(Revision, Event)>) -> Vec<WatchBatch> {
    let mut batches: Vec<WatchBatch> = Vec::new();
    for (rev, event) in rows {
        match batches.last_mut() {
            Some(batch) if batch.revision == rev => batch.events.push(event),
            _ => batches.push(WatchBatch { revision: rev, events: vec![event] }),
        }
    }
    batches
}

const HISTORY_COLUMNS: &str = "rev, kind, key, value, create_rev, mod_rev, version, lease";

/// Reads up to about `limit` history rows for keys under `prefix` from revision `from` on.
/// Must run inside one read transaction: the compaction check, the rows and the store revision
/// then all come from the same snapshot, so a revision is either wholly there or not at all.
pub(super) fn read_history(
    conn: &Connection,
    prefix: &str,
    from: Revision,
    limit: usize,
) -> rusqlite::Result<HistoryRead> {
    let compacted = compacted_revision(conn)?;
    if from < compacted {
        return Ok(HistoryRead::Compacted { requested: from, compacted });
    }
    let current = current_revision(conn)?;
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let start = prefix.as_bytes();
    let end = prefix_end(start);
    let key_filter = if end.is_some() { "key >= ?2 AND key < ?3" } else { "key >= ?2 AND ?3 IS NULL" };

    let sql = format!(
        "SELECT {HISTORY_COLUMNS}, sub FROM history WHERE rev >= ?1 AND {key_filter}
         ORDER BY rev, sub LIMIT ?4"
    );
    let mut rows: Vec<(Revision, i64, Event)> = conn
        .prepare_cached(&sql)?
        .query_map(params![from, start, end, limit], |row| {
            let (rev, event) = event_at(row)?;
            Ok((rev, row.get(8)?, event))
        })?
        .collect::<rusqlite::Result<_>>()?;

    let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
    let Some(&(last_rev, last_sub, _)) = rows.last() else {
        return Ok(HistoryRead::Batches { batches: Vec::new(), next: from.max(current + 1), more: false });
    };
    if !full {
        let rows = rows.into_iter().map(|(rev, _, event)| (rev, event)).collect();
        return Ok(HistoryRead::Batches { batches: group(rows), next: from.max(current + 1), more: false });
    }

    // The limit may have cut the last revision short: never deliver half a transaction.
    let first_rev = rows[0].0;
    if first_rev != last_rev {
        rows.retain(|(rev, _, _)| *rev != last_rev);
        let rows = rows.into_iter().map(|(rev, _, event)| (rev, event)).collect();
        return Ok(HistoryRead::Batches { batches: group(rows), next: last_rev, more: true });
    }
    // One transaction larger than the limit: read the rest of it whole.
    let sql = format!(
        "SELECT {HISTORY_COLUMNS} FROM history WHERE rev = ?1 AND sub > ?4 AND {key_filter}
         ORDER BY sub"
    );
    let rest: Vec<(Revision, Event)> = conn
        .prepare_cached(&sql)?
        .query_map(params![last_rev, start, end, last_sub], event_at)?
        .collect::<rusqlite::Result<_>>()?;
    let rows = rows.into_iter().map(|(rev, _, event)| (rev, event)).chain(rest).collect();
    Ok(HistoryRead::Batches { batches: group(rows), next: last_rev + 1, more: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &[u8]) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: value.to_vec(),
            create_revision: 2,
            mod_revision: 4,
            version: 3,
            lease: Some(7),
        }
    }

    fn cmp(op: CompareOp, target: CompareTarget) -> Compare {
        Compare { key: "k".into(), op, target }
    }

    #[test]
    fn compare_on_present_key() {
        let kv = kv(b"b");
        let holds = |op, target| compare_holds(Some(&kv), &cmp(op, target));
        assert!(holds(CompareOp::Equal, CompareTarget::Version(3)));
        assert!(holds(CompareOp::Greater, CompareTarget::Version(2)));
        assert!(holds(CompareOp::Less, CompareTarget::CreateRevision(3)));
        assert!(holds(CompareOp::NotEqual, CompareTarget::ModRevision(3)));
        assert!(!holds(CompareOp::Equal, CompareTarget::ModRevision(3)));
        assert!(holds(CompareOp::Equal, CompareTarget::Lease(7)));
        assert!(holds(CompareOp::Greater, CompareTarget::Value(b"a".to_vec())));
        assert!(holds(CompareOp::Less, CompareTarget::Value(b"ba".to_vec())));
        assert!(!holds(CompareOp::NotEqual, CompareTarget::Value(b"b".to_vec())));
    }

    #[test]
    fn missing_key_is_zero_and_fails_value_compares() {
        let holds = |op, target| compare_holds(None, &cmp(op, target));
        assert!(holds(CompareOp::Equal, CompareTarget::Version(0)));
        assert!(holds(CompareOp::Equal, CompareTarget::CreateRevision(0)));
        assert!(holds(CompareOp::Less, CompareTarget::ModRevision(1)));
        assert!(holds(CompareOp::Equal, CompareTarget::Lease(0)));
        for op in [CompareOp::Equal, CompareOp::NotEqual, CompareOp::Greater, CompareOp::Less] {
            assert!(!holds(op, CompareTarget::Value(Vec::new())));
        }
    }
}
