//! The etcd backend: the [`Store`] semantics over an etcd v3 cluster. Transactions, compares,
//! revisions, prefix ranges and leases map onto etcd's own; the differences are bridged here:
//!
//! - **Compaction.** etcd's compaction at `C` drops the delete events of revision `C` itself,
//!   while the SQLite store keeps the whole history from its compacted revision on. So
//!   [`Store::compact`] to `r` compacts etcd to `r - 1`, and the compacted revision reported is
//!   etcd's plus one (1 on a store never compacted). etcd does not report its compacted
//!   revision: it is found by reading at old revisions, starting from the last one found.
//! - **Watches from "now".** A watch from 0 starts after the revision read when it is asked
//!   for, not when etcd gets round to creating it, so a write acknowledged before the call is
//!   never seen and one made after it never missed.
//! - **Closing.** Every watch delivers what was committed up to the revision at
//!   [`Store::close`], then ends with [`WatchError::Closed`]; a watch whose prefix was quiet
//!   reads the rest of that history on every key, where each revision has an event.
//! - **Leases** live in whole seconds, and etcd raises a TTL below its minimum (about three
//!   election timeouts); the answer to a grant says what was granted. Keys of a lease are
//!   deleted by etcd's lessor, which looks for expired leases twice a second, one revision per
//!   lease (the SQLite store ends the leases due together in one revision).
//! - **Fairness.** [`Txn::retry`] is a hint for the SQLite store's writer queue; etcd has none,
//!   so it is ignored, as the trait allows.
//!
//! What etcd refuses, this backend refuses too, as [`StoreError::Invalid`]: a branch of a
//! transaction that writes one key twice (two puts, or a put inside a range the branch
//! deletes), and a transaction with more operations than the cluster's `--max-txn-ops`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client as etcd;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::sqlite::{validate_lease_id, validate_ttl};
use crate::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, Lease, LeaseId, Op, OpResponse,
    RangeResponse, Revision, Store, StoreError, Txn, TxnResponse, WatchBatch, WatchError, WatchStream,
    prefix_end,
};

/// Client certificates for etcd's client port, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTlsConfig {
    /// The CA that signed the etcd servers' certificates.
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain.
    pub cert_pem: Vec<u8>,
    /// This client's private key.
    pub key_pem: Vec<u8>,
    /// The name the servers' certificates must carry; by default the endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for EtcdTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("EtcdTlsConfig").field("domain", &self.domain).finish_non_exhaustive()
    }
}

/// The pause before a request that reached no working member goes again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Whether an error proves the request was not applied: no connection to the member, or the
/// member refused it for want of a leader (`hasleader`), before doing anything.
fn never_applied(e: &etcd::Error) -> bool {
    match e {
        etcd::Error::TransportError(_) => true,
        etcd::Error::GRpcStatus(s) => {
            unavailable(e)
                && ["tcp connect error", "error trying to connect", "Connection refused", "no leader"]
                    .iter()
                    .any(|m| s.message().contains(m))
        }
        _ => false,
    }
}

/// gRPC's UNAVAILABLE (tonic, the client's transport, is not ours to name): the cluster could
/// not answer now (a leader election, a member without a quorum).
fn unavailable(e: &etcd::Error) -> bool {
    matches!(e, etcd::Error::GRpcStatus(s) if i32::from(s.code()) == 14)
}

/// How often an idle connection to a member is pinged, and how long the pong may take before
/// the connection is dropped.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach an etcd cluster. Build it with [`EtcdStoreConfig::new`] and override fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStoreConfig {
    /// Client URLs of the cluster's members, `http://host:port` (or `https://` with
    /// [`tls`](Self::tls)); at least one.
    pub endpoints: Vec<String>,
    /// Client certificates; `None` for plain HTTP.
    pub tls: Option<EtcdTlsConfig>,
    /// The longest one request may take before it fails with [`StoreError::Backend`].
    pub request_timeout: Duration,
    /// How many transactions a watch buffers for a slow watcher before it waits.
    pub watch_buffer: usize,
}

impl EtcdStoreConfig {
    /// Default of [`request_timeout`](Self::request_timeout).
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of [`watch_buffer`](Self::watch_buffer), in transactions per watch.
    pub const DEFAULT_WATCH_BUFFER: usize = 128;

