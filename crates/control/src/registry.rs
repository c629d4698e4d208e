//! The registry: model objects in the store, with every invariant of the model enforced by
//! compare-and-swap transactions, so that it stays correct with several writers (several
//! control-plane servers on one etcd) and never needs an in-process lock.
//!
//! Key layout (all under one store):
//! - `/registry/<kind>/<uuid>` — the object (JSON). Watches follow this prefix only.
//! - `/index/label/<kind>/<ring>/<scope>/<label>` — the uuid owning a label among siblings
//!   (`<account>:<scope>` for a tenant's objects, so one tenant's names say nothing of another's).
//! - `/refs/<target>/<source-kind>/<source>` — "source refers to target", with the field.
//! - `/guards/<target>` — written by every write that adds a reference to `target`; a delete of
//!   `target` compares it, so a reference added concurrently makes the delete retry and see it.
//! - `/ports/<port>` — the node holding a port (see `ports.rs`).
//! - `/uids/<uid>` — the instance holding a uid, and `/uids/next`, the uid to try next (see
//!   `uids.rs`).
//! - `/guards/compartment-graph` — written by every change of compartment parents, so two
//!   concurrent changes that together would close a cycle cannot both commit.
//! - `/guards/access-rules/<rule set>` — written with every access rule of the set, so that two
//!   rules that contradict each other cannot both commit.
//! - `/apps/names/<app>` (the platform's) — read: an access rule may name only its account's apps.
//! - `/audit/<nanoseconds>-<uuid>` — one audit record (JSON) per authenticated mutating request,
//!   the time zero-padded to 20 digits so that key order is time order (see `audit.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use enjin_model::api::{CreateRequest, ListQuery, UpdateRequest};
use enjin_model::kinds::{
    AccessRuleSpec, CompartmentSpec, CompartmentType, NetworkInterfaceSpec, NetworkSpec, NodeSpec,
    references_of,
};
use enjin_model::{
    FieldError, Kind, Object, ObjectMeta, OnDelete, Reference, Ring, Spec, Target, dag, validate_label,
    validate_labels,
};
use enjin_store::{Compare, KeyValue, Op, OpResponse, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cache::{Filter, WatchCache};

use crate::config::{ControlConfig, InstanceDefaults, is_instance};
use crate::{ipam, ports, uids};

/// How often a write is retried when something it depends on changed under it.
const MAX_ATTEMPTS: usize = 8;

/// How many more times an instance create is retried because concurrent creates took the next
/// uid first (see `create`).
const MAX_UID_RACES: usize = 64;

const DAG_GUARD: &str = "/guards/compartment-graph";

/// Where an app's name is claimed for its account (`platform::claim_name`): the key's value
/// is the account's uuid.
const APP_NAMES: &str = "/apps/names/";

/// `/guards/access-rules/<rule set>`: written with every access rule of the set, so that rules
/// checked against each other commit one at a time.
const ACCESS_RULE_GUARDS: &str = "/guards/access-rules/";

/// Written by every change of who may do what (roles, memberships, tokens), so that cached
/// authorizations know when they are stale: its mod revision is the authorization generation.
pub const AUTH_GENERATION: &str = "/auth/generation";

/// Add the authorization-generation bump to writes of kinds that grant permissions.
fn bump_auth(kind: Kind, txn: Txn) -> Txn {
    match kind {
        Kind::Role | Kind::Membership => txn.then([Op::put(AUTH_GENERATION, Vec::new())]),
        _ => txn,
    }
}

/// Why a registry operation failed. The API answers each as [`ApiError`](crate::ApiError)'s
/// conversion says: not found 404, invalid 422, conflicts 409, forbidden 403, unavailable 503,
/// corrupt 500, and a store error as that error says.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No object of that kind has that uuid (never made, or deleted).
    #[error("{kind} {uuid} not found")]
    NotFound {
        /// The kind looked for.
        kind: Kind,
        /// The uuid looked for.
        uuid: Uuid,
    },
    /// No API token has that id (never issued, or revoked).
    #[error("token {0} not found")]
    TokenNotFound(Uuid),
    /// The request breaks a rule of the model (a label, a spec field, a reference to the wrong
    /// kind or ring); the error names the field.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The write collides with the store's state: a revision that is no longer current, a
    /// label already taken among siblings, or an object that kept changing through every
    /// retry. Reading again and retrying may succeed.
    #[error("{detail}")]
    Conflict {
        /// The request field in conflict (`label`, `revision`); `None` when the whole write
        /// is.
        field: Option<String>,
        /// What collided, naming the object it collided with where there is one.
        detail: String,
    },
    /// A write checked against a guard (see [`Registry::create_guarded`]) found it moved: what
    /// the check read has changed. Checking again and retrying may succeed.
    #[error("{0}")]
    GuardMoved(String),
    /// A fenced write (see [`Registry::fenced`]) found that this server no longer leads; it
    /// changed nothing. Whatever made it must stop: another server leads now.
    #[error("{0}")]
    Fenced(String),
    /// A delete refused because another object still refers to the target (or to an object the
    /// delete would cascade to); change or delete the referrer first.
    #[error("{detail}")]
    StillReferenced {
        /// Which object refers to the target, and through which field.
        detail: String,
    },
    /// What is stored does not decode: a bug or a damaged store, never the caller's fault.
    #[error("stored {key} is unreadable: {error}")]
    Corrupt {
        /// The store key whose value is unreadable (or a description of the value).
        key: String,
        /// Why it does not decode.
        error: String,
    },
    /// Something the write needs has run out (every instance uid is taken).
    #[error("{0}")]
    Unavailable(String),
    /// The caller may not do this: it would grant more than the caller holds.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed (closed, compacted past a revision asked for, or an I/O error).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key whose revision a check read, compared (and moved) by the write that acts on the
/// check: see [`Registry::create_guarded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The guard's key.
    pub key: String,
    /// Its revision when read; 0 when it did not exist.
    pub revision: i64,
    /// What it stands for, for the error when it moved (`the use of account …`).
    pub what: String,
}

impl Guard {
    /// Read `key`'s revision now; `what` names what it guards.
    pub async fn read(
        store: &dyn enjin_store::Store,
        key: String,
        what: String,
    ) -> Result<Guard, RegistryError> {
        let revision = store.get(&key).await?.map_or(0, |kv| kv.mod_revision);
        Ok(Guard { key, revision, what })
    }

    fn compare(&self) -> Compare {
        match self.revision {
            0 => Compare::absent(&self.key),
            r => Compare::mod_revision(&self.key, r),
        }
    }
}

impl RegistryError {
    fn conflict(field: Option<&str>, detail: impl Into<String>) -> Self {
        RegistryError::Conflict { field: field.map(str::to_string), detail: detail.into() }
    }
}

/// The port a node's spec claims, for any spec type (only nodes have one).
fn port_of_spec<S: Spec>(spec: &S) -> Option<u16> {
    if S::KIND != Kind::Node {
        return None;
    }
    let v = serde_json::to_value(spec).ok()?;
    let run = v.get("run")?;
    // A port inside the node's own namespace is nobody else's business.
    if run.get("own_network").and_then(serde_json::Value::as_bool) == Some(true) {
        return None;
    }
    run.get("port")?.as_u64().and_then(|p| u16::try_from(p).ok())
}

