//! The watch cache: every object of the registry in memory, kept by one watch of the store —
//! a reflector, as kube-rs and the Kubernetes API server have one. It lists `/registry/` once,
//! then applies the store's changes from that list's revision on, and lists again when the
//! watch ends or falls behind compaction.
//!
//! Lists are answered from it ([`crate::Registry::list`]) through indexes on parent, label
//! pairs and account, so a list with a selector costs what it returns, not what the kind holds;
//! controllers are woken by its [`Change`]s. A list is as fresh as the store: it first waits
//! until the cache has applied the store's current revision (the Kubernetes API server's
//! consistent read from cache), so a client that has just written sees its write.
//!
//! Invariant: the cache only ever moves forward — its revision is that of the last store batch
//! it applied, and every object in it is as of that revision.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use enjin_model::api::ListQuery;
use enjin_model::kinds::Spec;
use enjin_model::{Kind, Object, ObjectMeta, with_spec_type};
use enjin_store::{EventKind, KeyValue, Revision, Store, WatchBatch};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::registry::{REGISTRY_PREFIX, RegistryError, decode};

/// How many changes a slow subscriber may fall behind before it is told it lagged (and must
/// look at everything again).
const CHANGES_BUFFERED: usize = 4096;
/// The first wait before listing again after a failed list or watch; it doubles to
/// [`RELIST_MAX_DELAY`].
const RELIST_FIRST_DELAY: Duration = Duration::from_millis(100);
const RELIST_MAX_DELAY: Duration = Duration::from_secs(5);

/// One object as the cache holds it: decoded once, with what lists filter on drawn out.
pub struct Entry {
    /// The object's metadata (kind, uuid, ring, account, label, labels, revision).
    pub meta: ObjectMeta,
    /// The compartment the object is in ([`Spec::compartment`]); `None` for kinds outside one.
    pub compartment: Option<Uuid>,
    /// The tiers the object serves ([`Spec::tiers`]); empty for kinds without tiers.
    pub tiers: Vec<Uuid>,
    /// The object's parent ([`Spec::parent`]): what the parent index and `parent` filters use.
    pub parent: Option<Uuid>,
    /// The `Object<S>` of the entry's kind.
    object: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("kind", &self.meta.kind).field("uuid", &self.meta.uuid).finish()
    }
}

impl Entry {
    fn decode(kind: Kind, kv: &KeyValue) -> Result<Entry, RegistryError> {
        with_spec_type!(kind, S => {
            let obj: Object<S> = decode(kv)?;
            Ok(Entry {
                meta: obj.meta.clone(),
                compartment: obj.spec.compartment(),
                tiers: obj.spec.tiers().to_vec(),
                parent: obj.spec.parent(),
                object: Box::new(obj),
            })
        })
    }

    /// The object, if it is of kind `S`.
    pub fn object<S: Spec>(&self) -> Option<&Object<S>> {
        self.object.downcast_ref()
    }
}

/// What one store revision did to one object.
#[derive(Debug, Clone)]
pub struct Change {
    /// The object's kind.
    pub kind: Kind,
    /// The object's uuid.
    pub uuid: Uuid,
    /// The store revision of the change; after a relist, the list's revision for every difference
    /// it found.
    pub revision: Revision,
    /// The object as the cache held it before; `None` when it is new to the cache.
    pub old: Option<Arc<Entry>>,
    /// The object now; `None` when it was deleted, or when what is stored no longer decodes
    /// (lists of its kind then fail naming it).
    pub new: Option<Arc<Entry>>,
}

/// The objects of one kind and their indexes.
#[derive(Default)]
struct KindIndex {
    objects: HashMap<Uuid, Arc<Entry>>,
    by_parent: HashMap<Uuid, BTreeSet<Uuid>>,
    by_label: HashMap<(String, String), BTreeSet<Uuid>>,
    by_account: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Stored objects that do not decode, by uuid: lists of the kind fail naming the first.
    corrupt: HashMap<Uuid, (String, String)>,
}