    /// The configuration for `endpoints`, without TLS, every limit at its default.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdStoreConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            watch_buffer: Self::DEFAULT_WATCH_BUFFER,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("invalid configuration: no etcd endpoint given".into());
        }
        for endpoint in &self.endpoints {
            let scheme = endpoint.split_once("://").map(|(scheme, _)| scheme);
            match (scheme, &self.tls) {
                (Some("http"), _) | (Some("https"), Some(_)) => {}
                (Some("https"), None) => {
                    return Err(format!(
                        "invalid configuration: endpoint {endpoint} is https but no tls is set"
                    ));
                }
                _ => {
                    return Err(format!(
                        "invalid configuration: endpoint {endpoint} is not an http:// or https:// URL"
                    ));
                }
            }
        }
        if self.request_timeout.is_zero() {
            return Err("invalid configuration: request_timeout must not be zero".into());
        }
        if self.watch_buffer == 0 {
            return Err("invalid configuration: watch_buffer must be at least 1".into());
        }
        Ok(())
    }
}

/// The largest answer taken from etcd: gRPC's default of 4 MiB is less than a range of every
/// object of a busy store; etcd itself sends up to 2 GiB.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// How long [`EtcdStore::connect`] waits between attempts while the cluster does not answer.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// How many times in a row a watch reopens its etcd stream after it failed before it gives up.
const WATCH_ATTEMPTS: u32 = 5;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);

/// What a watch needs of the store, shared with its task.
struct Shared {
    client: etcd::Client,
    /// The endpoints, for messages.
    name: String,
    timeout: Duration,
    /// etcd's compacted revision as last found (0: never compacted); it only grows.
    etcd_compacted: AtomicI64,
    /// The open keep-alive stream of each lease renewed through this store, so that a renewal
    /// is one round trip on a stream already open; dropped on an error or a revoke.
    keepers: std::sync::Mutex<std::collections::HashMap<LeaseId, Arc<tokio::sync::Mutex<Keeper>>>>,
}

/// A lease's keep-alive stream: requests go out on the keeper, answers come back on the stream.
type Keeper = (etcd::LeaseKeeper, etcd::LeaseKeepAliveStream);

/// Drops a lease's keep-alive stream when a renewal ends without its answer, however it ends.
struct ForgetKeeper<'a> {
    shared: &'a Shared,
    id: LeaseId,
    armed: bool,
}

impl Drop for ForgetKeeper<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut k) = self.shared.keepers.lock()
        {
            k.remove(&self.id);
        }
    }
}