/// A node spec as its own type, from the generic one (only called for nodes).
fn node_of<S: Spec>(spec: &S) -> Result<NodeSpec, RegistryError> {
    serde_json::to_value(spec)
        .and_then(serde_json::from_value)
        .map_err(|e| RegistryError::Corrupt { key: "node spec".into(), error: e.to_string() })
}

/// The generic spec back from a node spec.
fn spec_of<S: Spec>(node: &NodeSpec) -> Result<S, RegistryError> {
    serde_json::to_value(node)
        .and_then(serde_json::from_value)
        .map_err(|e| RegistryError::Corrupt { key: "node spec".into(), error: e.to_string() })
}

fn uid_reserved() -> FieldError {
    FieldError::new("spec.run.uid", "is reserved by the control plane; leave it out")
}

fn uid_fixed(held: u32) -> FieldError {
    FieldError::new(
        "spec.run.uid",
        format!(
            "a node's uid cannot change: this node holds uid {held} until it is deleted, and keeps \
             its run for it; create a new node instead"
        ),
    )
}

/// A uid chosen for a node, and the counter's revision it was chosen at.
struct UidClaim {
    uid: u32,
    counter_revision: i64,
    /// What the counter becomes.
    next: u32,
}

impl UidClaim {
    /// Take the uid in `txn`: only if it is still free and nobody moved the counter since it
    /// was read, so uids keep being handed out in counter order (see `uids.rs`).
    fn add_to(&self, uuid: Uuid, txn: Txn) -> Txn {
        let k = uids::key(self.uid);
        txn.when([Compare::absent(&k), Compare::mod_revision(uids::NEXT, self.counter_revision)])
            .then([Op::put(&k, uuid.to_string()), Op::put(uids::NEXT, self.next.to_string())])
    }
}

/// What a reference key holds.
#[derive(Debug, Serialize, Deserialize)]
struct RefRecord {
    field: String,
    cascade: bool,
}

/// The store key of an object: `/registry/<kind>/<uuid>`. Watching the kind's prefix sees
/// every change of its objects.
pub fn object_key(kind: Kind, uuid: Uuid) -> String {
    format!("/registry/{}/{uuid}", kind.name())
}

pub fn kind_prefix(kind: Kind) -> String {
    format!("/registry/{}/", kind.name())
}

pub const REGISTRY_PREFIX: &str = "/registry/";

/// Labels are unique among siblings: the same kind, ring and compartment, and the same account
/// (for objects outside the system account), so one tenant's names say nothing about
/// another's. Accounts' own labels are unique across the cloud.
fn label_key(kind: Kind, ring: Ring, scope: Option<Uuid>, tenant: Option<Uuid>, label: &str) -> String {
    let scope = scope.map_or_else(|| "-".to_string(), |s| s.to_string());
    match tenant {
        Some(account) if kind != Kind::Account => {
            format!("/index/label/{}/{ring}/{account}:{scope}/{label}", kind.name())
        }
        _ => format!("/index/label/{}/{ring}/{scope}/{label}", kind.name()),
    }
}

fn ref_key(target: Uuid, source_kind: Kind, source: Uuid) -> String {
    format!("/refs/{target}/{}/{source}", source_kind.name())
}

fn refs_prefix(target: Uuid) -> String {
    format!("/refs/{target}/")
}

fn guard_key(target: Uuid) -> String {
    format!("/guards/{target}")
}

/// Decode a stored object, stamping the revision from the store.
pub fn decode<S: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<Object<S>, RegistryError> {
    let mut obj: Object<S> = serde_json::from_slice(&kv.value)
        .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
    obj.meta.revision = kv.mod_revision;
    Ok(obj)
}

fn encode<S: Serialize>(obj: &Object<S>) -> Vec<u8> {
    // Object and spec types serialize infallibly (no maps with non-string keys).
    serde_json::to_vec(obj).unwrap_or_default()
}

/// Whose objects a write may refer to.
#[derive(Debug, Clone, Copy)]
struct Owners {
    own: Uuid,
    system: Uuid,
}

impl Owners {
    fn may_refer_to(&self, target: &ObjectMeta) -> bool {
        // A membership names its account, which owns itself; the operator's objects may
        // refer to any account's (an observation of a tenant's instance made by a host).
        self.own == self.system
            || target.account == self.own
            || target.account == self.system
            || target.uuid == self.own
    }
}

/// A referenced object as read, with the revision to guard on.
struct Resolved {
    reference: Reference,
    target: Target,
    revision: i64,
}

/// The model objects in the store.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    /// The system account's uuid, once known (see [`Registry::system_account`]).
    system: Arc<std::sync::OnceLock<Uuid>>,
    instances: InstanceDefaults,
    /// [`uids::RANGE`], narrowed by tests that run it out.
    uid_range: RangeInclusive<u32>,
    /// Where lists are answered from when the control plane runs one (see [`crate::cache`]).
    cache: Option<Arc<WatchCache>>,
    /// Leadership every write must still hold (see [`Registry::fenced`]).
    fence: Option<crate::leader::Fence>,
}

/// How long a list waits for the watch cache to catch up with the store before it reads the
/// store instead.
const CACHE_PATIENCE: Duration = Duration::from_secs(1);