impl KindIndex {
    fn insert(&mut self, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        let uuid = entry.meta.uuid;
        let old = self.remove(uuid);
        if let Some(p) = entry.parent {
            self.by_parent.entry(p).or_default().insert(uuid);
        }
        for (k, v) in &entry.meta.labels {
            self.by_label.entry((k.clone(), v.clone())).or_default().insert(uuid);
        }
        self.by_account.entry(entry.meta.account).or_default().insert(uuid);
        self.objects.insert(uuid, entry);
        old
    }

    fn remove(&mut self, uuid: Uuid) -> Option<Arc<Entry>> {
        self.corrupt.remove(&uuid);
        let old = self.objects.remove(&uuid)?;
        fn drop_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<Uuid>>, key: &K, uuid: Uuid) {
            if let Some(set) = map.get_mut(key) {
                set.remove(&uuid);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        if let Some(p) = old.parent {
            drop_from(&mut self.by_parent, &p, uuid);
        }
        for (k, v) in &old.meta.labels {
            drop_from(&mut self.by_label, &(k.clone(), v.clone()), uuid);
        }
        drop_from(&mut self.by_account, &old.meta.account, uuid);
        Some(old)
    }
}

#[derive(Default)]
struct State {
    kinds: HashMap<Kind, KindIndex>,
    /// The store revision the cache reflects; 0 before the first list.
    revision: Revision,
}

impl State {
    /// Put or delete the object at `key`; the change, if the key is an object's.
    fn apply(&mut self, key: &str, kv: Option<&KeyValue>, revision: Revision) -> Option<Change> {
        let (kind, uuid) = object_of_key(key)?;
        let index = self.kinds.entry(kind).or_default();
        let (old, new) = match kv {
            Some(kv) => match Entry::decode(kind, kv) {
                Ok(entry) => {
                    let entry = Arc::new(entry);
                    (index.insert(Arc::clone(&entry)), Some(entry))
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "a stored object does not decode");
                    let old = index.remove(uuid);
                    index.corrupt.insert(uuid, (key.to_string(), e.to_string()));
                    (old, None)
                }
            },
            None => (index.remove(uuid), None),
        };
        Some(Change { kind, uuid, revision, old, new })
    }
}

/// `/registry/<kind>/<uuid>` → (kind, uuid); anything else under the prefix is not an object.
fn object_of_key(key: &str) -> Option<(Kind, Uuid)> {
    let rest = key.strip_prefix(REGISTRY_PREFIX)?;
    let (kind, uuid) = rest.split_once('/')?;
    Some((kind.parse().ok()?, uuid.parse().ok()?))
}

/// Every object of the registry, in memory, kept up to date by [`WatchCache::reflect`].
pub struct WatchCache {
    state: RwLock<State>,
    applied: watch::Sender<Revision>,
    changes: broadcast::Sender<Arc<Change>>,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache").field("revision", &*self.applied.borrow()).finish()
    }
}

/// The filters of a list, parsed.
pub(crate) struct Filter<'a> {
    pub query: &'a ListQuery,
    pub selector: &'a [(String, String)],
    /// The system account, which owns objects stored with none.
    pub system: Option<Uuid>,
}

impl WatchCache {
    /// An empty cache; [`WatchCache::reflect`] fills it.
    pub fn new() -> Arc<WatchCache> {
        Arc::new(WatchCache {
            state: RwLock::default(),
            applied: watch::channel(0).0,
            changes: broadcast::channel(CHANGES_BUFFERED).0,
        })
    }

    /// A cache of `store`, kept by a task until `stopping` turns true.
    pub fn start(store: Arc<dyn Store>, stopping: watch::Receiver<bool>) -> Arc<WatchCache> {
        let cache = WatchCache::new();
        tokio::spawn(Arc::clone(&cache).reflect(store, stopping));
        cache
    }

    /// The store revision the cache reflects (0 before its first list).
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Changes from now on. A receiver that lags must treat every object as changed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Wait until the cache reflects `revision` or later; false after `patience`.
    pub async fn wait_for(&self, revision: Revision, patience: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        matches!(tokio::time::timeout(patience, applied.wait_for(|r| *r >= revision)).await, Ok(Ok(_)))
    }