/// The [`Store`] over an etcd cluster. Cheap to share behind an `Arc`; every call is one or a
/// few requests to the cluster, each bounded by the request timeout.
pub struct EtcdStore {
    shared: Arc<Shared>,
    closed: AtomicBool,
    /// Set once by [`Store::close`] to the revision every watch must deliver before it ends.
    closing: watch::Sender<Option<Revision>>,
    watch_buffer: usize,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.shared.name)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers, trying again until the request
    /// timeout is spent.
    pub async fn connect(config: EtcdStoreConfig) -> Result<EtcdStore, StoreError> {
        let name = config.endpoints.join(",");
        let open_error = |reason: String| StoreError::Open { path: PathBuf::from(&name), reason };
        config.validate().map_err(open_error)?;
        // A member cut off from the others must not hold requests or watches: it answers
        // "no leader" at once (`hasleader`), and a connection to a member that went silent is
        // dropped after a missed keep-alive, so the client goes to the other members.
        let mut options = etcd::ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            .with_require_leader(true)
            .with_keep_alive(KEEP_ALIVE_EVERY, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &config.tls {
            let mut tls_options = etcd::TlsOptions::new()
                .ca_certificate(etcd::Certificate::from_pem(&tls.ca_pem))
                .identity(etcd::Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(domain) = &tls.domain {
                tls_options = tls_options.domain_name(domain.clone());
            }
            options = options.with_tls(tls_options);
        }
        let client = tokio::time::timeout(
            config.request_timeout,
            etcd::Client::connect(&config.endpoints, Some(options)),
        )
        .await
        .map_err(|_| open_error(format!("no answer within {:?}", config.request_timeout)))?
        .map_err(|e| open_error(e.to_string()))?;
        let shared = Arc::new(Shared {
            client,
            name: name.clone(),
            timeout: config.request_timeout,
            etcd_compacted: AtomicI64::new(0),
            keepers: std::sync::Mutex::default(),
        });
        // A cluster that has just started may still be electing its leader: ask again until
        // the request timeout is spent.
        let deadline = tokio::time::Instant::now() + config.request_timeout;
        let revision = loop {
            match shared.current_revision().await {
                Ok(revision) => break revision,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(open_error(e.to_string())),
                Err(e) => {
                    tracing::debug!(endpoints = %name, error = %e, "etcd does not answer yet");
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
            }
        };
        tracing::info!(endpoints = %name, revision, "connected to etcd state store");
        Ok(EtcdStore {
            shared,
            closed: AtomicBool::new(false),
            closing: watch::channel(None).0,
            watch_buffer: config.watch_buffer,
        })
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { Ok(()) }
    }

    /// The lease a failed put named: the one lease of the transaction, or the first that etcd
    /// no longer knows.
    async fn missing_lease(&self, txn: &Txn) -> LeaseId {
        let mut leases: Vec<LeaseId> = txn
            .success
            .iter()
            .chain(&txn.failure)
            .filter_map(|op| match op {
                Op::Put { lease: Some(lease), .. } => Some(*lease),
                _ => None,
            })
            .collect();
        leases.sort_unstable();
        leases.dedup();
        if let [only] = leases.as_slice() {
            return *only;
        }
        for &lease in &leases {
            let client = self.shared.client.lease_client();
            let ttl = self
                .shared
                .read("look up a lease", || {
                    let mut client = client.clone();
                    async move { client.time_to_live(lease, None).await }
                })
                .await;
            if ttl.is_ok_and(|ttl| ttl.ttl() < 0) {
                return lease;
            }
        }
        leases.first().copied().unwrap_or(0)
    }
}

impl Shared {
    /// A KV client that takes answers as large as etcd sends (a range of every object).
    fn kv(&self) -> etcd::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// One request, bounded by the timeout, its error mapped.
    /// One request that cannot go again (a message on an open stream), bounded by the timeout.
    async fn call_once<T>(
        &self,
        doing: &str,
        request: impl Future<Output = Result<T, etcd::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(doing, &e)),
            Err(_) => Err(StoreError::Backend(format!(
                "etcd at {} did not answer within {:?} ({doing})",
                self.name, self.timeout
            ))),
        }
    }

    /// A request, bounded by the timeout; made again by `request` while it reaches no working
    /// member.
    async fn call<T, F>(&self, doing: &str, request: impl FnMut() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd::Error>>,
    {
        self.again(doing, request, never_applied).await
    }

    /// A read: made again while the cluster is unavailable however (it changes nothing), until
    /// the timeout.
    async fn read<T, F>(&self, doing: &str, request: impl FnMut() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd::Error>>,
    {
        self.again(doing, request, |e| never_applied(e) || unavailable(e)).await
    }

    async fn again<T, F>(
        &self,
        doing: &str,
        mut request: impl FnMut() -> F,
        retry: impl Fn(&etcd::Error) -> bool,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd::Error>>,
    {
        // A request that provably reached no working member (the connection to a dead member
        // was refused, or the member has lost its cluster and refused it) goes again: the
        // client balances over the members, so the next try may reach a live one. Anything
        // else may have been applied and is the caller's to judge.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tries = 0u32;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, request()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if retry(&e) && tokio::time::Instant::now() < deadline => {
                    tries += 1;
                    tracing::debug!(doing, tries, error = %e, "etcd request reached no working member; again");
                    tokio::time::sleep(RETRY_PAUSE.min(left)).await;
                }
                Ok(Err(e)) => return Err(self.error(doing, &e)),
                Err(_) => {
                    return Err(StoreError::Backend(format!(
                        "etcd at {} did not answer within {:?} ({doing})",
                        self.name, self.timeout
                    )));
                }
            }
        }
    }

    fn error(&self, doing: &str, e: &etcd::Error) -> StoreError {
        if let etcd::Error::GRpcStatus(status) = e {
            let message = status.message();
            if message.contains(TOO_MANY_OPS) {
                return StoreError::Invalid(format!(
                    "the transaction has more operations than etcd at {} allows (its --max-txn-ops)",
                    self.name
                ));
            }
            if message.contains(DUPLICATE_KEY) {
                return StoreError::Invalid(format!(
                    "etcd refuses a transaction that writes one key twice: {message}"
                ));
            }
            if message.contains(TOO_LARGE) {
                return StoreError::Invalid(format!(
                    "the request is larger than etcd at {} accepts (its --max-request-bytes)",
                    self.name
                ));
            }
        }
        StoreError::Backend(format!("failed to {doing} at etcd {}: {e}", self.name))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let kv = self.kv();
        let response = self
            .read("read the revision", || {
                let mut kv = kv.clone();
                async move { kv.get(vec![0], Some(etcd::GetOptions::new().with_count_only())).await }
            })
            .await?;
        self.revision(response.header())
    }

    fn revision(&self, header: Option<&etcd::ResponseHeader>) -> Result<Revision, StoreError> {
        header
            .map(etcd::ResponseHeader::revision)
            .ok_or_else(|| StoreError::Backend(format!("etcd at {} answered without a header", self.name)))
    }

    /// Whether a read at `revision` is still possible (false: it is compacted).
    async fn readable_at(&self, revision: Revision) -> Result<bool, StoreError> {
        let mut kv = self.kv();
        let options = etcd::GetOptions::new().with_count_only().with_revision(revision);
        match tokio::time::timeout(self.timeout, kv.get(vec![0], Some(options))).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(etcd::Error::GRpcStatus(status))) if status.message().contains(COMPACTED) => Ok(false),
            Ok(Err(e)) => Err(self.error("read an old revision", &e)),
            Err(_) => Err(StoreError::Backend(format!(
                "etcd at {} did not answer within {:?} (read an old revision)",
                self.name, self.timeout
            ))),
        }
    }

    /// etcd's compacted revision `C` (0 if never compacted): reads below `C` fail, reads at
    /// `C` and above do. Costs one read when it has not moved since last asked.
    async fn etcd_compacted(&self) -> Result<Revision, StoreError> {
        let known = self.etcd_compacted.load(Ordering::Acquire);
        if self.readable_at(known.max(1)).await? {
            return Ok(known);
        }
        // Reads at `low` fail, reads at `high` succeed: the answer is in (low, high].
        let (mut low, mut high) = (known.max(1), self.current_revision().await?);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if self.readable_at(middle).await? {
                high = middle;
            } else {
                low = middle;
            }
        }
        self.etcd_compacted.fetch_max(high, Ordering::AcqRel);
        Ok(high)
    }

    /// The store's compacted revision: etcd's plus one (see the module docs).
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.etcd_compacted().await? + 1)
    }
}