impl Registry {
    /// A registry with the default configuration.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Registry::with_config(store, &ControlConfig::default())
    }

    /// A registry over `store`, filling instance limits from `config`, with no watch cache.
    pub fn with_config(store: Arc<dyn Store>, config: &ControlConfig) -> Self {
        Registry {
            store,
            system: Arc::default(),
            instances: config.instances,
            uid_range: uids::RANGE,
            cache: None,
            fence: None,
        }
    }

    /// This registry, with every write it makes fenced by `fence`: each transaction also
    /// compares the leader key's revision, so once this server's leadership is gone (the key
    /// expired or another leader wrote it) its writes fail with [`RegistryError::Fenced`]
    /// instead of landing beside the new leader's.
    pub fn fenced(&self, fence: crate::leader::Fence) -> Registry {
        Registry { fence: Some(fence), ..self.clone() }
    }

    /// Commit a write: with this registry's fence, if any, as one more compare. A transaction
    /// that failed because the fence moved is [`RegistryError::Fenced`].
    async fn commit(&self, txn: Txn) -> Result<enjin_store::TxnResponse, RegistryError> {
        let Some(fence) = &self.fence else { return Ok(self.store.txn(txn).await?) };
        let resp = self.store.txn(txn.when([fence.compare()])).await?;
        if !resp.succeeded && !fence.holds(self.store.as_ref()).await? {
            return Err(RegistryError::Fenced(format!(
                "this server no longer leads ({} was rewritten or expired after revision {})",
                fence.key, fence.revision
            )));
        }
        Ok(resp)
    }

    /// Answer lists from `cache` (kept by [`WatchCache::reflect`] over this registry's store).
    pub fn with_cache(mut self, cache: Arc<WatchCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The watch cache lists are answered from, if any.
    pub fn cache(&self) -> Option<&Arc<WatchCache>> {
        self.cache.as_ref()
    }

    /// The store underneath, for what lives outside the registry's objects (tokens, audit,
    /// address and port keys).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The limits instances get for those their spec leaves out.
    pub fn instance_defaults(&self) -> &InstanceDefaults {
        &self.instances
    }

    /// The operator's account, which owns ring 0 and 1 and whose memberships hold everywhere.
    /// Read once: it is made at bootstrap and never deleted (memberships refer to it).
    pub async fn system_account(&self) -> Result<Uuid, RegistryError> {
        if let Some(u) = self.system.get() {
            return Ok(*u);
        }
        let range = self.store.range(&kind_prefix(Kind::Account)).await?;
        for kv in &range.kvs {
            let a: Object<serde_json::Value> = decode(kv)?;
            if a.meta.ring == Ring::META && a.meta.label.as_deref() == Some(crate::auth::SYSTEM_ACCOUNT) {
                return Ok(*self.system.get_or_init(|| a.meta.uuid));
            }
        }
        Err(RegistryError::Unavailable(
            "the system account does not exist yet: the control plane has not bootstrapped".into(),
        ))
    }

    /// The account of the first object `spec` refers to (an observation's node), if it exists.
    async fn owner_of_target<S: Spec>(&self, spec: &S) -> Result<Option<Uuid>, RegistryError> {
        let Some(r) = spec.references().into_iter().next() else { return Ok(None) };
        match self.store.get(&object_key(r.kind, r.uuid)).await? {
            Some(kv) => Ok(Some(self.decode_owned::<serde_json::Value>(&kv)?.meta.account)),
            None => Ok(None),
        }
    }

    /// The system account if it is known already: objects stored before accounts existed
    /// (with no account) are the system account's.
    fn stamp<S>(&self, obj: &mut Object<S>) {
        if obj.meta.account.is_nil()
            && let Some(system) = self.system.get()
        {
            obj.meta.account = *system;
        }
    }

    /// An object as stored, with its owner filled in (see [`Registry::stamp`]).
    pub fn decode_owned<S: serde::de::DeserializeOwned>(
        &self,
        kv: &KeyValue,
    ) -> Result<Object<S>, RegistryError> {
        let mut obj = decode(kv)?;
        self.stamp(&mut obj);
        Ok(obj)
    }

    /// The object of kind `S` with `uuid`, read from the store (never the cache), with its
    /// revision and owner filled in.
    pub async fn get<S: Spec>(&self, uuid: Uuid) -> Result<Object<S>, RegistryError> {
        let kv = self.store.get(&object_key(S::KIND, uuid)).await?;
        let kv = kv.ok_or(RegistryError::NotFound { kind: S::KIND, uuid })?;
        self.decode_owned(&kv)
    }

    /// The objects of kind `S` that pass `q`, ordered by ring, label and creation, with the
    /// revision they are as of: from the watch cache once it has caught up with the store's
    /// current revision (so a list sees every write acknowledged before it), else from the
    /// store.
    pub async fn list<S: Spec>(&self, q: &ListQuery) -> Result<(Vec<Object<S>>, i64), RegistryError> {
        let selector = parse_selector(q.selector.as_deref())?;
        if let Some(cache) = &self.cache {
            let current = self.store.current_revision().await?;
            if cache.wait_for(current, CACHE_PATIENCE).await {
                let filter = Filter { query: q, selector: &selector, system: self.system.get().copied() };
                let (mut items, revision) = cache.list::<S>(&filter)?;
                sort_listed(&mut items);
                return Ok((items, revision));
            }
            tracing::warn!(
                revision = current,
                cached = cache.revision(),
                "the watch cache is behind the store; listing from the store"
            );
        }
        let range = self.store.range(&kind_prefix(S::KIND)).await?;
        let mut items = Vec::new();
        for kv in &range.kvs {
            let obj: Object<S> = self.decode_owned(kv)?;
            let m = &obj.meta;
            let keep = q.account.is_none_or(|a| m.account == a)
                && q.ring.is_none_or(|r| m.ring == r)
                && q.label.as_ref().is_none_or(|l| m.label.as_ref() == Some(l))
                && q.compartment.is_none_or(|c| obj.spec.compartment() == Some(c))
                && q.tier.is_none_or(|t| obj.spec.tiers().contains(&t))
                && q.parent.is_none_or(|p| obj.spec.parent() == Some(p))
                && selector.iter().all(|(k, v)| m.labels.get(k) == Some(v));
            if keep {
                items.push(obj);
            }
        }
        sort_listed(&mut items);
        Ok((items, range.revision))
    }

    /// Create an object of kind `S` with a fresh uuid, in one transaction with everything it
    /// implies: its label index entry, its references (each target checked to exist, be of a ring
    /// it may refer to and belong to an account it may use), a node's port, an instance's uid
    /// and default limits, and an interface's addresses. Retried with backoff when something it
    /// read changed under it; [`RegistryError::Conflict`] when it keeps losing.
    pub async fn create<S: Spec>(
        &self,
        req: CreateRequest<S>,
        now: DateTime<Utc>,
    ) -> Result<Object<S>, RegistryError> {
        self.create_guarded(req, now, None).await
    }

    /// [`Registry::create`], only if `guard` is still as it was read (its key's revision, 0
    /// for absent), moving it in the same transaction: the commit of a check made on what the
    /// guard covers (an account's quota). [`RegistryError::GuardMoved`] at once when it moved.
    pub async fn create_guarded<S: Spec>(
        &self,
        req: CreateRequest<S>,
        now: DateTime<Utc>,
        guard: Option<&Guard>,
    ) -> Result<Object<S>, RegistryError> {
        let kind = S::KIND;
        check_meta(kind, req.label.as_deref(), &req.labels)?;
        req.spec.validate(req.ring)?;
        let uuid = Uuid::new_v4();
        let key = object_key(kind, uuid);
        // An account owns itself (its members may read it); anything else belongs to the
        // account named, or to the system account. The system account is the first account.
        // Before bootstrap (and in tests that never make one) there is no system account:
        // objects are then stored with no account, which reads as the system account's.
        let system = match self.system_account().await {
            Ok(s) => Some(s),
            Err(RegistryError::Unavailable(_)) => None,
            Err(e) => return Err(e),
        };
        let account = match kind {
            Kind::Account => uuid,
            // An observation belongs with what it observes, so that an instance's owner sees
            // its health.
            Kind::NodeObservation if req.account.is_none() => {
                self.owner_of_target(&req.spec).await?.or(system).unwrap_or_default()
            }
            _ => req.account.or(system).unwrap_or_default(),
        };
        let tenant = system.filter(|s| *s != account).map(|_| account);
        if let Some(t) = tenant
            && kind != Kind::Account
            && req.ring != Ring::PLATFORM
            && !matches!(kind, Kind::Role | Kind::Membership)
        {
            return Err(FieldError::new(
                "account",
                format!("ring {} objects belong to the system account, not to account {t}", req.ring),
            )
            .into());
        }
        let mut obj = Object {
            meta: ObjectMeta {
                uuid,
                kind,
                ring: req.ring,
                account,
                label: req.label,
                labels: req.labels,
                created_at: now,
                updated_at: now,
                revision: 0,
            },
            spec: req.spec,
        };
        let lkey = obj
            .meta
            .label
            .as_deref()
            .map(|l| label_key(kind, obj.meta.ring, obj.spec.compartment(), tenant, l));
        let owners = Owners { own: account, system: system.unwrap_or(account) };
        // An instance gets the default limits it leaves out, and a uid (chosen on each attempt).
        let mut instance = match kind {
            Kind::Node => self.new_instance(&mut obj.spec, obj.meta.ring)?,
            _ => None,
        };
        let requested = obj.spec.clone();
        // Attempts lost to anything but another create taking the next uid first: every
        // instance create moves the one uid counter, so with many at once most attempts lose
        // it, but each loss is another create's progress, not a livelock.
        let mut lost = 0;
        let mut attempt = 0;
        while lost < MAX_ATTEMPTS && attempt < MAX_ATTEMPTS + MAX_UID_RACES {
            backoff(attempt).await;
            attempt += 1;
            let resolved = self.resolve(obj.meta.ring, owners, obj.spec.references()).await?;
            // An interface without addresses gets one from its network's range (again on each
            // attempt: a concurrent create may have taken the one chosen last time).
            let addresses = match kind {
                Kind::NetworkInterface => {
                    obj.spec = requested.clone();
                    Some(self.assign_addresses(&mut obj.spec, &resolved).await?)
                }
                _ => None,
            };
            let uid = match &mut instance {
                Some(node) => Some(self.give_uid(node, &mut obj.spec).await?),
                None => None,
            };
            check_targets(&obj.spec, obj.meta.ring, &resolved)?;
            let (guards, guard_ops) = self.check_access_rule(uuid, account, system, &obj.spec).await?;
            let mut txn = Txn::new().when([Compare::absent(&key)]).when(guards).then(guard_ops);
            if let Some(g) = guard {
                txn = txn.when([g.compare()]).then([Op::put(&g.key, uuid.to_string())]);
            }
            let mut failure = Vec::new();
            if let Some(lkey) = &lkey {
                txn = txn.when([Compare::absent(lkey)]).then([Op::put(lkey, uuid.to_string())]);
                failure.push(Op::Get { key: lkey.clone() });
            }
            let ipam_keys: Vec<String> = addresses
                .as_ref()
                .map(|(network, addrs, _)| addrs.iter().map(|a| ipam::key(*network, *a)).collect())
                .unwrap_or_default();
            for k in &ipam_keys {
                txn = txn.when([Compare::absent(k)]).then([Op::put(k, uuid.to_string())]);
                failure.push(Op::Get { key: k.clone() });
            }
            let port = port_of_spec(&obj.spec);
            if let Some(p) = port {
                let k = ports::key(p);
                txn = txn.when([Compare::absent(&k)]).then([Op::put(&k, uuid.to_string())]);
                failure.push(Op::Get { key: k });
            }
            // Losing the uid to a concurrent create only means choosing again; the counter is
            // read back (last, so the indices above stay put) to tell that loss from others.
            if let Some(claim) = &uid {
                txn = claim.add_to(uuid, txn);
                failure.push(Op::Get { key: uids::NEXT.into() });
            }
            txn = txn.then_txn(add_refs(kind, uuid, &resolved));
            txn = txn.then([Op::put(&key, encode(&obj))]);
            let resp = self.commit(bump_auth(kind, txn).otherwise(failure)).await?;
            if resp.succeeded {
                obj.meta.revision = resp.revision;
                return Ok(obj);
            }
            if let Some(g) = guard
                && g.revision != self.store.get(&g.key).await?.map_or(0, |kv| kv.mod_revision)
            {
                return Err(RegistryError::GuardMoved(format!(
                    "{} changed while this write was checked; try again",
                    g.what
                )));
            }
            let skip = usize::from(lkey.is_some());
            if lkey.is_some()
                && let Some(OpResponse::Get { kv: Some(_) }) = resp.responses.first()
            {
                return Err(label_taken(kind, obj.meta.ring, obj.meta.label.as_deref()));
            }
            if let Some(p) = port
                && let Some(OpResponse::Get { kv: Some(held) }) = resp.responses.get(skip + ipam_keys.len())
            {
                return Err(FieldError::new(
                    "spec.run.port",
                    format!("port {p} is already held by node {}", String::from_utf8_lossy(&held.value)),
                )
                .into());
            }
            if let Some((_, addrs, auto)) = &addresses
                && !auto
            {
                for (i, r) in resp.responses.iter().skip(skip).enumerate() {
                    if let OpResponse::Get { kv: Some(held) } = r {
                        return Err(FieldError::new(
                            format!("spec.addresses[{i}]"),
                            format!(
                                "{} is already assigned to network interface {}",
                                addrs[i],
                                String::from_utf8_lossy(&held.value)
                            ),
                        )
                        .into());
                    }
                }
            }
            // A referenced object changed between resolving and committing, or an address or
            // uid chosen for us was taken meanwhile: resolve and choose again.
            let uid_raced = uid.as_ref().is_some_and(|claim| match resp.responses.last() {
                Some(OpResponse::Get { kv }) => {
                    kv.as_ref().map_or(0, |kv| kv.mod_revision) != claim.counter_revision
                }
                _ => false,
            });
            if !uid_raced {
                lost += 1;
            }
        }
        Err(busy(kind))
    }

    /// Replace an object's label, labels and spec, only if `req.revision` is still its revision
    /// (else [`RegistryError::Conflict`] on `revision`). What a kind forbids changing (a node's
    /// port or uid, what referrers rely on) is refused; the object's uuid, ring, account and
    /// creation time never change.
    pub async fn update<S: Spec>(
        &self,
        uuid: Uuid,
        req: UpdateRequest<S>,
        now: DateTime<Utc>,
    ) -> Result<Object<S>, RegistryError> {
        let kind = S::KIND;
        let key = object_key(kind, uuid);
        check_meta(kind, req.label.as_deref(), &req.labels)?;
        for attempt in 0..MAX_ATTEMPTS {
            backoff(attempt).await;
            let old: Object<S> = self.get(uuid).await?;
            let system = match self.system_account().await {
                Ok(s) => s,
                Err(RegistryError::Unavailable(_)) => Uuid::nil(),
                Err(e) => return Err(e),
            };
            let owners = Owners { own: old.meta.account, system };
            let tenant = Some(old.meta.account).filter(|a| *a != system);
            if old.meta.revision != req.revision {
                return Err(stale(kind, uuid, req.revision, old.meta.revision));
            }
            let ring = old.meta.ring;
            req.spec.validate(ring)?;
            req.spec.check_update(&old.spec)?;
            if port_of_spec(&req.spec) != port_of_spec(&old.spec) {
                return Err(FieldError::new(
                    "spec.run.port",
                    "a node's port cannot change: create a new node for a new port",
                )
                .into());
            }
            // What is stored: for a node, with the uid it holds (or a new one, if it has just
            // become an instance) and the default limits it leaves out.
            let mut spec = req.spec.clone();
            let uid = match kind {
                Kind::Node => self.updated_instance(&old.spec, &mut spec, ring).await?,
                _ => None,
            };
            let new_refs = spec.references();
            let old_refs = old.spec.references();
            let added: Vec<Reference> =
                new_refs.iter().filter(|r| !old_refs.iter().any(|o| same_target(o, r))).cloned().collect();
            let removed: Vec<&Reference> =
                old_refs.iter().filter(|o| !new_refs.iter().any(|r| same_target(o, r))).collect();
            // Every reference is checked against its target, but only new ones need guarding:
            // a target that is already referenced cannot be deleted or change ring.
            let resolved = self.resolve(ring, owners, new_refs.clone()).await?;
            check_targets(&spec, ring, &resolved)?;
            let (guards, guard_ops) =
                self.check_access_rule(uuid, old.meta.account, Some(system), &spec).await?;
            let mut txn =
                Txn::new().when([Compare::mod_revision(&key, req.revision)]).when(guards).then(guard_ops);
            let mut failure = vec![Op::Get { key: key.clone() }];
            let mut ipam_failures: Vec<(String, usize, IpAddr)> = Vec::new();
            if let Some(field) = spec.change_referrers_rely_on(&old.spec) {
                // Guarded like a delete: a reference added concurrently makes this retry.
                let guard_rev = self.store.get(&guard_key(uuid)).await?.map_or(0, |g| g.mod_revision);
                let referrers = self.store.range(&refs_prefix(uuid)).await?;
                if !referrers.kvs.is_empty() {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "cannot change while {} other object(s) refer to this {kind}; change or delete them first",
                            referrers.kvs.len()
                        ),
                    )
                    .into());
                }
                txn = txn.when([Compare::mod_revision(guard_key(uuid), guard_rev)]);
            }
            if kind == Kind::Compartment && spec.references() != old.spec.references() {
                let guard = self.check_compartment_graph(uuid, &spec).await?;
                txn = txn
                    .when([Compare::mod_revision(DAG_GUARD, guard)])
                    .then([Op::put(DAG_GUARD, uuid.to_string())]);
            }
            let old_lkey =
                old.meta.label.as_deref().map(|l| label_key(kind, ring, old.spec.compartment(), tenant, l));
            let new_lkey = req.label.as_deref().map(|l| label_key(kind, ring, spec.compartment(), tenant, l));
            if old_lkey != new_lkey {
                if let Some(k) = &old_lkey {
                    txn = txn.then([Op::delete(k)]);
                }
                if let Some(k) = &new_lkey {
                    txn = txn.when([Compare::absent(k)]).then([Op::put(k, uuid.to_string())]);
                    failure.push(Op::Get { key: k.clone() });
                }
            }
            let added_resolved: Vec<Resolved> =
                resolved.into_iter().filter(|r| added.iter().any(|a| same_target(a, &r.reference))).collect();
            txn = txn.then_txn(add_refs(kind, uuid, &added_resolved));
            txn = txn.then(removed.iter().map(|r| Op::delete(ref_key(r.uuid, kind, uuid))));
            if kind == Kind::NetworkInterface {
                let (txn2, held_at) = ipam_changes(uuid, &old.spec, &spec, txn)?;
                txn = txn2;
                ipam_failures = held_at;
                failure.extend(ipam_failures.iter().map(|(k, _, _)| Op::Get { key: k.clone() }));
            }
            // As on create, a uid lost to a concurrent write is chosen again on the next attempt.
            if let Some(claim) = &uid {
                txn = claim.add_to(uuid, txn);
            }
            let obj = Object {
                meta: ObjectMeta {
                    label: req.label.clone(),
                    labels: req.labels.clone(),
                    updated_at: now,
                    ..old.meta.clone()
                },
                spec,
            };
            txn = txn.then([Op::put(&key, encode(&obj))]);
            let resp = self.commit(bump_auth(kind, txn).otherwise(failure)).await?;
            if resp.succeeded {
                let mut obj = obj;
                obj.meta.revision = resp.revision;
                return Ok(obj);
            }
            match resp.responses.first() {
                Some(OpResponse::Get { kv: None }) => return Err(RegistryError::NotFound { kind, uuid }),
                Some(OpResponse::Get { kv: Some(kv) }) if kv.mod_revision != req.revision => {
                    return Err(stale(kind, uuid, req.revision, kv.mod_revision));
                }
                _ => {}
            }
            let label_checked = usize::from(old_lkey != new_lkey && new_lkey.is_some());
            if label_checked == 1
                && let Some(OpResponse::Get { kv: Some(_) }) = resp.responses.get(1)
            {
                return Err(label_taken(kind, ring, req.label.as_deref()));
            }
            for (n, (_, i, address)) in ipam_failures.iter().enumerate() {
                if let Some(OpResponse::Get { kv: Some(held) }) = resp.responses.get(1 + label_checked + n) {
                    return Err(FieldError::new(
                        format!("spec.addresses[{i}]"),
                        format!(
                            "{address} is already assigned to network interface {}",
                            String::from_utf8_lossy(&held.value)
                        ),
                    )
                    .into());
                }
            }
        }
        Err(busy(kind))
    }

    /// Delete an object. Objects that refer to it with a cascading reference (observations of a
    /// node) go with it; any other reference refuses the delete.
    pub async fn delete(&self, kind: Kind, uuid: Uuid, revision: Option<i64>) -> Result<(), RegistryError> {
        let key = object_key(kind, uuid);
        for attempt in 0..MAX_ATTEMPTS {
            backoff(attempt).await;
            let kv = self.store.get(&key).await?.ok_or(RegistryError::NotFound { kind, uuid })?;
            if let Some(rev) = revision
                && rev != kv.mod_revision
            {
                return Err(stale(kind, uuid, rev, kv.mod_revision));
            }
            let guard_rev = self.store.get(&guard_key(uuid)).await?.map_or(0, |g| g.mod_revision);
            let incoming = self.store.range(&refs_prefix(uuid)).await?;
            let mut txn = Txn::new().when([
                Compare::mod_revision(&key, kv.mod_revision),
                Compare::mod_revision(guard_key(uuid), guard_rev),
            ]);
            txn = txn.then(self.removal_ops(&kv)?);
            txn = txn.then([Op::DeletePrefix { prefix: refs_prefix(uuid) }]);
            for r in &incoming.kvs {
                let (source_kind, source) = parse_ref_key(&r.key)?;
                let record: RefRecord = serde_json::from_slice(&r.value)
                    .map_err(|e| RegistryError::Corrupt { key: r.key.clone(), error: e.to_string() })?;
                let source_kv = self.store.get(&object_key(source_kind, source)).await?;
                let Some(source_kv) = source_kv else { continue };
                if !record.cascade {
                    let label = decode::<serde_json::Value>(&source_kv)
                        .ok()
                        .and_then(|o| o.meta.label)
                        .map_or_else(String::new, |l| format!(" {l}"));
                    return Err(RegistryError::StillReferenced {
                        detail: format!(
                            "{kind} {uuid} is still referenced by {source_kind}{label} ({source}) in {}; \
                             change or delete that first",
                            record.field
                        ),
                    });
                }
                let nested = self.store.range(&refs_prefix(source)).await?;
                if let Some(n) = nested.kvs.first() {
                    let (k, u) = parse_ref_key(&n.key)?;
                    return Err(RegistryError::StillReferenced {
                        detail: format!(
                            "{kind} {uuid} would take {source_kind} {source} with it, which {k} {u} refers to"
                        ),
                    });
                }
                let source_guard = self.store.get(&guard_key(source)).await?.map_or(0, |g| g.mod_revision);
                txn = txn
                    .when([
                        Compare::mod_revision(object_key(source_kind, source), source_kv.mod_revision),
                        Compare::mod_revision(guard_key(source), source_guard),
                    ])
                    .then(self.removal_ops(&source_kv)?);
            }
            if self.commit(bump_auth(kind, txn)).await?.succeeded {
                return Ok(());
            }
        }
        Err(busy(kind))
    }

    /// The ops that remove one stored object and everything it wrote beside itself.
    fn removal_ops(&self, kv: &KeyValue) -> Result<Vec<Op>, RegistryError> {
        let obj: Object<serde_json::Value> = self.decode_owned(kv)?;
        let (kind, uuid) = (obj.meta.kind, obj.meta.uuid);
        let (refs, scope) = references_of(kind, &obj.spec)
            .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
        let mut ops = vec![Op::delete(&kv.key), Op::delete(guard_key(uuid))];
        if let Some(l) = &obj.meta.label {
            let tenant = Some(obj.meta.account).filter(|a| Some(a) != self.system.get());
            ops.push(Op::delete(label_key(kind, obj.meta.ring, scope, tenant, l)));
        }
        ops.extend(refs.iter().map(|r| Op::delete(ref_key(r.uuid, kind, uuid))));
        if kind == Kind::NetworkInterface
            && let Ok(iface) = serde_json::from_value::<NetworkInterfaceSpec>(obj.spec.clone())
        {
            ops.extend(iface.addresses.iter().map(|a| Op::delete(ipam::key(iface.network, *a))));
        }
        if kind == Kind::Node
            && let Ok(node) = serde_json::from_value::<NodeSpec>(obj.spec.clone())
            && let Some(run) = node.run
        {
            ops.extend(run.port.filter(|_| !run.own_network).map(|p| Op::delete(ports::key(p))));
            ops.extend(run.uid.map(|u| Op::delete(uids::key(u))));
        }
        Ok(ops)
    }

    /// For a node being created: refuses a uid the caller chose and, if it is an instance,
    /// fills the default limits it leaves out and returns it, to be given a uid on each attempt.
    /// An access rule's `target` and `peer_app` must name apps of the rule's account, and the
    /// rule must not contradict another of the account's rules in the same set
    /// ([`AccessRuleSpec::contradiction`]). Returns what the write's transaction must add: compares
    /// that keep each app name held by the account, and the rule set's guard (checked at the
    /// revision the other rules were read at, and bumped), so that of two contradicting rules
    /// written at once one commits and the other is tried again and refused here. Other kinds:
    /// nothing.
    async fn check_access_rule<S: Spec>(
        &self,
        uuid: Uuid,
        account: Uuid,
        system: Option<Uuid>,
        spec: &S,
    ) -> Result<(Vec<Compare>, Vec<Op>), RegistryError> {
        if S::KIND != Kind::AccessRule {
            return Ok((Vec::new(), Vec::new()));
        }
        let rule: AccessRuleSpec = serde_json::to_value(spec)
            .and_then(serde_json::from_value)
            .map_err(|e| RegistryError::Corrupt { key: object_key(S::KIND, uuid), error: e.to_string() })?;
        let mut compares = Vec::new();
        for (field, selector) in [("spec.target", &rule.target), ("spec.peer_app", &rule.peer_app)] {
            let Some(selector) = selector else { continue };
            let key = format!("{APP_NAMES}{}", selector.app);
            let owner = self.store.get(&key).await?.map(|kv| kv.value);
            if owner.as_deref() == Some(account.to_string().as_bytes()) {
                compares.push(Compare::value(&key, account.to_string()));
                continue;
            }
            // Apps of the system account made before names were claimed have no claim:
            // their app environment compartment stands for it.
            if owner.is_none()
                && system.is_none_or(|s| s == account)
                && self.legacy_app(&selector.app).await?
            {
                continue;
            }
            return Err(FieldError::new(
                field,
                format!("there is no app {} in account {account}", selector.app),
            )
            .into());
        }
        let guard = format!("{ACCESS_RULE_GUARDS}{}", rule.rule_set);
        let guard_rev = self.store.get(&guard).await?.map_or(0, |g| g.mod_revision);
        compares.push(Compare::mod_revision(&guard, guard_rev));
        let (rules, _) = self.list::<AccessRuleSpec>(&ListQuery::default()).await?;
        for other in rules.iter().filter(|o| o.meta.uuid != uuid && o.meta.account == account) {
            if let Some(field) = rule.contradiction(&other.spec) {
                let name = other.meta.label.clone().unwrap_or_else(|| other.meta.uuid.to_string());
                return Err(FieldError::new(
                    field,
                    format!(
                        "this rule contradicts access rule {name}: opposite actions at the same \
                         priority {} over overlapping traffic (the deny would always win); give \
                         one of them another priority",
                        rule.priority
                    ),
                )
                .into());
            }
        }
        Ok((compares, vec![Op::put(guard, uuid.to_string())]))
    }

    /// Whether the system account has an app environment compartment named `app`.
    async fn legacy_app(&self, app: &str) -> Result<bool, RegistryError> {
        let q =
            ListQuery { ring: Some(Ring::PLATFORM), label: Some(app.to_string()), ..ListQuery::default() };
        let (found, _) = self.list::<CompartmentSpec>(&q).await?;
        Ok(found.iter().any(|c| c.spec.compartment_type == CompartmentType::AppEnvironment))
    }

    fn new_instance<S: Spec>(&self, spec: &mut S, ring: Ring) -> Result<Option<NodeSpec>, RegistryError> {
        let mut node = node_of(spec)?;
        if node.run.as_ref().is_some_and(|r| r.uid.is_some()) {
            return Err(uid_reserved().into());
        }
        if !is_instance(ring, &node) {
            return Ok(None);
        }
        self.instances.fill(&mut node.resources);
        *spec = spec_of(&node)?;
        Ok(Some(node))
    }

    /// Choose a free uid for `node` and put it in `spec` (the node as it will be stored).
    async fn give_uid<S: Spec>(&self, node: &mut NodeSpec, spec: &mut S) -> Result<UidClaim, RegistryError> {
        let claim = self.choose_uid().await?;
        if let Some(run) = node.run.as_mut() {
            run.uid = Some(claim.uid);
        }
        *spec = spec_of(node)?;
        Ok(claim)
    }

    /// For a node being updated: the uid it holds stays (filled in when the update leaves it
    /// out, so a client that sends back a spec without it keeps working) and cannot be set or
    /// changed by the caller; a node that becomes an instance gets a uid now; an instance gets
    /// the default limits it leaves out, as on create.
    async fn updated_instance<S: Spec>(
        &self,
        old: &S,
        spec: &mut S,
        ring: Ring,
    ) -> Result<Option<UidClaim>, RegistryError> {
        let old_uid = node_of(old)?.run.and_then(|r| r.uid);
        let mut node = node_of(spec)?;
        let sent = node.run.as_ref().and_then(|r| r.uid);
        match (old_uid, sent) {
            (None, Some(_)) => return Err(uid_reserved().into()),
            (Some(held), Some(sent)) if sent != held => return Err(uid_fixed(held).into()),
            (Some(held), _) => match node.run.as_mut() {
                Some(run) => run.uid = Some(held),
                None => return Err(uid_fixed(held).into()),
            },
            _ => {}
        }
        let mut claim = None;
        if is_instance(ring, &node) {
            self.instances.fill(&mut node.resources);
            if old_uid.is_none() {
                let c = self.choose_uid().await?;
                if let Some(run) = node.run.as_mut() {
                    run.uid = Some(c.uid);
                }
                claim = Some(c);
            }
        }
        *spec = spec_of(&node)?;
        Ok(claim)
    }

    /// The next free uid, with the counter's revision it was chosen at.
    async fn choose_uid(&self) -> Result<UidClaim, RegistryError> {
        // One read, so the counter and the held uids are seen at the same revision.
        let range = self.store.range(uids::PREFIX).await?;
        let (mut next, mut counter_revision) = (None, 0);
        let mut held = HashSet::new();
        for kv in &range.kvs {
            if kv.key == uids::NEXT {
                next = uids::parse_next(&kv.value);
                counter_revision = kv.mod_revision;
            } else if let Some(u) = uids::uid_of(&kv.key) {
                held.insert(u);
            }
        }
        let start = next.unwrap_or(*self.uid_range.start());
        let uid = uids::first_free(start, &held, &self.uid_range).ok_or_else(|| {
            RegistryError::Unavailable(format!(
                "every instance uid ({}–{}) is taken; delete instances that are no longer needed",
                self.uid_range.start(),
                self.uid_range.end()
            ))
        })?;
        Ok(UidClaim { uid, counter_revision, next: uids::after(uid, &self.uid_range) })
    }

    /// For an interface: its network, its addresses (one chosen from the network's range when
    /// none were asked for) and whether they were chosen here.
    async fn assign_addresses<S: Spec>(
        &self,
        spec: &mut S,
        resolved: &[Resolved],
    ) -> Result<(Uuid, Vec<IpAddr>, bool), RegistryError> {
        let corrupt = |e: serde_json::Error| RegistryError::Corrupt {
            key: "interface spec".into(),
            error: e.to_string(),
        };
        let mut iface: NetworkInterfaceSpec =
            serde_json::to_value(&*spec).and_then(serde_json::from_value).map_err(corrupt)?;
        if !iface.addresses.is_empty() {
            return Ok((iface.network, iface.addresses, false));
        }
        let Some(network) = resolved.iter().find(|r| r.reference.kind == Kind::Network) else {
            return Ok((iface.network, Vec::new(), true));
        };
        let net: NetworkSpec = serde_json::from_value(network.target.spec.clone()).map_err(corrupt)?;
        let held = self.store.range(&ipam::prefix(iface.network)).await?;
        let used: HashSet<IpAddr> = held.kvs.iter().filter_map(|kv| ipam::address_of(&kv.key)).collect();
        let address = ipam::first_free(&net.cidr, &used).ok_or_else(|| {
            FieldError::new(
                "spec.network",
                format!("network {} has no free address left in {}", iface.network, net.cidr),
            )
        })?;
        iface.addresses = vec![address];
        *spec = serde_json::to_value(&iface).and_then(serde_json::from_value).map_err(corrupt)?;
        Ok((iface.network, iface.addresses, true))
    }

    /// Read every referenced object and check that it exists and sits in an allowed ring.
    /// Read what `refs` name. An object may refer to objects of its own account and of the
    /// system account (shared infrastructure and roles); another account's object is, to it,
    /// one that does not exist.
    async fn resolve(
        &self,
        ring: Ring,
        owners: Owners,
        refs: Vec<Reference>,
    ) -> Result<Vec<Resolved>, RegistryError> {
        let mut out = Vec::with_capacity(refs.len());
        for reference in refs {
            let kv = self.store.get(&object_key(reference.kind, reference.uuid)).await?;
            let missing = || {
                RegistryError::from(FieldError::new(
                    &reference.field,
                    format!("{} {} does not exist", reference.kind, reference.uuid),
                ))
            };
            let Some(kv) = kv else {
                return Err(missing());
            };
            let obj: Object<serde_json::Value> = self.decode_owned(&kv)?;
            if !owners.may_refer_to(&obj.meta) {
                return Err(missing());
            }
            if !reference.ring.allows(ring, obj.meta.ring) {
                return Err(FieldError::new(
                    &reference.field,
                    format!(
                        "{} {} is in ring {}, but it {}",
                        reference.kind,
                        reference.uuid,
                        obj.meta.ring,
                        reference.ring.describe(ring)
                    ),
                )
                .into());
            }
            let target =
                Target { kind: reference.kind, ring: obj.meta.ring, label: obj.meta.label, spec: obj.spec };
            out.push(Resolved { reference, target, revision: kv.mod_revision });
        }
        Ok(out)
    }

    /// Check that giving compartment `uuid` the parents in `spec` keeps the graph acyclic;
    /// returns the graph guard's revision the check was made at.
    async fn check_compartment_graph<S: Spec>(&self, uuid: Uuid, spec: &S) -> Result<i64, RegistryError> {
        let guard = self.store.get(DAG_GUARD).await?.map_or(0, |g| g.mod_revision);
        let range = self.store.range(&kind_prefix(Kind::Compartment)).await?;
        let mut graph: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        let mut labels: HashMap<Uuid, String> = HashMap::new();
        for kv in &range.kvs {
            let c: Object<enjin_model::kinds::CompartmentSpec> = decode(kv)?;
            labels.insert(c.meta.uuid, c.meta.label.clone().unwrap_or_default());
            graph.insert(c.meta.uuid, c.spec.parents);
        }
        let parents: Vec<Uuid> = spec
            .references()
            .into_iter()
            .filter(|r| r.field.starts_with("spec.parents"))
            .map(|r| r.uuid)
            .collect();
        if let Some(cycle) = dag::cycle_through(&graph, uuid, &parents) {
            let path: Vec<String> =
                cycle.iter().map(|u| labels.get(u).cloned().unwrap_or_else(|| u.to_string())).collect();
            return Err(FieldError::new(
                "spec.parents",
                format!(
                    "the compartment graph must stay acyclic; this would close the cycle {}",
                    path.join(" → ")
                ),
            )
            .into());
        }
        Ok(guard)
    }
}

