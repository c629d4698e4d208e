//! The state store: one interface with etcd's semantics (a monotonic revision, prefix ranges,
//! compare-and-swap transactions, watches that resume from a revision, leases, compaction) and
//! two backends: the embedded SQLite store and an etcd cluster. One conformance suite
//! (`tests/store`) runs against both. It knows nothing of the model: keys are strings, values
//! bytes.
//! It must never reorder or drop a committed event, and never acknowledge a write that a
//! `kill -9` could lose.

#![warn(missing_docs)]

pub mod copy;
mod etcd;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use copy::{COPY_MARKER_KEY, CopyError, CopyLimits, CopyReport, copy_all, copy_with};
pub use etcd::{EtcdStore, EtcdStoreConfig, EtcdTlsConfig};
pub use sqlite::{MAX_LEASE_TTL, SqliteStore, SqliteStoreConfig};

/// A store revision. Starts at 1 for an empty store (as etcd does); every transaction that
/// changes at least one key increments it by exactly one. A transaction whose only writes are
/// deletes of missing keys changes nothing and keeps the revision, as a lease revocation that
/// deletes no key does.
pub type Revision = i64;

/// A lease identifier, never 0.
pub type LeaseId = i64;

/// One key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, never empty; keys order by their UTF-8 bytes.
    pub key: String,
    /// Opaque bytes: the store never looks inside.
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last transaction that wrote it.
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 after the first put.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// What a [`Compare`] looks at. A missing key has version, create and mod revision 0, no
/// lease, and fails every `Value` comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's [`version`](KeyValue::version): writes since its creation.
    Version(i64),
    /// The revision that created the key; equal to 0 means the key does not exist
    /// ([`Compare::absent`]).
    CreateRevision(Revision),
    /// The revision of the key's last write ([`Compare::mod_revision`]).
    ModRevision(Revision),
    /// The key's value, compared byte by byte (lexicographically).
    Value(Vec<u8>),
    /// The key's lease id, 0 for none.
    Lease(LeaseId),
}

/// How a [`Compare`] relates the key's side (on the left) to the value in its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// The key's side equals the target's value.
    Equal,
    /// The key's side differs from it (a missing key still fails a `Value` comparison).
    NotEqual,
    /// The key's side is greater.
    Greater,
    /// The key's side is smaller.
    Less,
}

/// One guard of a transaction: `key.target op value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key looked at; must not be empty, but need not exist.
    pub key: String,
    /// How the key's side must relate to the target's value for the guard to hold.
    pub op: CompareOp,
    /// Which attribute of the key is compared, and the value it is compared with.
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }
    }

    /// The key exists and was last written at `rev`.
    pub fn mod_revision(key: impl Into<String>, rev: Revision) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rev) }
    }

    /// The key exists and holds exactly `value`.
    pub fn value(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::Value(value.into()) }
    }
}

/// One operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write a key: create it, or replace its value whole (its version goes up by one).
    Put {
        /// The key; must not be empty.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The lease to attach the key to; `None` detaches it from any lease it had. A lease that
        /// does not exist fails the whole transaction with [`StoreError::LeaseNotFound`].
        lease: Option<LeaseId>,
    },
    /// Delete one key; deleting a missing key is not an error (it reports 0 deleted).
    Delete {
        /// The key; must not be empty.
        key: String,
    },
    /// Delete every key starting with `prefix`.
    DeletePrefix {
        /// Empty deletes every key.
        prefix: String,
    },
    /// Read one key as the transaction's earlier ops left it.
    Get {
        /// The key; must not be empty.
        key: String,
    },
    /// Every key starting with `prefix`, in key order.
    Range {
        /// Empty covers every key.
        prefix: String,
    },
}

impl Op {
    /// A put of `value` at `key` attached to no lease (so it detaches the key from one it had).
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: None }
    }

    /// A put that attaches the key to `lease`: the key is deleted when the lease ends.
    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: Some(lease) }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// A delete of every key starting with `prefix` (every key, if it is empty).
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix { prefix: prefix.into() }
    }

    /// A read of `key` inside the transaction.
    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }

    /// A read of every key starting with `prefix`, in key order, inside the transaction.
    pub fn range(prefix: impl Into<String>) -> Self {
        Op::Range { prefix: prefix.into() }
    }

    fn is_write(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. } | Op::DeletePrefix { .. })
    }
}

/// The result of one [`Op`], in the same position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// The previous value, if the key existed.
    Put {
        /// The key as it was just before the put; `None` if the put created it.
        prev: Option<KeyValue>,
    },
    /// The deleted keys with their last values.
    Delete {
        /// In key order; empty if no key matched.
        deleted: Vec<KeyValue>,
    },
    /// What an [`Op::Get`] read.
    Get {
        /// The key, or `None` if it does not exist.
        kv: Option<KeyValue>,
    },
    /// What an [`Op::Range`] read.
    Range {
        /// Every key under the prefix, in key order.
        kvs: Vec<KeyValue>,
    },
}