const COMPACTED: &str = "required revision has been compacted";
const FUTURE_REVISION: &str = "required revision is a future revision";
const LEASE_NOT_FOUND: &str = "requested lease not found";
const TOO_MANY_OPS: &str = "too many operations in txn request";
const DUPLICATE_KEY: &str = "duplicate key given in txn request";
const TOO_LARGE: &str = "request is too large";

fn is_status(e: &StoreError, message: &str) -> bool {
    matches!(e, StoreError::Backend(text) if text.contains(message))
}

/// The `[key, range_end)` etcd covers for every key under `prefix`.
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    // etcd reads an empty key as "no key"; "\0" up to "\0" is every key.
    let start = if prefix.is_empty() { vec![0] } else { prefix.as_bytes().to_vec() };
    (start, prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]))
}

fn in_range(key: &[u8], (start, end): &(Vec<u8>, Vec<u8>)) -> bool {
    key >= start.as_slice() && (end.as_slice() == [0] || key < end.as_slice())
}

fn key_value(kv: &etcd::KeyValue) -> Result<KeyValue, StoreError> {
    let key = std::str::from_utf8(kv.key())
        .map_err(|_| StoreError::Backend(format!("etcd holds a key that is not UTF-8: {:?}", kv.key())))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

fn key_values(kvs: &[etcd::KeyValue]) -> Result<Vec<KeyValue>, StoreError> {
    kvs.iter().map(key_value).collect()
}

fn compare(compare: &Compare) -> etcd::Compare {
    let op = match compare.op {
        CompareOp::Equal => etcd::CompareOp::Equal,
        CompareOp::NotEqual => etcd::CompareOp::NotEqual,
        CompareOp::Greater => etcd::CompareOp::Greater,
        CompareOp::Less => etcd::CompareOp::Less,
    };
    let key = compare.key.as_bytes();
    match &compare.target {
        CompareTarget::Version(version) => etcd::Compare::version(key, op, *version),
        CompareTarget::CreateRevision(revision) => etcd::Compare::create_revision(key, op, *revision),
        CompareTarget::ModRevision(revision) => etcd::Compare::mod_revision(key, op, *revision),
        CompareTarget::Value(value) => etcd::Compare::value(key, op, value.clone()),
        CompareTarget::Lease(lease) => etcd::Compare::lease(key, op, *lease),
    }
}

fn txn_op(op: &Op) -> etcd::TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let options = etcd::PutOptions::new().with_prev_key().with_lease(lease.unwrap_or(0));
            etcd::TxnOp::put(key.as_bytes(), value.clone(), Some(options))
        }
        Op::Delete { key } => {
            etcd::TxnOp::delete(key.as_bytes(), Some(etcd::DeleteOptions::new().with_prev_key()))
        }
        Op::DeletePrefix { prefix } => {
            let (start, end) = prefix_range(prefix);
            etcd::TxnOp::delete(start, Some(etcd::DeleteOptions::new().with_range(end).with_prev_key()))
        }
        Op::Get { key } => etcd::TxnOp::get(key.as_bytes(), None),
        Op::Range { prefix } => {
            let (start, end) = prefix_range(prefix);
            etcd::TxnOp::get(start, Some(etcd::GetOptions::new().with_range(end)))
        }
    }
}