/// Before a retry, wait a little, growing and jittered, so that writers racing for the same
/// guard do not keep colliding in lockstep.
async fn backoff(attempt: usize) {
    if attempt == 0 {
        return;
    }
    let ceiling_us = (500u64 << attempt.min(7)).min(50_000);
    let jitter = (Uuid::new_v4().as_u128() % u128::from(ceiling_us)) as u64;
    tokio::time::sleep(std::time::Duration::from_micros(ceiling_us / 2 + jitter / 2)).await;
}

/// The address reservations an interface update adds and releases, and, for each address it
/// adds, the key it needs free with the address's index (to name the field if it is taken).
#[allow(clippy::type_complexity, reason = "a private helper returning a transaction and its checks")]
fn ipam_changes<S: Spec>(
    uuid: Uuid,
    old: &S,
    new: &S,
    mut txn: Txn,
) -> Result<(Txn, Vec<(String, usize, IpAddr)>), RegistryError> {
    let read = |s: &S| {
        serde_json::to_value(s)
            .and_then(serde_json::from_value::<NetworkInterfaceSpec>)
            .map_err(|e| RegistryError::Corrupt { key: "interface spec".into(), error: e.to_string() })
    };
    let (old, new) = (read(old)?, read(new)?);
    let mut checks = Vec::new();
    for (i, a) in new.addresses.iter().enumerate() {
        if !(new.network == old.network && old.addresses.contains(a)) {
            let k = ipam::key(new.network, *a);
            txn = txn.when([Compare::absent(&k)]).then([Op::put(&k, uuid.to_string())]);
            checks.push((k, i, *a));
        }
    }
    for a in &old.addresses {
        if !(new.network == old.network && new.addresses.contains(a)) {
            txn = txn.then([Op::delete(ipam::key(old.network, *a))]);
        }
    }
    Ok((txn, checks))
}

