//! Controllers in the shape kube-rs gives them: a [`Reconciler`] says which keys a change of
//! the [`WatchCache`] concerns and brings one key's world to what the model wants, returning
//! an [`Action`]; [`Controllers`] runs each on a queue that coalesces a burst of changes into
//! one reconcile per key, requeues when asked, backs off after errors, and stops them all as a
//! unit.
//!
//! Invariants: a reconcile is level-triggered — it reads what is, never what changed, so
//! running it twice, late or after a missed change is harmless; one key is never reconciled by
//! two tasks at once (each controller has one worker); after a lagged change stream or a
//! wake-up every key is reconciled again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cache::{Change, WatchCache};

/// What to do with a key after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something it reads changes.
    Done,
    /// Look again after this long, whatever changes (a deadline in the object's future).
    RequeueAfter(Duration),
}

/// A reconcile that failed; the key is tried again after a growing delay.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(pub String);

impl ReconcileError {
    /// A failure described by `e`'s `Display` text, which is what the warning logs.
    pub fn new(e: impl std::fmt::Display) -> Self {
        ReconcileError(e.to_string())
    }
}

/// The first delay after a failed reconcile; it doubles per failure of the same key up to
/// [`BACKOFF_MAX`], and a success resets it.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest delay between retries of a key whose reconciles keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One controller: what it watches, and how it reconciles one key.
pub trait Reconciler: Send + Sync + 'static {
    /// What one reconcile is about (an app, a node). Keys are coalesced while queued, so a key
    /// waits in the queue at most once.
    type Key: Clone + Eq + Hash + Ord + Debug + Send + Sync + 'static;

    /// The controller's name, for logs.
    fn name(&self) -> &'static str;

    /// The keys a change concerns (empty for kinds it does not read).
    fn keys_of(&self, change: &Change) -> Vec<Self::Key>;

    /// Every key, reconciled at start, after a lagged change stream, a wake-up or a resync.
    fn all_keys(&self) -> impl Future<Output = Result<Vec<Self::Key>, ReconcileError>> + Send;

    /// Bring `key` to what the model wants. Must be idempotent.
    fn reconcile(&self, key: &Self::Key) -> impl Future<Output = Result<Action, ReconcileError>> + Send;

    /// Reconcile every key this often as well, for what the cache cannot see (a hub that lost
    /// its retained messages); `None` for never.
    fn resync(&self) -> Option<Duration> {
        None
    }

    /// Something outside the cache whose every change means "reconcile everything" (the bus
    /// connecting again).
    fn wake(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// The keys waiting to be reconciled: now (in order, each once) or at a time.
struct Queue<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    later: BTreeMap<(Instant, u64), K>,
    due: HashMap<K, (Instant, u64)>,
    seq: u64,
}

impl<K: Clone + Eq + Hash + Ord> Queue<K> {
    fn new() -> Self {
        Queue {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            later: BTreeMap::new(),
            due: HashMap::new(),
            seq: 0,
        }
    }

    fn now(&mut self, key: K) {
        if let Some(at) = self.due.remove(&key) {
            self.later.remove(&at);
        }
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// At `at`, unless it is waiting already (now, or earlier).
    fn at(&mut self, key: K, at: Instant) {
        if self.queued.contains(&key) || self.due.get(&key).is_some_and(|(t, _)| *t <= at) {
            return;
        }
        if let Some(old) = self.due.remove(&key) {
            self.later.remove(&old);
        }
        self.seq += 1;
        self.later.insert((at, self.seq), key.clone());
        self.due.insert(key, (at, self.seq));
    }

    fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.later.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.due.remove(&key);
            self.now(key);
        }
    }

    fn pop(&mut self) -> Option<K> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    fn next_due(&self) -> Option<Instant> {
        self.later.keys().next().map(|(t, _)| *t)
    }
}

/// Controllers started together and stopped together.
#[derive(Debug)]
pub struct Controllers {
    cache: Arc<WatchCache>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Controllers {
    /// Controllers woken by `cache`'s changes; none runs until [`Controllers::start`].
    pub fn new(cache: Arc<WatchCache>) -> Self {
        Controllers { cache, stop: watch::channel(false).0, tasks: Vec::new() }
    }

    /// Start `reconciler` on its own task.
    pub fn start<R: Reconciler>(&mut self, reconciler: R) {
        let name = reconciler.name();
        let changes = self.cache.subscribe();
        let stopping = self.stop.subscribe();
        self.tasks.push((name, tokio::spawn(run(Arc::new(reconciler), changes, stopping))));
    }

    /// Stop every controller (a reconcile in progress is cut at its next await) and wait for
    /// their tasks to end.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(controller = name, error = %e, "a controller ended badly");
            }
        }
    }

    /// Stop every controller without waiting for them.
    pub fn signal_stop(&self) {
        self.stop.send_replace(true);
    }
}