/// The key a branch writes twice (two puts, or a put inside a range it deletes), which etcd
/// refuses whether or not the branch runs.
fn written_twice(ops: &[Op]) -> Option<&str> {
    let deleted: Vec<(Vec<u8>, Vec<u8>)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete { key } => Some((key.as_bytes().to_vec(), [key.as_bytes(), &[0]].concat())),
            Op::DeletePrefix { prefix } => Some(prefix_range(prefix)),
            _ => None,
        })
        .collect();
    let mut put = std::collections::BTreeSet::new();
    for op in ops {
        if let Op::Put { key, .. } = op
            && (!put.insert(key.as_str()) || deleted.iter().any(|range| in_range(key.as_bytes(), range)))
        {
            return Some(key);
        }
    }
    None
}

fn op_response(op: &Op, response: &etcd::TxnOpResponse) -> Result<OpResponse, StoreError> {
    Ok(match (op, response) {
        (Op::Put { .. }, etcd::TxnOpResponse::Put(put)) => {
            OpResponse::Put { prev: put.prev_key().map(key_value).transpose()? }
        }
        (Op::Delete { .. } | Op::DeletePrefix { .. }, etcd::TxnOpResponse::Delete(delete)) => {
            OpResponse::Delete { deleted: key_values(delete.prev_kvs())? }
        }
        (Op::Get { .. }, etcd::TxnOpResponse::Get(get)) => {
            OpResponse::Get { kv: get.kvs().first().map(key_value).transpose()? }
        }
        (Op::Range { .. }, etcd::TxnOpResponse::Get(get)) => {
            OpResponse::Range { kvs: key_values(get.kvs())? }
        }
        (op, response) => {
            return Err(StoreError::Backend(format!("etcd answered {op:?} with {response:?}")));
        }
    })
}