fn same_target(a: &Reference, b: &Reference) -> bool {
    a.kind == b.kind && a.uuid == b.uuid
}

/// Compares and puts that record `source → target` for each resolved reference.
fn add_refs(kind: Kind, uuid: Uuid, resolved: &[Resolved]) -> Txn {
    let mut txn = Txn::new();
    let mut seen = Vec::new();
    for r in resolved {
        let target = r.reference.uuid;
        let record = RefRecord {
            field: r.reference.field.clone(),
            cascade: r.reference.on_delete == OnDelete::Cascade,
        };
        if seen.contains(&target) {
            continue;
        }
        seen.push(target);
        txn = txn.when([Compare::mod_revision(object_key(r.reference.kind, target), r.revision)]).then([
            Op::put(ref_key(target, kind, uuid), serde_json::to_vec(&record).unwrap_or_default()),
            Op::put(guard_key(target), uuid.to_string()),
        ]);
    }
    txn
}

trait TxnExt {
    fn then_txn(self, other: Txn) -> Txn;
}

impl TxnExt for Txn {
    fn then_txn(mut self, other: Txn) -> Txn {
        self.compare.extend(other.compare);
        self.success.extend(other.success);
        self
    }
}

fn check_targets<S: Spec>(spec: &S, ring: Ring, resolved: &[Resolved]) -> Result<(), FieldError> {
    let pairs: Vec<(Reference, Target)> =
        resolved.iter().map(|r| (r.reference.clone(), r.target.clone())).collect();
    spec.check_targets(ring, &pairs)
}

