//! Opening the database file: the ownership lock, the pragmas that make commits durable, the
//! schema, and the state the writer resumes from.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::ops::{self, META_COMPACTED, META_NEXT_LEASE, META_REVISION, META_SCHEMA_VERSION};
use crate::{LeaseId, Revision, StoreError};

/// The schema this build writes and understands.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for SQLite's own locks (a checkpoint, WAL recovery) before
/// failing with "database is locked".
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for every statement the store prepares (about twenty), so none is re-parsed.
const STATEMENT_CACHE: usize = 32;

const SCHEMA: &str = "
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- The current value of every live key.
CREATE TABLE kv (
    key        BLOB PRIMARY KEY,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER
) WITHOUT ROWID;
CREATE INDEX kv_by_lease ON kv (lease) WHERE lease IS NOT NULL;

-- Every event since the compacted revision. A put row holds the key as written; a delete row
-- holds the key as it was just before the delete.
CREATE TABLE history (
    rev        INTEGER NOT NULL,
    sub        INTEGER NOT NULL,
    key        BLOB NOT NULL,
    kind       INTEGER NOT NULL,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER,
    PRIMARY KEY (rev, sub)
) WITHOUT ROWID;

CREATE TABLE leases (
    id     INTEGER PRIMARY KEY,
    ttl_ms INTEGER NOT NULL
);
";

/// An opened store file, ready to hand to the writer thread.
pub(super) struct Opened {
    pub(super) conn: Connection,
    /// Held for as long as the writer lives, so that no second writer opens the same file.
    pub(super) lock: File,
    pub(super) revision: Revision,
    pub(super) compacted: Revision,
    pub(super) next_lease: LeaseId,
    /// Every persisted lease with its TTL in milliseconds.
    pub(super) leases: Vec<(LeaseId, i64)>,
}

fn open_error(path: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Open { path: path.to_owned(), reason: reason.to_string() }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    PathBuf::from(lock)
}

/// Takes the exclusive lock next to the database. The writer keeps its revision counter in
/// memory, so two writers on one file would hand out the same revision twice.
fn take_lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = lock_path(path);
    let lock =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(
            |e| open_error(path, format_args!("cannot open lock file {}: {e}", lock_path.display())),
        )?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => {
            Err(open_error(path, "it is already open (by this or another process)"))
        }
        Err(TryLockError::Error(e)) => {
            Err(open_error(path, format_args!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

/// Opens (creating if needed) the store at `path` for writing.
pub(super) fn open_writer(path: &Path) -> Result<Opened, StoreError> {
    let lock = take_lock(path)?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(path, e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);

    // WAL lets readers run beside the writer; FULL syncs the WAL on every commit, so that an
    // acknowledged transaction survives a crash, not only a process kill.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_error(path, format_args!("cannot switch to WAL mode (journal mode is {mode})")));
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(|e| open_error(path, e))?;

    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| open_error(path, e))?;
    let has_meta: bool = tx
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| n > 0)
        .map_err(|e| open_error(path, e))?;
    if has_meta {
        let version = ops::meta_get(&tx, META_SCHEMA_VERSION).map_err(|e| open_error(path, e))?;
        match version {
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(open_error(
                    path,
                    format_args!("unsupported schema version {other} (this build reads {SCHEMA_VERSION})"),
                ));
            }
            None => return Err(open_error(path, "not a state store (no schema version)")),
        }
    } else {
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(|e| open_error(path, e))?;
        if tables > 0 {
            return Err(open_error(path, "not a state store (foreign tables, no meta table)"));
        }
        tx.execute_batch(SCHEMA).map_err(|e| open_error(path, e))?;
        for (name, value) in [
            (META_SCHEMA_VERSION, SCHEMA_VERSION),
            (META_REVISION, 1),
            (META_COMPACTED, 1),
            (META_NEXT_LEASE, 1),
        ] {
            ops::meta_set(&tx, name, value).map_err(|e| open_error(path, e))?;
        }
        tracing::info!(path = %path.display(), "created state store");
    }
    let revision = ops::current_revision(&tx).map_err(|e| open_error(path, e))?;
    let compacted = ops::compacted_revision(&tx).map_err(|e| open_error(path, e))?;
    let next_lease = ops::meta_get(&tx, META_NEXT_LEASE)
        .map_err(|e| open_error(path, e))?
        .ok_or_else(|| open_error(path, "meta row next_lease is missing"))?;
    let leases = ops::all_leases(&tx).map_err(|e| open_error(path, e))?;
    tx.commit().map_err(|e| open_error(path, e))?;
    Ok(Opened { conn, lock, revision, compacted, next_lease, leases })
}

/// Opens a connection for the read pool; the writer has already created the file and the schema.
pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // A reader has no business writing; this turns a bug into an error instead of a second
    // writer racing the writer thread.
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_connection_is_wal_and_fully_synchronous() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db");
        let opened = open_writer(&path).expect("open");
        let mode: String =
            opened.conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).expect("journal_mode");
        assert_eq!(mode, "wal");
        // 2 is FULL: the WAL is synced on every commit.
        let synchronous: i64 =
            opened.conn.pragma_query_value(None, "synchronous", |row| row.get(0)).expect("synchronous");
        assert_eq!(synchronous, 2);
        assert_eq!((opened.revision, opened.compacted, opened.next_lease), (1, 1, 1));
        let version = ops::meta_get(&opened.conn, META_SCHEMA_VERSION).expect("meta");
        assert_eq!(version, Some(SCHEMA_VERSION));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db");
        {
            let opened = open_writer(&path).expect("open");
            ops::meta_set(&opened.conn, META_SCHEMA_VERSION, SCHEMA_VERSION + 1).expect("meta");
        }
        let err = open_writer(&path).err().expect("newer schema refused");
        assert!(err.to_string().contains("unsupported schema version 2"), "{err}");
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db");
        let _writer = open_writer(&path).expect("open");
        let reader = open_reader(&path).expect("reader");
        assert!(ops::meta_set(&reader, META_REVISION, 99).is_err());
    }
}