#[async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.check_open()?;
        self.shared.current_revision().await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check_open()?;
        if key.is_empty() {
            return Err(StoreError::Invalid("key must not be empty".into()));
        }
        let kv = self.shared.kv();
        let response = self
            .shared
            .read("read a key", || {
                let mut kv = kv.clone();
                async move { kv.get(key.as_bytes(), None).await }
            })
            .await?;
        response.kvs().first().map(key_value).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.check_open()?;
        let (start, end) = prefix_range(prefix);
        let kv = self.shared.kv();
        let response = self
            .shared
            .read("read a range", || {
                let (mut kv, start, end) = (kv.clone(), start.clone(), end.clone());
                async move { kv.get(start, Some(etcd::GetOptions::new().with_range(end))).await }
            })
            .await?;
        Ok(RangeResponse {
            kvs: key_values(response.kvs())?,
            revision: self.shared.revision(response.header())?,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(endpoints = %self.shared.name))]
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.check_open()?;
        txn.validate()?;
        for ops in [&txn.success, &txn.failure] {
            if let Some(key) = written_twice(ops) {
                return Err(StoreError::Invalid(format!(
                    "the etcd store cannot write key {key:?} twice in one branch of a transaction"
                )));
            }
        }
        let request = etcd::Txn::new()
            .when(txn.compare.iter().map(compare).collect::<Vec<_>>())
            .and_then(txn.success.iter().map(txn_op).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(txn_op).collect::<Vec<_>>());
        let kv = self.shared.kv();
        let response = match self
            .shared
            .call("apply a transaction", || {
                let (mut kv, request) = (kv.clone(), request.clone());
                async move { kv.txn(request).await }
            })
            .await
        {
            Ok(response) => response,
            Err(e) if is_status(&e, LEASE_NOT_FOUND) => {
                return Err(StoreError::LeaseNotFound(self.missing_lease(&txn).await));
            }
            Err(e) => return Err(e),
        };
        let succeeded = response.succeeded();
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let answers = response.op_responses();
        if answers.len() != ops.len() {
            return Err(StoreError::Backend(format!(
                "etcd at {} answered {} operations with {} responses",
                self.shared.name,
                ops.len(),
                answers.len()
            )));
        }
        let responses =
            ops.iter().zip(&answers).map(|(op, answer)| op_response(op, answer)).collect::<Result<_, _>>()?;
        Ok(TxnResponse { succeeded, revision: self.shared.revision(response.header())?, responses })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.check_open()?;
        if from < 0 {
            return Err(StoreError::Invalid(format!("watch start revision {from} is negative")));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Invalid("the state store must be used inside a tokio runtime".into()))?;
        let next = if from == 0 { self.shared.current_revision().await? + 1 } else { from };
        let compacted = self.shared.compacted_revision().await?;
        let (events, stream) = mpsc::channel(self.watch_buffer);
        if next < compacted {
            // The channel is new and holds at least one item.
            let _ = events.try_send(Err(WatchError::Compacted { requested: next, compacted }));
            return Ok(stream);
        }
        let task = WatchTask {
            shared: Arc::clone(&self.shared),
            range: prefix_range(prefix),
            next,
            events,
            closing: self.closing.subscribe(),
        };
        let span = tracing::debug_span!("store_watch", endpoints = %self.shared.name, prefix, from = next);
        runtime.spawn(task.run().instrument(span));
        Ok(stream)
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.check_open()?;
        validate_ttl(ttl)?;
        // etcd keeps whole seconds: round up, so that a lease never ends before it was asked to.
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let lease = self.shared.client.lease_client();
        let granted = self
            .shared
            .call("grant a lease", || {
                let mut lease = lease.clone();
                async move { lease.grant(seconds, None).await }
            })
            .await?;
        if !granted.error().is_empty() || granted.id() <= 0 || granted.ttl() <= 0 {
            return Err(StoreError::Backend(format!(
                "etcd at {} refused a lease of {seconds}s: {}",
                self.shared.name,
                granted.error()
            )));
        }
        Ok(Lease { id: granted.id(), ttl: Duration::from_secs(granted.ttl().unsigned_abs()) })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, StoreError> {
        self.check_open()?;
        validate_lease_id(id)?;
        let open = self.shared.keepers.lock().ok().and_then(|k| k.get(&id).cloned());
        let keeper = match open {
            Some(k) => k,
            None => {
                let lease = self.shared.client.lease_client();
                // Opening the stream renews the lease once: the client reads that first answer
                // itself, and reports a TTL of 0 as "lease not found".
                let stream = match self
                    .shared
                    .call("keep a lease alive", || {
                        let mut lease = lease.clone();
                        async move { lease.keep_alive(id).await }
                    })
                    .await
                {
                    Ok(stream) => stream,
                    Err(e) if is_status(&e, "lease not found") => return Err(StoreError::LeaseNotFound(id)),
                    Err(e) => return Err(e),
                };
                let keeper = Arc::new(tokio::sync::Mutex::new(stream));
                if let Ok(mut k) = self.shared.keepers.lock() {
                    k.insert(id, keeper.clone());
                }
                keeper
            }
        };
        // Unless this renewal is answered, the stream is dropped: one that failed, timed out
        // or was abandoned half-way (the caller gave up waiting) may be stuck on a member that
        // went away, or hold an answer to a request nobody waits for any more.
        let mut forget = ForgetKeeper { shared: &self.shared, id, armed: true };
        let answer = {
            let mut stream = keeper.lock().await;
            let (keeper, answers) = &mut *stream;
            match self.shared.call_once("keep a lease alive", keeper.keep_alive()).await {
                Ok(()) => self.shared.call_once("keep a lease alive", answers.message()).await,
                Err(e) => Err(e),
            }
        };
        match answer? {
            Some(answer) if answer.ttl() > 0 => {
                forget.armed = false;
                Ok(Lease { id, ttl: Duration::from_secs(answer.ttl().unsigned_abs()) })
            }
            Some(_) => Err(StoreError::LeaseNotFound(id)),
            None => Err(StoreError::Backend(format!(
                "etcd at {} closed the keep-alive stream of lease {id}",
                self.shared.name
            ))),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        self.check_open()?;
        validate_lease_id(id)?;
        if let Ok(mut k) = self.shared.keepers.lock() {
            k.remove(&id);
        }
        let lease = self.shared.client.lease_client();
        match self
            .shared
            .call("revoke a lease", || {
                let mut lease = lease.clone();
                async move { lease.revoke(id).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, LEASE_NOT_FOUND) => Err(StoreError::LeaseNotFound(id)),
            Err(e) => Err(e),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.check_open()?;
        if revision < 1 {
            return Err(StoreError::Invalid(format!("compaction revision {revision} is not positive")));
        }
        let current = self.shared.current_revision().await?;
        if revision > current {
            return Err(StoreError::FutureRevision { requested: revision, current });
        }
        let compacted = self.shared.compacted_revision().await?;
        if revision < compacted {
            return Err(StoreError::Compacted { requested: revision, compacted });
        }
        if revision == compacted {
            return Ok(());
        }
        let kv = self.shared.kv();
        match self
            .shared
            .call("compact", || {
                let mut kv = kv.clone();
                async move { kv.compact(revision - 1, None).await }
            })
            .await
        {
            Ok(_) => {
                self.shared.etcd_compacted.fetch_max(revision - 1, Ordering::AcqRel);
                tracing::info!(revision, "compacted history");
                Ok(())
            }
            // Someone compacted further in the meantime.
            Err(e) if is_status(&e, COMPACTED) => {
                let compacted = self.shared.compacted_revision().await?;
                if revision == compacted {
                    Ok(())
                } else {
                    Err(StoreError::Compacted { requested: revision, compacted })
                }
            }
            Err(e) if is_status(&e, FUTURE_REVISION) => Err(StoreError::FutureRevision {
                requested: revision,
                current: self.shared.current_revision().await?,
            }),
            Err(e) => Err(e),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.check_open()?;
        self.shared.compacted_revision().await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Closed);
        }
        // Watches deliver up to what is committed now. If etcd cannot say, they end at once.
        let last = match self.shared.current_revision().await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(endpoints = %self.shared.name, error = %e, "closing without the last revision");
                0
            }
        };
        self.closing.send_replace(Some(last));
        tracing::info!(endpoints = %self.shared.name, revision = last, "state store closed");
        Ok(())
    }
}