    /// List, then watch from the list's revision, until `stopping`; list again whenever the
    /// watch fails (compacted history, a closed store), waiting longer after each failure.
    pub async fn reflect(self: Arc<Self>, store: Arc<dyn Store>, mut stopping: watch::Receiver<bool>) {
        let mut delay = RELIST_FIRST_DELAY;
        loop {
            let why = tokio::select! {
                why = self.list_and_watch(store.as_ref(), &mut delay) => why,
                _ = stopping.wait_for(|s| *s) => return,
            };
            tracing::warn!(reason = %why, delay_ms = delay.as_millis() as u64, "the watch cache lists the store again");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(RELIST_MAX_DELAY);
        }
    }

    /// One list and the watch after it; returns why the watch ended.
    async fn list_and_watch(&self, store: &dyn Store, delay: &mut Duration) -> String {
        let range = match store.range(REGISTRY_PREFIX).await {
            Ok(r) => r,
            Err(e) => return format!("list failed: {e}"),
        };
        self.replace(&range.kvs, range.revision);
        // Every revision, not only the registry's: the cache's revision must reach the store's
        // for a consistent read, whatever key the last write touched.
        let mut watch = match store.watch("", range.revision + 1).await {
            Ok(w) => w,
            Err(e) => return format!("watch failed: {e}"),
        };
        *delay = RELIST_FIRST_DELAY;
        loop {
            match watch.recv().await {
                Some(Ok(batch)) => self.apply(&batch),
                Some(Err(e)) => return format!("watch ended: {e}"),
                None => return "watch ended".into(),
            }
        }
    }