/// `if all(compare) then success else failure`, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The guards, checked in order against the store before any op runs; with none, `success`
    /// runs.
    pub compare: Vec<Compare>,
    /// The ops run, in order, when every guard holds.
    pub success: Vec<Op>,
    /// The ops run, in order, when a guard fails.
    pub failure: Vec<Op>,
    /// How many times the caller already sent this update and lost its compare. A scheduling
    /// hint only: of the transactions waiting for the store at the same time, those that lost
    /// more often run first, so a contended compare-and-swap retried with it wins within a
    /// bounded number of attempts. It never changes what the transaction does, and a backend
    /// without a writer queue may ignore it.
    pub retry: u32,
}

impl Txn {
    /// An empty transaction: no guards and no ops, so it succeeds and changes nothing.
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds guards; all of them must hold for the [`then`](Txn::then) ops to run.
    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compare);
        self
    }

    /// Adds ops to the branch run when every guard holds.
    pub fn then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds ops to the branch run when a guard fails: an [`Op::get`] there reads what beat the
    /// caller without a second round trip.
    pub fn otherwise(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Marks this as the `retry`-th resend of an update whose compare lost (see [`Txn::retry`]).
    pub fn retry(mut self, retry: u32) -> Self {
        self.retry = retry;
        self
    }

    /// Whether the branch that ran can change the store (and so bump the revision).
    pub fn writes(&self, succeeded: bool) -> bool {
        let ops = if succeeded { &self.success } else { &self.failure };
        ops.iter().any(Op::is_write)
    }

    /// Checks what needs no store to check: keys are not empty, lease ids are positive.
    /// Prefixes may be empty (they cover every key).
    pub fn validate(&self) -> Result<(), StoreError> {
        let empty_key = || StoreError::Invalid("key must not be empty".into());
        for compare in &self.compare {
            if compare.key.is_empty() {
                return Err(empty_key());
            }
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                Op::Put { key, lease, .. } => {
                    if key.is_empty() {
                        return Err(empty_key());
                    }
                    if let Some(lease) = *lease
                        && lease <= 0
                    {
                        return Err(StoreError::LeaseNotFound(lease));
                    }
                }
                Op::Delete { key } | Op::Get { key } if key.is_empty() => return Err(empty_key()),
                Op::Delete { .. } | Op::Get { .. } | Op::DeletePrefix { .. } | Op::Range { .. } => {}
            }
        }
        Ok(())
    }
}

/// What a [`Txn`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every guard held, and so whether `success` (true) or `failure` ran.
    pub succeeded: bool,
    /// The store revision after the transaction: the new one if it wrote, else the current.
    pub revision: Revision,
    /// One per op of the branch that ran, in the same order.
    pub responses: Vec<OpResponse>,
}

/// The keys under a prefix, all read from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    /// Every key under the prefix, in key order.
    pub kvs: Vec<KeyValue>,
    /// The store revision the read saw.
    pub revision: Revision,
}

/// What happened to the key of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created, or its value replaced.
    Put,
    /// The key was deleted: by a delete, a prefix delete, or the end of its lease.
    Delete,
}

/// One change to one key. For a put, `kv` is the key as written and `prev` is `None`. For a
/// delete, `kv` carries the key, the deleting revision as its `mod_revision`, an empty value and
/// zero version and create revision; `prev` carries the key as it was just before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Whether the key was written or deleted.
    pub kind: EventKind,
    /// The key after the change (for a delete, the tombstone described above).
    pub kv: KeyValue,
    /// The key just before a delete; always `None` for a put.
    pub prev: Option<KeyValue>,
}

/// All the events of one committed transaction that match a watch, delivered together so that
/// a watcher never sees half a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The transaction's revision; a watch delivers each revision once, in increasing order.
    pub revision: Revision,
    /// The transaction's changes to keys under the watched prefix, in the order it made them;
    /// never empty.
    pub events: Vec<Event>,
}

/// A running watch. Dropping it cancels the watch.
pub type WatchStream = mpsc::Receiver<Result<WatchBatch, WatchError>>;

