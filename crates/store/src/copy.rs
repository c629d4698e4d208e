//! Copying a whole store into an empty one (`enjin store copy`: SQLite to etcd), checked by
//! revision and count.
//!
//! What "checked by revision" means: revisions are not carried over. The target counts its own
//! transactions, so the copied keys get the target's create and mod revisions and versions
//! start again at 1. Instead the copy is pinned to one source revision `R`:
//!
//! 1. Every key is read in one range, a consistent snapshot at `R`.
//! 2. The target must be empty; every batch also guards each of its keys with "absent", so
//!    nothing already there is ever overwritten, and nothing in the target is deleted.
//! 3. The keys are written in batches within etcd's defaults: at most [`CopyLimits::max_ops`]
//!    puts per transaction and at most [`CopyLimits::max_request_bytes`] of keys and values. A
//!    key whose key and value alone exceed that is refused, naming it, before anything is written.
//! 4. The target is read back: exactly the copied keys, each value byte-equal.
//! 5. The source must still be at `R`, else the copy is refused as stale (the cloud was not
//!    stopped).
//! 6. Only then [`COPY_MARKER_KEY`] is written, holding `R`, the key count and the bytes: its
//!    presence in a target means a complete, verified copy of the source at `R`.
//!
//! Keys attached to a lease are left out: they are transient (a leader's key, gone when its
//! holder stops), and a lease cannot be carried to another store. A marker the source itself
//! holds (a store that was itself copied) is left out too: the target gets its own.
//!
//! It never deletes or overwrites a key of the target; a copy that fails part way leaves what
//! it wrote, without the marker.

use std::time::{Duration, Instant};

use tracing::info;

use crate::{Compare, KeyValue, Op, Revision, Store, StoreError, Txn};

/// The key a finished copy writes last in the target: `{"source_revision":R,"keys":N,"bytes":B}`.
pub const COPY_MARKER_KEY: &str = "/meta/copied-from";

/// How big one transaction of the copy may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyLimits {
    /// The most keys written by one transaction (etcd's `--max-txn-ops`, 128 by default; each
    /// put comes with one compare, which etcd counts apart).
    pub max_ops: usize,
    /// The most bytes of keys and values (each key counted twice, in its compare and its put,
    /// plus [`OP_OVERHEAD`] per key) in one transaction; etcd's `--max-request-bytes` is 1.5 MiB
    /// by default, and this leaves room for the request's own framing.
    pub max_request_bytes: usize,
}

/// What one put and its compare cost in a request beyond their key and value bytes, counted
/// generously (protobuf tags and lengths).
pub const OP_OVERHEAD: usize = 32;

impl CopyLimits {
    /// Within an etcd cluster's default limits: 128 operations, 1 MiB of the 1.5 MiB request.
    pub const ETCD_DEFAULTS: CopyLimits = CopyLimits { max_ops: 128, max_request_bytes: 1 << 20 };
}

impl Default for CopyLimits {
    fn default() -> Self {
        Self::ETCD_DEFAULTS
    }
}