async fn run<R: Reconciler>(
    r: Arc<R>,
    mut changes: tokio::sync::broadcast::Receiver<Arc<Change>>,
    mut stopping: watch::Receiver<bool>,
) {
    let name = r.name();
    let mut queue = Queue::new();
    let mut failures: HashMap<R::Key, u32> = HashMap::new();
    let mut resync = r.resync().map(|every| tokio::time::interval_at(Instant::now() + every, every));
    let mut wake = r.wake();
    if let Some(w) = wake.as_mut() {
        w.borrow_and_update();
    }
    let mut everything = true;
    tracing::debug!(controller = name, "controller started");
    loop {
        if *stopping.borrow() {
            break;
        }
        // Take every change announced so far, so that a burst is one reconcile per key.
        loop {
            match changes.try_recv() {
                Ok(c) => r.keys_of(&c).into_iter().for_each(|k| queue.now(k)),
                Err(TryRecvError::Lagged(_)) => everything = true,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        if std::mem::take(&mut everything) {
            match r.all_keys().await {
                Ok(keys) => keys.into_iter().for_each(|k| queue.now(k)),
                Err(e) => {
                    tracing::warn!(controller = name, error = %e, "cannot list the controller's keys");
                    everything = true;
                }
            }
        }
        queue.promote(Instant::now());
        if let Some(key) = queue.pop() {
            let outcome = tokio::select! {
                outcome = r.reconcile(&key) => outcome,
                _ = stopping.wait_for(|s| *s) => break,
            };
            match outcome {
                Ok(action) => {
                    failures.remove(&key);
                    if let Action::RequeueAfter(after) = action {
                        queue.at(key, Instant::now() + after);
                    }
                }
                Err(e) => {
                    let n = failures.entry(key.clone()).or_default();
                    *n = n.saturating_add(1);
                    let delay = BACKOFF_FIRST.saturating_mul(1 << (*n - 1).min(16)).min(BACKOFF_MAX);
                    tracing::warn!(controller = name, ?key, error = %e, retry_ms = delay.as_millis() as u64, "reconcile failed");
                    queue.at(key, Instant::now() + delay);
                }
            }
            continue;
        }
        let next = queue.next_due();
        let everything_failed = everything;
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            change = changes.recv() => match change {
                Ok(c) => r.keys_of(&c).into_iter().for_each(|k| queue.now(k)),
                Err(RecvError::Lagged(_)) => everything = true,
                Err(RecvError::Closed) => return,
            },
            () = sleep_until(next) => {}
            () = tick(resync.as_mut()) => everything = true,
            () = woken(wake.as_mut()) => everything = true,
            // Listing the keys failed: try again shortly.
            () = tokio::time::sleep(BACKOFF_FIRST), if everything_failed => {}
        }
    }
    tracing::debug!(controller = name, "controller stopped");
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn woken(wake: Option<&mut watch::Receiver<u64>>) {
    match wake {
        Some(w) => {
            if w.changed().await.is_err() {
                // The sender is gone: nothing will wake us again.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use chrono::Utc;
    use enjin_model::api::{CreateRequest, UpdateRequest};
    use enjin_model::kinds::NodeSpec;
    use enjin_model::{Kind, Ring};
    use enjin_store::{SqliteStore, SqliteStoreConfig};
    use uuid::Uuid;

    use super::*;
    use crate::Registry;

    /// Records every reconcile; a node labelled `fail=N` fails its first N reconciles, one
    /// labelled `every=MS` asks to be looked at again after MS, three times.
    struct Recorder {
        registry: Registry,
        seen: Arc<Mutex<Vec<(Uuid, Instant)>>>,
    }

    impl Reconciler for Recorder {
        type Key = Uuid;

        fn name(&self) -> &'static str {
            "recorder"
        }

        fn keys_of(&self, change: &Change) -> Vec<Uuid> {
            if change.kind == Kind::Node { vec![change.uuid] } else { Vec::new() }
        }

        async fn all_keys(&self) -> Result<Vec<Uuid>, ReconcileError> {
            Ok(Vec::new())
        }

        async fn reconcile(&self, key: &Uuid) -> Result<Action, ReconcileError> {
            let runs = {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.push((*key, Instant::now()));
                seen.iter().filter(|(k, _)| k == key).count()
            };
            let Ok(node) = self.registry.get::<NodeSpec>(*key).await else { return Ok(Action::Done) };
            let number = |l: &str| node.meta.labels.get(l).and_then(|v| v.parse::<usize>().ok());
            if number("fail").is_some_and(|n| runs <= n) {
                return Err(ReconcileError::new("asked to fail"));
            }
            match number("every") {
                Some(ms) if runs < 4 => Ok(Action::RequeueAfter(Duration::from_millis(ms as u64))),
                _ => Ok(Action::Done),
            }
        }
    }

    fn node(label: &str, labels: &[(&str, &str)]) -> CreateRequest<NodeSpec> {
        CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some(label.into()),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            spec: NodeSpec::default(),
        }
    }

    #[tokio::test]
    async fn a_controller_coalesces_requeues_backs_off_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(SqliteStore::open(SqliteStoreConfig::new(dir.path().join("s.db"))).expect("store"));
        let (_stop, stopping) = watch::channel(false);
        let cache = WatchCache::start(store.clone(), stopping);
        let registry = Registry::new(store.clone()).with_cache(Arc::clone(&cache));
        assert!(cache.wait_for(0, Duration::from_secs(5)).await);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut controllers = Controllers::new(Arc::clone(&cache));
        controllers.start(Recorder { registry: registry.clone(), seen: Arc::clone(&seen) });
        let now = Utc::now();
        let start = Instant::now();
        let failing = registry.create(node("failing", &[("fail", "2")]), now).await.expect("node");
        let periodic = registry.create(node("periodic", &[("every", "150")]), now).await.expect("node");
        let mut busy = registry.create(node("busy", &[]), now).await.expect("node");
        let mut last_write = Duration::ZERO;
        for i in 0..20 {
            last_write = Instant::now() - start;
            let labels = BTreeMap::from([("i".to_string(), i.to_string())]);
            let req = UpdateRequest {
                revision: busy.meta.revision,
                label: busy.meta.label.clone(),
                labels,
                spec: busy.spec,
            };
            busy = registry.update(busy.meta.uuid, req, now).await.expect("update");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let runs = |key: Uuid| -> Vec<Duration> {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.iter().filter(|(k, _)| *k == key).map(|(_, t)| *t - start).collect()
        };
        // Failed twice, then retried after 200 ms and 400 ms more: three runs.
        let f = runs(failing.meta.uuid);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(
            f[1].saturating_sub(f[0]) >= BACKOFF_FIRST && f[2].saturating_sub(f[1]) >= BACKOFF_FIRST * 2,
            "{f:?}"
        );
        // Asked to come back three times, 150 ms apart.
        let p = runs(periodic.meta.uuid);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.windows(2).all(|w| w[1].saturating_sub(w[0]) >= Duration::from_millis(150)), "{p:?}");
        // 21 writes in a burst: at most one reconcile each (fewer when they come faster than
        // it reconciles), the last after the last write was sent.
        let b = runs(busy.meta.uuid);
        assert!(b.len() <= 21 && b.last().is_some_and(|t| *t >= last_write), "{b:?}");
        controllers.stop().await;
        let before = seen.lock().unwrap_or_else(|p| p.into_inner()).len();
        registry.create(node("after-stop", &[]), now).await.expect("node");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(seen.lock().unwrap_or_else(|p| p.into_inner()).len(), before, "nothing runs after stop");
    }

    #[test]
    fn the_queue_holds_each_key_once_and_keeps_the_earliest_time() {
        let mut q = Queue::new();
        let t0 = Instant::now();
        q.now(1);
        q.now(1);
        q.now(2);
        q.at(3, t0 + Duration::from_secs(5));
        q.at(3, t0 + Duration::from_secs(2));
        q.at(3, t0 + Duration::from_secs(9));
        // Already waiting to run now: a later time changes nothing.
        q.at(1, t0 + Duration::from_secs(1));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(2)));
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(1), Some(2), None));
        q.promote(t0 + Duration::from_secs(1));
        assert_eq!(q.pop(), None);
        q.promote(t0 + Duration::from_secs(2));
        assert_eq!((q.pop(), q.next_due()), (Some(3), None));
        // Due later, then wanted now: it runs now, once.
        q.at(4, t0 + Duration::from_secs(3));
        q.now(4);
        q.promote(t0 + Duration::from_secs(4));
        assert_eq!((q.pop(), q.pop()), (Some(4), None));
    }
}