/// A granted lease: the keys attached to it are deleted, in one revision, when it expires or
/// is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Positive, and never reused by the same store.
    pub id: LeaseId,
    /// How long the lease lives without a keep-alive, as the store keeps it (the SQLite store:
    /// whole milliseconds, at most [`MAX_LEASE_TTL`]; etcd: whole seconds, at least its minimum). Its clock restarts at every keep-alive
    /// and when the store is opened again.
    pub ttl: Duration,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened: missing directory, unreadable or foreign file, a newer
    /// schema, or another process (or handle) already owns it.
    #[error("failed to open state store at {}: {reason}", path.display())]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// What was wrong, in words for the operator.
        reason: String,
    },
    /// The backend failed (for SQLite: an I/O error, a full disk, a damaged file); the message
    /// names the file. A transaction answered with it was not applied: its whole group was
    /// rolled back. The store keeps serving.
    #[error("state store backend failed: {0}")]
    Backend(String),
    /// The lease does not exist: it expired, was revoked, or was never granted (ids below 1
    /// never are). Holds the id.
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// [`Store::compact`] was asked for a revision older than the one already compacted to.
    #[error("revision {requested} has been compacted (oldest kept is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision whose history is still kept.
        compacted: Revision,
    },
    /// [`Store::compact`] was asked for a revision the store has not reached yet.
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's revision when it was asked.
        current: Revision,
    },
    /// The request itself is wrong (an empty key, a lease TTL under 1 ms or over
    /// [`MAX_LEASE_TTL`], a watch from a negative revision, a compaction to one below 1), or the
    /// store was used outside a tokio runtime: the caller's bug, not the store's. Holds what was
    /// wrong.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store was closed ([`Store::close`]) or its writer stopped; no later call succeeds.
    #[error("state store is closed")]
    Closed,
}

/// Why a watch ended; it is the last item of the stream.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// The history the watch needs is gone: its start revision was already compacted, or
    /// compaction overtook a watcher that fell behind. The watcher must read afresh (a range)
    /// and watch again from that read's revision.
    #[error("watch start revision {requested} has been compacted (oldest kept is {compacted})")]
    Compacted {
        /// The revision the watch needed next.
        requested: Revision,
        /// The oldest revision whose history is still kept.
        compacted: Revision,
    },
    /// Reading the history failed, again after retries; holds the backend's error as text.
    #[error("watch failed: {0}")]
    Backend(String),
    /// The store was closed; every event committed before it was delivered first.
    #[error("state store is closed")]
    Closed,
}

/// What a store has been asked since it was opened: the load the layers above put on it, for
/// metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Reads answered: gets, ranges, revision lookups, and the reads of watches catching up.
    pub reads: u64,
    /// Keys those gets and ranges returned.
    pub keys_read: u64,
    /// Transactions submitted.
    pub txns: u64,
}

/// The store interface. Backends: [`SqliteStore`] (embedded default) and [`EtcdStore`] (an etcd
/// cluster), with the same semantics but for what etcd itself refuses (see [`EtcdStore`]).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The revision of the last committed write.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// The key `key` (which must not be empty), or `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key that starts with `prefix`, in key order, with the revision the read saw.
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError>;

    /// Apply a transaction atomically. Returns only once it is durable.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Events for keys starting with `prefix`, from revision `from` (inclusive) on; `from = 0`
    /// means "from the next revision". Fails with [`WatchError::Compacted`] (as the first item)
    /// when `from` is older than the compacted revision.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// A new lease that ends `ttl` after its grant or its last keep-alive; the answer holds the TTL
    /// as the store keeps it.
    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError>;

    /// Refresh a lease to its full TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, StoreError>;

    /// Revoke a lease, deleting every key attached to it in one revision.
    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError>;

    /// Discard history older than `revision`; watches from before it then fail.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The oldest revision whose history is still kept.
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;

    /// Flush and stop; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;

    /// What this store has been asked so far; `None` for a backend that does not count.
    fn stats(&self) -> Option<StoreStats> {
        None
    }
}

/// The end of the key range that `prefix` covers, for `key >= prefix AND key < end` scans over
/// the keys' UTF-8 bytes (which order exactly as Rust strings do). `None` means "to the end of
/// the key space", which is the case for the empty prefix and for prefixes made only of 0xff
/// bytes. Works on bytes because the increment of a UTF-8 string is not always UTF-8.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = prefix.to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return Some(bytes);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
    }

    #[test]
    fn prefix_end_of_empty_prefix_is_unbounded() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn prefix_end_handles_non_ascii() {
        // "é" is C3 A9: the end is C3 AA, not the whole key space as a 7-bit scan would give.
        assert_eq!(prefix_end("é".as_bytes()), Some(vec![0xc3, 0xaa]));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        let end = prefix_end("é".as_bytes()).unwrap_or_default();
        assert!("éa".as_bytes() < end.as_slice());
        assert!("ê".as_bytes() >= end.as_slice());
    }

    #[test]
    fn txn_writes_looks_at_the_branch_that_ran() {
        let txn = Txn::new().then([Op::get("a")]).otherwise([Op::delete("a")]);
        assert!(!txn.writes(true));
        assert!(txn.writes(false));
    }
}