    /// Take a whole list as the new state, and tell subscribers what differs from the old.
    fn replace(&self, kvs: &[KeyValue], revision: Revision) {
        let mut fresh = State { kinds: HashMap::new(), revision };
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            for kv in kvs {
                fresh.apply(&kv.key, Some(kv), revision);
            }
            for (kind, index) in &fresh.kinds {
                let before = state.kinds.get(kind);
                for (uuid, entry) in &index.objects {
                    let old = before.and_then(|b| b.objects.get(uuid));
                    if old.is_none_or(|o| o.meta.revision != entry.meta.revision) {
                        changes.push(Change {
                            kind: *kind,
                            uuid: *uuid,
                            revision,
                            old: old.cloned(),
                            new: Some(Arc::clone(entry)),
                        });
                    }
                }
            }
            for (kind, index) in &state.kinds {
                let after = fresh.kinds.get(kind);
                for (uuid, entry) in &index.objects {
                    if after.is_none_or(|a| !a.objects.contains_key(uuid)) {
                        changes.push(Change {
                            kind: *kind,
                            uuid: *uuid,
                            revision,
                            old: Some(Arc::clone(entry)),
                            new: None,
                        });
                    }
                }
            }
            *state = fresh;
        }
        self.applied.send_replace(revision);
        for c in changes {
            let _ = self.changes.send(Arc::new(c));
        }
    }

    fn apply(&self, batch: &WatchBatch) {
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            for event in &batch.events {
                let kv = match event.kind {
                    EventKind::Put => Some(&event.kv),
                    EventKind::Delete => None,
                };
                if let Some(c) = state.apply(&event.kv.key, kv, batch.revision) {
                    changes.push(c);
                }
            }
            state.revision = state.revision.max(batch.revision);
        }
        self.applied.send_if_modified(|r| {
            let moved = batch.revision > *r;
            *r = (*r).max(batch.revision);
            moved
        });
        for c in changes {
            let _ = self.changes.send(Arc::new(c));
        }
    }

    /// The objects of kind `S` that pass `filter`, unsorted, with the revision they are as of.
    pub(crate) fn list<S: Spec>(
        &self,
        filter: &Filter<'_>,
    ) -> Result<(Vec<Object<S>>, Revision), RegistryError> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let Some(index) = state.kinds.get(&S::KIND) else { return Ok((Vec::new(), state.revision)) };
        if let Some((key, error)) = index.corrupt.values().next() {
            return Err(RegistryError::Corrupt { key: key.clone(), error: error.clone() });
        }
        let q = filter.query;
        let nil = Uuid::nil();
        // The narrowest index the query allows.
        let candidates: Box<dyn Iterator<Item = &Uuid>> = if let Some(p) = q.parent {
            Box::new(index.by_parent.get(&p).into_iter().flatten())
        } else if let Some((k, v)) = filter.selector.first() {
            Box::new(index.by_label.get(&(k.clone(), v.clone())).into_iter().flatten())
        } else if let Some(a) = q.account {
            let stored_as_nil = (filter.system == Some(a)).then(|| index.by_account.get(&nil)).flatten();
            Box::new(
                index.by_account.get(&a).into_iter().flatten().chain(stored_as_nil.into_iter().flatten()),
            )
        } else {
            Box::new(index.objects.keys())
        };
        let mut items = Vec::new();
        for uuid in candidates {
            let Some(e) = index.objects.get(uuid) else { continue };
            let m = &e.meta;
            let account = if m.account.is_nil() { filter.system.unwrap_or(nil) } else { m.account };
            let keep = q.account.is_none_or(|a| account == a)
                && q.ring.is_none_or(|r| m.ring == r)
                && q.label.as_ref().is_none_or(|l| m.label.as_ref() == Some(l))
                && q.compartment.is_none_or(|c| e.compartment == Some(c))
                && q.tier.is_none_or(|t| e.tiers.contains(&t))
                && q.parent.is_none_or(|p| e.parent == Some(p))
                && filter.selector.iter().all(|(k, v)| m.labels.get(k) == Some(v));
            if keep && let Some(obj) = e.object::<S>() {
                let mut obj = obj.clone();
                obj.meta.account = account;
                items.push(obj);
            }
        }
        Ok((items, state.revision))
    }

    /// The objects of `kind` whose parent is `parent`.
    pub fn children(&self, kind: Kind, parent: Uuid) -> Vec<Uuid> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let index = state.kinds.get(&kind);
        index.and_then(|k| k.by_parent.get(&parent)).map_or_else(Vec::new, |c| c.iter().copied().collect())
    }

    /// How many objects of `kind` the cache holds.
    pub fn len(&self, kind: Kind) -> usize {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.kinds.get(&kind).map_or(0, |k| k.objects.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use chrono::Utc;
    use enjin_model::Ring;
    use enjin_model::api::{CreateRequest, UpdateRequest};
    use enjin_model::kinds::{NodeSpec, Strategy};
    use enjin_store::{
        Lease, LeaseId, RangeResponse, SqliteStore, SqliteStoreConfig, StoreError, Txn, TxnResponse,
        WatchError, WatchStream,
    };

    use super::*;
    use crate::Registry;

    fn store() -> (Arc<SqliteStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            SqliteStore::open(SqliteStoreConfig::new(dir.path().join("state.db"))).expect("open the store");
        (Arc::new(store), dir)
    }

    fn node(
        ring: Ring,
        label: &str,
        parent: Option<Uuid>,
        labels: &[(&str, &str)],
    ) -> CreateRequest<NodeSpec> {
        CreateRequest {
            account: None,
            ring,
            label: Some(label.into()),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            // Nodes of ring 1 need a way to be supervised.
            spec: NodeSpec {
                parent,
                strategy: (ring == Ring::INFRASTRUCTURE).then_some(Strategy::Netns),
                ..NodeSpec::default()
            },
        }
    }

    fn ids(items: &[Object<NodeSpec>]) -> Vec<(Uuid, i64)> {
        items.iter().map(|o| (o.meta.uuid, o.meta.revision)).collect()
    }

    #[tokio::test]
    async fn lists_from_the_cache_are_the_lists_of_the_store() {
        let (store, _dir) = store();
        let (stop, stopping) = watch::channel(false);
        let plain = Registry::new(store.clone());
        let cached = Registry::new(store.clone()).with_cache(WatchCache::start(store.clone(), stopping));
        let now = Utc::now();
        let mut hosts = Vec::new();
        for h in 0..3 {
            let machine = node(Ring::META, &format!("m{h}"), None, &[("zone", "a")]);
            hosts.push(plain.create(machine, now).await.expect("machine"));
        }
        let mut made = Vec::new();
        for i in 0..60 {
            let app = format!("app{}", i % 4);
            let parity = if i % 2 == 0 { "even" } else { "odd" };
            let labels = [("app", app.as_str()), ("parity", parity)];
            let req = node(Ring::INFRASTRUCTURE, &format!("n{i:02}"), Some(hosts[i % 3].meta.uuid), &labels);
            made.push(plain.create(req, now).await.expect("node"));
        }
        // Changes after the cache's first list: deletes, and labels moved between selectors.
        for o in made.iter().step_by(7) {
            plain.delete(Kind::Node, o.meta.uuid, None).await.expect("delete");
        }
        for o in made.iter().skip(1).step_by(5) {
            let mut labels = o.meta.labels.clone();
            labels.insert("app".into(), "moved".into());
            let req = UpdateRequest {
                revision: o.meta.revision,
                label: o.meta.label.clone(),
                labels,
                spec: o.spec.clone(),
            };
            // Some were deleted above: their updates fail, in both views alike.
            let _ = plain.update(o.meta.uuid, req, now).await;
        }
        let queries = [
            ListQuery::default(),
            ListQuery { parent: Some(hosts[1].meta.uuid), ..ListQuery::default() },
            ListQuery { selector: Some("app=app2".into()), ..ListQuery::default() },
            ListQuery { selector: Some("app=moved,parity=odd".into()), ..ListQuery::default() },
            ListQuery { selector: Some("app=nothing".into()), ..ListQuery::default() },
            ListQuery { ring: Some(Ring::META), ..ListQuery::default() },
            ListQuery { label: Some("n03".into()), ..ListQuery::default() },
            ListQuery {
                parent: Some(hosts[2].meta.uuid),
                selector: Some("parity=even".into()),
                ..ListQuery::default()
            },
            ListQuery { account: Some(Uuid::new_v4()), ..ListQuery::default() },
        ];
        for q in &queries {
            let (want, _) = plain.list::<NodeSpec>(q).await.expect("store list");
            let (got, revision) = cached.list::<NodeSpec>(q).await.expect("cached list");
            assert_eq!(ids(&got), ids(&want), "{q:?}");
            assert!(revision >= store.current_revision().await.expect("revision"));
        }
        let everything = plain.list::<NodeSpec>(&ListQuery::default()).await.expect("list").0;
        assert_eq!(everything.len(), 3 + 60 - 9, "60 nodes, 9 of them deleted");
        stop.send_replace(true);
    }

    #[tokio::test]
    async fn a_list_right_after_a_write_sees_the_write() {
        let (store, _dir) = store();
        let (_stop, stopping) = watch::channel(false);
        let registry = Registry::new(store.clone()).with_cache(WatchCache::start(store.clone(), stopping));
        let now = Utc::now();
        for i in 0..40 {
            let label = format!("n{i}");
            let created =
                registry.create(node(Ring::META, &label, None, &[("i", &label)]), now).await.expect("node");
            let q = ListQuery { selector: Some(format!("i={label}")), ..ListQuery::default() };
            let (items, _) = registry.list::<NodeSpec>(&q).await.expect("list");
            assert_eq!(ids(&items), vec![(created.meta.uuid, created.meta.revision)], "write {i}");
            registry.delete(Kind::Node, created.meta.uuid, None).await.expect("delete");
            assert!(registry.list::<NodeSpec>(&q).await.expect("list").0.is_empty(), "delete {i}");
        }
    }

    #[tokio::test]
    async fn changes_carry_the_object_before_and_after() {
        let (store, _dir) = store();
        let (_stop, stopping) = watch::channel(false);
        let cache = WatchCache::start(store.clone(), stopping);
        let registry = Registry::new(store.clone()).with_cache(Arc::clone(&cache));
        assert!(cache.wait_for(store.current_revision().await.expect("rev"), Duration::from_secs(5)).await);
        let mut changes = cache.subscribe();
        let now = Utc::now();
        let made = registry.create(node(Ring::META, "a", None, &[("v", "1")]), now).await.expect("node");
        let c = changes.recv().await.expect("created");
        assert_eq!((c.kind, c.uuid, c.old.is_none()), (Kind::Node, made.meta.uuid, true));
        let labels = BTreeMap::from([("v".to_string(), "2".to_string())]);
        let req = UpdateRequest {
            revision: made.meta.revision,
            label: made.meta.label.clone(),
            labels,
            spec: made.spec.clone(),
        };
        registry.update(made.meta.uuid, req, now).await.expect("update");
        let c = changes.recv().await.expect("updated");
        let label = |e: &Option<Arc<Entry>>| e.as_ref().and_then(|e| e.meta.labels.get("v").cloned());
        assert_eq!((label(&c.old), label(&c.new)), (Some("1".into()), Some("2".into())));
        registry.delete(Kind::Node, made.meta.uuid, None).await.expect("delete");
        let c = changes.recv().await.expect("deleted");
        assert!(c.new.is_none() && c.old.is_some());
        assert_eq!(cache.len(Kind::Node), 0);
    }

    /// A store whose first watches fail as if their start had been compacted away.
    #[derive(Debug)]
    struct Compacting {
        inner: Arc<SqliteStore>,
        fail_watches: AtomicUsize,
        ranges: AtomicUsize,
    }

    #[async_trait]
    impl Store for Compacting {
        async fn current_revision(&self) -> Result<Revision, StoreError> {
            self.inner.current_revision().await
        }
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.inner.get(key).await
        }
        async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
            self.ranges.fetch_add(1, Ordering::SeqCst);
            self.inner.range(prefix).await
        }
        async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
            self.inner.txn(txn).await
        }
        async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
            let failing = self.fail_watches.load(Ordering::SeqCst);
            if failing > 0 {
                self.fail_watches.store(failing - 1, Ordering::SeqCst);
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.try_send(Err(WatchError::Compacted { requested: from, compacted: from + 1 }));
                return Ok(rx);
            }
            self.inner.watch(prefix, from).await
        }
        async fn lease_grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
            self.inner.lease_grant(ttl).await
        }
        async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, StoreError> {
            self.inner.lease_keep_alive(id).await
        }
        async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
            self.inner.lease_revoke(id).await
        }
        async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
            self.inner.compact(revision).await
        }
        async fn compacted_revision(&self) -> Result<Revision, StoreError> {
            self.inner.compacted_revision().await
        }
        async fn close(&self) -> Result<(), StoreError> {
            self.inner.close().await
        }
    }

    #[tokio::test]
    async fn a_watch_cut_by_compaction_lists_again_and_misses_nothing() {
        let (inner, _dir) = store();
        let plain = Registry::new(inner.clone());
        let now = Utc::now();
        let before = plain.create(node(Ring::META, "before", None, &[]), now).await.expect("node");
        let store =
            Arc::new(Compacting { inner, fail_watches: AtomicUsize::new(2), ranges: AtomicUsize::new(0) });
        let (stop, stopping) = watch::channel(false);
        let cache = WatchCache::start(store.clone(), stopping);
        let registry = Registry::new(store.clone()).with_cache(Arc::clone(&cache));
        let after = plain.create(node(Ring::META, "after", None, &[]), now).await.expect("node");
        let (items, _) = registry.list::<NodeSpec>(&ListQuery::default()).await.expect("list");
        let mut want = vec![before.meta.uuid, after.meta.uuid];
        want.sort();
        let mut got: Vec<Uuid> = items.iter().map(|o| o.meta.uuid).collect();
        got.sort();
        assert_eq!(got, want);
        // Two failed watches, two lists again, then one watch that holds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.ranges.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.ranges.load(Ordering::SeqCst), 3);
        let later = plain.create(node(Ring::META, "later", None, &[]), now).await.expect("node");
        assert!(cache.wait_for(later.meta.revision, Duration::from_secs(5)).await);
        assert_eq!(cache.len(Kind::Node), 3);
        stop.send_replace(true);
    }
}