/// The events of one etcd answer, as whole transactions: the batches of keys in `range` (in
/// revision order, each revision once) and the highest revision seen on any key.
fn batches(
    events: &[etcd::Event],
    range: &(Vec<u8>, Vec<u8>),
) -> Result<(Vec<WatchBatch>, Revision), WatchError> {
    let mut batches: Vec<WatchBatch> = Vec::new();
    let mut highest = 0;
    for event in events {
        let Some(kv) = event.kv() else {
            return Err(WatchError::Backend("etcd sent an event without its key".into()));
        };
        let revision = kv.mod_revision();
        highest = highest.max(revision);
        if !in_range(kv.key(), range) {
            continue;
        }
        let event = match event.event_type() {
            etcd::EventType::Put => Event {
                kind: EventKind::Put,
                kv: key_value(kv).map_err(|e| WatchError::Backend(e.to_string()))?,
                prev: None,
            },
            etcd::EventType::Delete => {
                let Some(prev) = event.prev_kv() else {
                    // etcd read the previous value at `revision - 1` and found it compacted.
                    return Err(WatchError::Compacted { requested: revision, compacted: revision });
                };
                let prev = key_value(prev).map_err(|e| WatchError::Backend(e.to_string()))?;
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: prev.key.clone(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: revision,
                        version: 0,
                        lease: None,
                    },
                    prev: Some(prev),
                }
            }
        };
        match batches.last_mut() {
            Some(batch) if batch.revision == revision => batch.events.push(event),
            Some(batch) if batch.revision > revision => {
                return Err(WatchError::Backend(format!(
                    "etcd sent revision {revision} after revision {}",
                    batch.revision
                )));
            }
            _ => batches.push(WatchBatch { revision, events: vec![event] }),
        }
    }
    Ok((batches, highest))
}

struct WatchTask {
    shared: Arc<Shared>,
    range: (Vec<u8>, Vec<u8>),
    /// The next revision the watcher has not seen.
    next: Revision,
    events: mpsc::Sender<Result<WatchBatch, WatchError>>,
    closing: watch::Receiver<Option<Revision>>,
}

