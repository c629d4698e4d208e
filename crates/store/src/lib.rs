//! The state store: one interface with etcd's semantics (a monotonic revision, prefix ranges,
//! compare-and-swap transactions, watches that resume from a revision, leases, compaction) and
//! its embedded SQLite backend. It knows nothing of the model: keys are strings, values bytes.
//! It must never reorder or drop a committed event, and never acknowledge a write that a
//! `kill -9` could lose.

mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

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
    pub key: String,
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
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(Vec<u8>),
    /// The key's lease id, 0 for none.
    Lease(LeaseId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One guard of a transaction: `key.target op value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
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
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Delete one key; deleting a missing key is not an error (it reports 0 deleted).
    Delete {
        key: String,
    },
    /// Delete every key starting with `prefix`.
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    /// Every key starting with `prefix`, in key order.
    Range {
        prefix: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: None }
    }

    /// A put that attaches the key to `lease`: the key is deleted when the lease ends.
    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        Op::Put { key: key.into(), value: value.into(), lease: Some(lease) }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix { prefix: prefix.into() }
    }

    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }

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
        prev: Option<KeyValue>,
    },
    /// The deleted keys with their last values.
    Delete {
        deleted: Vec<KeyValue>,
    },
    Get {
        kv: Option<KeyValue>,
    },
    Range {
        kvs: Vec<KeyValue>,
    },
}

/// `if all(compare) then success else failure`, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
    /// How many times the caller already sent this update and lost its compare. A scheduling
    /// hint only: of the transactions waiting for the store at the same time, those that lost
    /// more often run first, so a contended compare-and-swap retried with it wins within a
    /// bounded number of attempts. It never changes what the transaction does, and a backend
    /// without a writer queue may ignore it.
    pub retry: u32,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compare);
        self
    }

    pub fn then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store revision after the transaction: the new one if it wrote, else the current.
    pub revision: Revision,
    pub responses: Vec<OpResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The store revision the read saw.
    pub revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key. For a put, `kv` is the key as written and `prev` is `None`. For a
/// delete, `kv` carries the key, the deleting revision as its `mod_revision`, an empty value and
/// zero version and create revision; `prev` carries the key as it was just before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

/// All the events of one committed transaction that match a watch, delivered together so that
/// a watcher never sees half a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// A running watch. Dropping it cancels the watch.
pub type WatchStream = mpsc::Receiver<Result<WatchBatch, WatchError>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened: missing directory, unreadable or foreign file, a newer
    /// schema, or another process (or handle) already owns it.
    #[error("failed to open state store at {}: {reason}", path.display())]
    Open { path: std::path::PathBuf, reason: String },
    #[error("state store backend failed: {0}")]
    Backend(String),
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("revision {requested} has been compacted (oldest kept is {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("state store is closed")]
    Closed,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("watch start revision {requested} has been compacted (oldest kept is {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("watch failed: {0}")]
    Backend(String),
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

/// The store interface. Backends: [`SqliteStore`] (embedded default); an etcd backend drops in
/// behind the same trait.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The revision of the last committed write.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key that starts with `prefix`, in key order, with the revision the read saw.
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError>;

    /// Apply a transaction atomically. Returns only once it is durable.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Events for keys starting with `prefix`, from revision `from` (inclusive) on; `from = 0`
    /// means "from the next revision". Fails with [`WatchError::Compacted`] (as the first item)
    /// when `from` is older than the compacted revision.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

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