fn check_meta(kind: Kind, label: Option<&str>, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    match label {
        Some(l) => validate_label(l).map_err(|m| FieldError::new("label", format!("{l:?} {m}")))?,
        None if kind.named() => {
            return Err(FieldError::new("label", format!("a {kind} needs a label (its name)")));
        }
        None => {}
    }
    validate_labels(labels)
}

/// The order of lists: by ring, then label, then creation.
fn sort_listed<S>(items: &mut [Object<S>]) {
    items.sort_by(|a, b| {
        (a.meta.ring, &a.meta.label, a.meta.created_at).cmp(&(b.meta.ring, &b.meta.label, b.meta.created_at))
    });
}

fn parse_selector(s: Option<&str>) -> Result<Vec<(String, String)>, FieldError> {
    let Some(s) = s.filter(|s| !s.is_empty()) else { return Ok(Vec::new()) };
    s.split(',')
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| FieldError::new("selector", format!("{pair:?} is not key=value")))
        })
        .collect()
}

fn parse_ref_key(key: &str) -> Result<(Kind, Uuid), RegistryError> {
    let corrupt = || RegistryError::Corrupt { key: key.to_string(), error: "malformed reference key".into() };
    let mut parts = key.trim_start_matches('/').split('/');
    let (_, _, kind, source) = (parts.next(), parts.next(), parts.next(), parts.next());
    let kind: Kind = kind.and_then(|k| k.parse().ok()).ok_or_else(corrupt)?;
    let source: Uuid = source.and_then(|s| s.parse().ok()).ok_or_else(corrupt)?;
    Ok((kind, source))
}