/// How a watch ended.
enum End {
    /// The watcher went away.
    Cancelled,
    /// The last item to send.
    Error(WatchError),
}

impl WatchTask {
    async fn run(mut self) {
        tracing::debug!(from = self.next, "watch started");
        if let End::Error(e) = self.serve().await {
            if let WatchError::Compacted { requested, .. } = e {
                // Name the oldest revision kept, as the SQLite store does.
                let compacted = self.shared.compacted_revision().await.unwrap_or(requested);
                drop(self.events.send(Err(WatchError::Compacted { requested, compacted })).await);
            } else {
                drop(self.events.send(Err(e)).await);
            }
        }
        tracing::debug!(next = self.next, "watch ended");
    }

    /// Opens an etcd watch on `range` from the next revision.
    async fn open(&self, range: &(Vec<u8>, Vec<u8>)) -> Result<etcd::WatchStream, StoreError> {
        let options = etcd::WatchOptions::new()
            .with_range(range.1.clone())
            .with_start_revision(self.next)
            .with_prev_key();
        let watch = self.shared.client.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
        self.shared
            .read("watch", || {
                let (mut watch, key, options) = (watch.clone(), range.0.clone(), options.clone());
                async move { watch.watch(key, Some(options)).await }
            })
            .await
    }

    /// Hands the batches of one answer to the watcher. `Err` ends the watch.
    async fn deliver(
        &mut self,
        response: &etcd::WatchResponse,
        until: Option<Revision>,
    ) -> Result<Revision, End> {
        if response.canceled() {
            if response.compact_revision() > 0 {
                return Err(End::Error(WatchError::Compacted { requested: self.next, compacted: 0 }));
            }
            return Err(End::Error(WatchError::Backend(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            ))));
        }
        let (batches, highest) = batches(response.events(), &self.range).map_err(End::Error)?;
        for batch in batches {
            // A reopened watch may repeat what was delivered; past the close, nothing counts.
            if batch.revision < self.next || until.is_some_and(|until| batch.revision > until) {
                continue;
            }
            self.next = batch.revision + 1;
            if self.events.send(Ok(batch)).await.is_err() {
                return Err(End::Cancelled);
            }
        }
        Ok(highest)
    }

    async fn serve(&mut self) -> End {
        let mut failures = 0;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let closed = *self.closing.borrow_and_update();
            if let Some(last) = closed {
                return self.drain(last).await;
            }
            let range = self.range.clone();
            let failure = match self.open(&range).await {
                Ok(mut stream) => loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(response)) => {
                                if let Err(end) = self.deliver(&response, None).await {
                                    return end;
                                }
                                failures = 0;
                                delay = FIRST_RETRY_DELAY;
                            }
                            Ok(None) => break "etcd ended the watch stream".to_owned(),
                            Err(e) => break e.to_string(),
                        },
                        _ = self.closing.changed() => {
                            let last = (*self.closing.borrow_and_update()).unwrap_or(0);
                            return self.drain(last).await;
                        }
                        () = self.events.closed() => return End::Cancelled,
                    }
                },
                Err(e) => e.to_string(),
            };
            failures += 1;
            if failures >= WATCH_ATTEMPTS {
                return End::Error(WatchError::Backend(failure));
            }
            tracing::warn!(attempt = failures, error = %failure, "watch failed, reopening");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// After the store closed at `last`: delivers what is left up to it, then ends. The keys of
    /// this watch may see no more events, so it reads every key's history, where each revision
    /// has at least one event, until it has passed `last`.
    async fn drain(&mut self, last: Revision) -> End {
        if self.next > last {
            return End::Error(WatchError::Closed);
        }
        let mut stream = match self.open(&prefix_range("")).await {
            Ok(stream) => stream,
            Err(e) => return End::Error(WatchError::Backend(e.to_string())),
        };
        loop {
            let message = tokio::time::timeout(self.shared.timeout, stream.message()).await;
            let response = match message {
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) => return End::Error(WatchError::Backend("etcd ended the watch stream".into())),
                Ok(Err(e)) => return End::Error(WatchError::Backend(e.to_string())),
                Err(_) => {
                    return End::Error(WatchError::Backend(format!(
                        "etcd sent no history up to revision {last} within {:?}",
                        self.shared.timeout
                    )));
                }
            };
            match self.deliver(&response, Some(last)).await {
                Ok(highest) if highest >= last => return End::Error(WatchError::Closed),
                Ok(_) => {}
                Err(end) => return end,
            }
        }
    }
}