/// What a finished copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// The source revision copied; the source was still at it when the copy ended.
    pub source_revision: Revision,
    /// Keys copied (the marker not counted).
    pub keys: usize,
    /// Bytes of those keys and values.
    pub bytes: u64,
    /// Transactions the keys took.
    pub batches: usize,
    /// Keys left out because they were attached to a lease.
    pub leased: Vec<String>,
    /// The target's revision after the marker was written.
    pub target_revision: Revision,
    /// How long the whole copy took, verification included.
    pub elapsed: Duration,
}

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target holds keys; nothing was written.
    #[error(
        "the target store is not empty: it holds {count} keys, among them {}{}",
        first.join(", "),
        marker.as_ref().map(|m| format!("; it holds a finished copy ({COPY_MARKER_KEY} = {m})")).unwrap_or_default()
    )]
    TargetNotEmpty {
        /// How many keys it holds.
        count: usize,
        /// The first few, in key order.
        first: Vec<String>,
        /// The value of [`COPY_MARKER_KEY`], if the target holds one.
        marker: Option<String>,
    },
    /// One key with its value is larger than one request may carry; nothing was written.
    #[error("key {key} is {size} bytes with its value, more than one transaction may carry ({limit} bytes)")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size as counted against the limit.
        size: usize,
        /// [`CopyLimits::max_request_bytes`].
        limit: usize,
    },
    /// A key appeared in the target while the copy ran (someone else writes to it).
    #[error(
        "key {key} appeared in the target while copying: something else writes to it; the target \
         holds a partial copy without {COPY_MARKER_KEY}"
    )]
    TargetChanged {
        /// The first key of the batch whose guard failed.
        key: String,
    },
    /// The source moved on during the copy: what was copied is stale.
    #[error(
        "the source changed during the copy: revision {copied} was copied but it is now at {now}; \
         stop the cloud, empty the target (it holds a stale copy without {COPY_MARKER_KEY}) and copy again"
    )]
    SourceChanged {
        /// The revision copied.
        copied: Revision,
        /// The source's revision at the end.
        now: Revision,
    },
    /// Reading the target back did not give the source's keys and values.
    #[error("the copy does not match the source: {0}")]
    Mismatch(String),
    /// The source failed.
    #[error("failed to read the source store")]
    Source(#[source] StoreError),
    /// The target failed.
    #[error("failed to write the target store")]
    Target(#[source] StoreError),
}

/// Copies every key of `from` into the empty store `to` within etcd's default limits; see
/// the module's documentation.
pub async fn copy_all(from: &dyn Store, to: &dyn Store) -> Result<CopyReport, CopyError> {
    copy_with(from, to, CopyLimits::ETCD_DEFAULTS).await
}

/// [`copy_all`] within `limits`.
pub async fn copy_with(
    from: &dyn Store,
    to: &dyn Store,
    limits: CopyLimits,
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    let snapshot = from.range("").await.map_err(CopyError::Source)?;
    let source_revision = snapshot.revision;
    let (leased, kvs): (Vec<KeyValue>, Vec<KeyValue>) =
        snapshot.kvs.into_iter().filter(|kv| kv.key != COPY_MARKER_KEY).partition(|kv| kv.lease.is_some());
    let leased: Vec<String> = leased.into_iter().map(|kv| kv.key).collect();

    let present = to.range("").await.map_err(CopyError::Target)?;
    if !present.kvs.is_empty() {
        return Err(CopyError::TargetNotEmpty {
            count: present.kvs.len(),
            first: present.kvs.iter().take(5).map(|kv| kv.key.clone()).collect(),
            marker: present
                .kvs
                .iter()
                .find(|kv| kv.key == COPY_MARKER_KEY)
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        });
    }

    let batches = plan(&kvs, limits)?;
    let bytes: u64 = kvs.iter().map(|kv| (kv.key.len() + kv.value.len()) as u64).sum();
    info!(
        source_revision,
        keys = kvs.len(),
        bytes,
        batches = batches.len(),
        leased = leased.len(),
        "copying the store"
    );
    for batch in &batches {
        let batch = &kvs[batch.clone()];
        let txn = Txn::new()
            .when(batch.iter().map(|kv| Compare::absent(kv.key.clone())))
            .then(batch.iter().map(|kv| Op::put(kv.key.clone(), kv.value.clone())));
        let response = to.txn(txn).await.map_err(CopyError::Target)?;
        if !response.succeeded {
            return Err(CopyError::TargetChanged { key: batch[0].key.clone() });
        }
    }

    verify(&kvs, &to.range("").await.map_err(CopyError::Target)?.kvs)?;

    let now = from.current_revision().await.map_err(CopyError::Source)?;
    if now != source_revision {
        return Err(CopyError::SourceChanged { copied: source_revision, now });
    }

    let marker = format!(r#"{{"source_revision":{source_revision},"keys":{},"bytes":{bytes}}}"#, kvs.len());
    let response = to
        .txn(Txn::new().when([Compare::absent(COPY_MARKER_KEY)]).then([Op::put(COPY_MARKER_KEY, marker)]))
        .await
        .map_err(CopyError::Target)?;
    if !response.succeeded {
        return Err(CopyError::TargetChanged { key: COPY_MARKER_KEY.into() });
    }
    Ok(CopyReport {
        source_revision,
        keys: kvs.len(),
        bytes,
        batches: batches.len(),
        leased,
        target_revision: response.revision,
        elapsed: started.elapsed(),
    })
}

/// Cuts `kvs` into consecutive runs that each fit in one transaction.
fn plan(kvs: &[KeyValue], limits: CopyLimits) -> Result<Vec<std::ops::Range<usize>>, CopyError> {
    let max_ops = limits.max_ops.max(1);
    let mut batches = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, kv) in kvs.iter().enumerate() {
        let cost = 2 * kv.key.len() + kv.value.len() + OP_OVERHEAD;
        if cost > limits.max_request_bytes {
            return Err(CopyError::TooLarge {
                key: kv.key.clone(),
                size: cost,
                limit: limits.max_request_bytes,
            });
        }
        if i > start && (i - start == max_ops || size + cost > limits.max_request_bytes) {
            batches.push(start..i);
            (start, size) = (i, 0);
        }
        size += cost;
    }
    if start < kvs.len() {
        batches.push(start..kvs.len());
    }
    Ok(batches)
}

/// The target, read back, holds exactly `copied` (both in key order), values byte-equal.
fn verify(copied: &[KeyValue], target: &[KeyValue]) -> Result<(), CopyError> {
    if copied.len() != target.len() {
        return Err(CopyError::Mismatch(format!(
            "{} keys were copied but the target holds {}",
            copied.len(),
            target.len()
        )));
    }
    for (want, got) in copied.iter().zip(target) {
        if want.key != got.key {
            return Err(CopyError::Mismatch(format!(
                "the target holds {} where {} was copied",
                got.key, want.key
            )));
        }
        if want.value != got.value {
            return Err(CopyError::Mismatch(format!(
                "the value of {} differs ({} bytes copied, {} read back)",
                want.key,
                want.value.len(),
                got.value.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, len: usize) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: vec![7; len],
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn batches_stop_at_the_op_limit() {
        let kvs: Vec<KeyValue> = (0..300).map(|i| kv(&format!("/k/{i:04}"), 1)).collect();
        let batches = plan(&kvs, CopyLimits::ETCD_DEFAULTS).expect("plan");
        assert_eq!(batches, [0..128, 128..256, 256..300]);
    }

    #[test]
    fn batches_stop_at_the_byte_limit() {
        let limits = CopyLimits { max_ops: 128, max_request_bytes: 1000 };
        // Each costs 2 * 2 + 400 + overhead = 436: two fit, a third does not.
        let kvs: Vec<KeyValue> = (0..5).map(|i| kv(&format!("k{i}"), 400)).collect();
        let batches = plan(&kvs, limits).expect("plan");
        assert_eq!(batches, [0..2, 2..4, 4..5]);
        for batch in batches {
            let size: usize =
                kvs[batch].iter().map(|kv| 2 * kv.key.len() + kv.value.len() + OP_OVERHEAD).sum();
            assert!(size <= limits.max_request_bytes);
        }
    }

    #[test]
    fn a_key_larger_than_a_request_is_named() {
        let limits = CopyLimits { max_ops: 128, max_request_bytes: 1000 };
        let kvs = [kv("small", 10), kv("/huge", 1000), kv("after", 10)];
        match plan(&kvs, limits) {
            Err(CopyError::TooLarge { key, .. }) => assert_eq!(key, "/huge"),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn verify_finds_a_missing_an_extra_and_a_changed_key() {
        let copied = [kv("a", 1), kv("b", 1)];
        assert!(verify(&copied, &copied).is_ok());
        assert!(verify(&copied, &copied[..1]).is_err());
        assert!(verify(&copied, &[kv("a", 1), kv("c", 1)]).is_err());
        assert!(verify(&copied, &[kv("a", 1), kv("b", 2)]).is_err());
    }
}