fn label_taken(kind: Kind, ring: Ring, label: Option<&str>) -> RegistryError {
    RegistryError::conflict(
        Some("label"),
        format!(
            "a {kind} labelled {:?} already exists in ring {ring} in the same compartment",
            label.unwrap_or("")
        ),
    )
}

fn stale(kind: Kind, uuid: Uuid, sent: i64, current: i64) -> RegistryError {
    RegistryError::conflict(
        Some("revision"),
        format!(
            "{kind} {uuid} has changed: you sent revision {sent}, it is now at {current}; get it again and retry"
        ),
    )
}

fn busy(kind: Kind) -> RegistryError {
    RegistryError::conflict(None, format!("the {kind} kept changing under this write; retry"))
}

#[cfg(test)]
mod tests {
    use enjin_model::kinds::{Resources, RunSpec, Strategy};
    use enjin_store::{SqliteStore, SqliteStoreConfig};

    use super::*;
    use crate::ApiError;

    /// A registry over a fresh store whose instance uids come from `uids`, and a ring 1 host
    /// to put instances under.
    async fn registry(uids: RangeInclusive<u32>) -> (Registry, Uuid, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            SqliteStore::open(SqliteStoreConfig::new(dir.path().join("state.db"))).expect("open the store");
        let mut registry = Registry::new(Arc::new(store));
        registry.uid_range = uids;
        let now = Utc::now();
        let machine = CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some("m1".into()),
            labels: BTreeMap::new(),
            spec: NodeSpec::default(),
        };
        let machine = registry.create(machine, now).await.expect("machine");
        let host = NodeSpec {
            parent: Some(machine.meta.uuid),
            strategy: Some(Strategy::Netns),
            ..NodeSpec::default()
        };
        let host = CreateRequest {
            account: None,
            ring: Ring::INFRASTRUCTURE,
            label: Some("h1".into()),
            labels: BTreeMap::new(),
            spec: host,
        };
        let host = registry.create(host, now).await.expect("host");
        (registry, host.meta.uuid, dir)
    }

    fn instance(host: Uuid, label: &str) -> CreateRequest<NodeSpec> {
        let run = RunSpec {
            command: vec!["/bin/true".into()],
            env: BTreeMap::new(),
            restart: Default::default(),
            probe: None,
            stop_grace_seconds: 1,
            package: None,
            port: None,
            uid: None,
            own_network: false,
        };
        let spec = NodeSpec {
            parent: Some(host),
            strategy: Some(Strategy::UnixUser),
            run: Some(run),
            ..NodeSpec::default()
        };
        CreateRequest {
            account: None,
            ring: Ring::PLATFORM,
            label: Some(label.into()),
            labels: BTreeMap::new(),
            spec,
        }
    }

    fn uid(node: &Object<NodeSpec>) -> Option<u32> {
        node.spec.run.as_ref().and_then(|r| r.uid)
    }

    #[tokio::test]
    async fn uids_run_out_with_503_and_come_back_only_after_a_wrap() {
        let (registry, host, _dir) = registry(100..=102).await;
        let now = Utc::now();
        let a = registry.create(instance(host, "a"), now).await.expect("a");
        let b = registry.create(instance(host, "b"), now).await.expect("b");
        assert_eq!((uid(&a), uid(&b)), (Some(100), Some(101)));
        // Released before the counter reaches its end: 100 is not handed out again yet.
        registry.delete(Kind::Node, a.meta.uuid, None).await.expect("delete a");
        let c = registry.create(instance(host, "c"), now).await.expect("c");
        assert_eq!(uid(&c), Some(102));
        // Wrapped around: 100 is free, 101 and 102 are held.
        let d = registry.create(instance(host, "d"), now).await.expect("d");
        assert_eq!(uid(&d), Some(100));
        let full = registry.create(instance(host, "e"), now).await.expect_err("no uid left");
        assert!(matches!(&full, RegistryError::Unavailable(m) if m.contains("100–102")), "{full:?}");
        assert_eq!(ApiError::from(full).status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        // Nothing of the refused create was written.
        assert!(registry.store.get(&uids::key(103)).await.expect("read").is_none());
    }

    #[tokio::test]
    async fn non_instances_get_no_uid_and_no_limits() {
        let (registry, host, _dir) = registry(uids::RANGE).await;
        let mut bare = instance(host, "bare");
        bare.spec.run = None;
        let bare = registry.create(bare, Utc::now()).await.expect("create");
        assert_eq!(bare.spec.resources, Resources::default());
        let mut plain = instance(host, "plain");
        plain.spec.strategy = Some(Strategy::Process);
        let plain = registry.create(plain, Utc::now()).await.expect("create");
        assert_eq!(uid(&plain), None);
        assert_eq!(plain.spec.resources, Resources::default());
        assert!(registry.store.range(uids::PREFIX).await.expect("read").kvs.is_empty());
    }
}
