//! Leader election among control-plane servers that share one store, as Kubernetes' controller
//! managers elect one through a lease object and etcd's own election recipe does: a server leads
//! while a key it put under a lease of its own exists; it renews the lease at a third of its
//! TTL; it steps down when a renewal fails or when the TTL has passed since the last one that
//! succeeded (so a server cut off from the store stops acting before another can lead); the
//! others watch the key and campaign when it goes.
//!
//! Leading is proven by a [`Fence`]: the revision at which the leader's key was written. Every
//! write made under leadership carries `mod_revision(key) == fence` as one more compare (see
//! [`crate::registry::Registry::fenced`]), so a deposed leader's writes fail even when it does
//! not know yet that it was deposed: the key it wrote is gone or rewritten by then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use enjin_store::{Compare, EventKind, Op, OpResponse, Store, StoreError, Txn};
use tokio::sync::watch;

/// The key whose holder runs the controllers.
pub const CONTROLLERS_KEY: &str = "/leader/controllers";

/// How long a leader's lease lives without renewal: the most a dead leader delays the next
/// (the goal is a hand-over within 2 s). etcd keeps whole seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

/// Proof of leadership: the leader key and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader key.
    pub key: String,
    /// The revision at which this leader wrote it.
    pub revision: i64,
}

impl Fence {
    /// The compare every fenced write carries.
    pub fn compare(&self) -> Compare {
        Compare::mod_revision(&self.key, self.revision)
    }

    /// Whether the leader key is still this leader's (read now).
    pub async fn holds(&self, store: &dyn Store) -> Result<bool, StoreError> {
        Ok(store.get(&self.key).await?.is_some_and(|kv| kv.mod_revision == self.revision))
    }
}

/// One server's candidacy.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The leader key.
    pub key: String,
    /// Who this server is (written as the key's value, for `enjin` to show).
    pub id: String,
    /// The lease's TTL.
    pub ttl: Duration,
}

impl Candidate {
    /// A candidate for running the controllers.
    pub fn controllers(id: impl Into<String>) -> Candidate {
        Candidate { key: CONTROLLERS_KEY.into(), id: id.into(), ttl: DEFAULT_TTL }
    }
}

/// Campaign until `stop` is set: the returned receiver holds `Some(fence)` while this server
/// leads and `None` otherwise. On stop, a leader gives the key up at once (revokes its lease),
/// so the next server does not wait for the TTL.
pub fn campaign(
    store: Arc<dyn Store>,
    who: Candidate,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<Option<Fence>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut failures = 0u32;
        while !*stop.borrow() {
            match term(&store, &who, &tx, &mut stop).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    tx.send_replace(None);
                    failures = failures.saturating_add(1);
                    tracing::warn!(key = %who.key, error = %e, "leader election: store unavailable; trying again");
                    let pause = who.ttl.mul_f64(0.25 * f64::from(failures.min(8)));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
            }
        }
        tx.send_replace(None);
    });
    rx
}

/// One try: lead until the lease is lost or `stop`, or follow until the key goes.
async fn term(
    store: &Arc<dyn Store>,
    who: &Candidate,
    tx: &watch::Sender<Option<Fence>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let lease = store.lease_grant(who.ttl).await?;
    let granted = Instant::now();
    let txn = Txn::new()
        .when([Compare::absent(&who.key)])
        .then([Op::put_with_lease(&who.key, who.id.as_bytes().to_vec(), lease.id)])
        .otherwise([Op::get(&who.key)]);
    let resp = match store.txn(txn).await {
        Ok(r) => r,
        Err(e) => {
            let _ = store.lease_revoke(lease.id).await;
            return Err(e);
        }
    };
    if resp.succeeded {
        let fence = Fence { key: who.key.clone(), revision: resp.revision };
        tracing::info!(key = %who.key, id = %who.id, revision = resp.revision, "leading");
        tx.send_replace(Some(fence.clone()));
        let outcome = hold(store, who, &fence, lease.id, granted, stop).await;
        tx.send_replace(None);
        let stopping = *stop.borrow();
        if stopping {
            // Handing over at once instead of after the TTL.
            let _ = store.lease_revoke(lease.id).await;
            tracing::info!(key = %who.key, id = %who.id, "stepped down");
        }
        return outcome;
    }
    let _ = store.lease_revoke(lease.id).await;
    let holder = match resp.responses.first() {
        Some(OpResponse::Get { kv: Some(kv) }) => {
            Some((String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision))
        }
        _ => None,
    };
    let Some((leader, written)) = holder else { return Ok(()) };
    tracing::debug!(key = %who.key, %leader, "following");
    follow(store, who, written, resp.revision, stop).await
}

/// Renew the lease at a third of the TTL until it is lost, the key is no longer this leader's,
/// or `stop`. A renewal the store does not answer in time counts as lost once 90 % of the TTL
/// has passed since the last one it did.
/// How long a failed renewal waits before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

async fn hold(
    store: &Arc<dyn Store>,
    who: &Candidate,
    fence: &Fence,
    lease: enjin_store::LeaseId,
    granted: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut renewed = granted;
    let mut renewals = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(who.ttl / 3) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        // The lease may expire at `renewed + ttl`; stop acting a little before. Until then a
        // renewal that fails or hangs (on a member that lost its cluster, a connection that
        // went silent) is tried again, each try bounded by a third of the TTL.
        let deadline = renewed + who.ttl.mul_f64(0.9);
        let renewal = async {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left.min(who.ttl / 3), store.lease_keep_alive(lease)).await {
                    Ok(Ok(l)) => return Ok(l),
                    Ok(Err(e @ StoreError::LeaseNotFound(_))) => return Err(e),
                    Ok(Err(e)) => {
                        tracing::debug!(key = %who.key, error = %e, "renewing the leader lease failed; trying again");
                        tokio::time::sleep(RETRY_PAUSE.min(left)).await;
                    }
                    Err(_) => {
                        tracing::debug!(key = %who.key, "a renewal of the leader lease hung; trying again")
                    }
                }
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, renewal).await {
            Ok(Ok(_)) => {
                renewed = Instant::now();
                renewals = renewals.wrapping_add(1);
                // The key itself may have gone (an operator deleted it): then so has the lead.
                // Looked at once per TTL; fenced writes fail at once either way.
                if renewals.is_multiple_of(3) && !fence.holds(store.as_ref()).await? {
                    tracing::warn!(key = %who.key, "the leader key is no longer this server's; stepping down");
                    return Ok(());
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(key = %who.key, error = %e, "lost the leader lease");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!(key = %who.key, "the store did not renew the leader lease in time; stepping down");
                return Ok(());
            }
        }
    }
}

/// Wait until the leader key written at `written` is deleted or rewritten (then campaign
/// again), re-reading it at each TTL in case the watch missed it.
async fn follow(
    store: &Arc<dyn Store>,
    who: &Candidate,
    written: i64,
    seen: i64,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut events = store.watch(&who.key, seen + 1).await?;
    loop {
        let gone = tokio::select! {
            batch = events.recv() => match batch {
                Some(Ok(batch)) => batch
                    .events
                    .iter()
                    .any(|e| e.kv.key == who.key && (e.kind == EventKind::Delete || e.kv.mod_revision != written)),
                // An ended watch: campaign again, which reads the key.
                Some(Err(_)) | None => true,
            },
            _ = tokio::time::sleep(who.ttl) => false,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        if gone || store.get(&who.key).await?.is_none_or(|kv| kv.mod_revision != written) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use enjin_model::Ring;
    use enjin_model::api::CreateRequest;
    use enjin_model::kinds::NodeSpec;
    use enjin_store::{SqliteStore, SqliteStoreConfig};

    use super::*;
    use crate::registry::{Registry, RegistryError};

    /// What keeps a test's store alive: its directory, or its etcd.
    #[allow(dead_code, reason = "held only to keep the store alive")]
    enum Keep {
        Dir(tempfile::TempDir),
        Etcd(enjin_testkit::EtcdServer),
    }

    fn store() -> (Arc<dyn Store>, Keep) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(SqliteStoreConfig::new(dir.path().join("s.db"))).expect("store");
        (Arc::new(store), Keep::Dir(dir))
    }

    /// A store on an etcd of the test's own (which grants leases in whole seconds, 2 s at least).
    async fn etcd() -> (Arc<dyn Store>, Keep) {
        let server = enjin_testkit::EtcdServer::start();
        let config = enjin_store::EtcdStoreConfig::new([server.endpoint()]);
        let store = enjin_store::EtcdStore::connect(config).await.expect("etcd answers");
        (Arc::new(store), Keep::Etcd(server))
    }

    fn who(id: &str) -> Candidate {
        Candidate { key: CONTROLLERS_KEY.into(), id: id.into(), ttl: Duration::from_millis(600) }
    }

    async fn until_leads(rx: &mut watch::Receiver<Option<Fence>>, within: Duration) -> Fence {
        tokio::time::timeout(within, rx.wait_for(Option::is_some))
            .await
            .expect("leads in time")
            .expect("campaigning")
            .clone()
            .expect("a fence")
    }

    fn machine(label: &str) -> CreateRequest<NodeSpec> {
        CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some(label.into()),
            labels: BTreeMap::new(),
            spec: NodeSpec::default(),
        }
    }

    #[tokio::test]
    async fn one_leads_and_the_next_takes_over_when_it_steps_down() {
        let (store, _keep) = store();
        takes_over_when_it_steps_down(store).await;
    }

    #[tokio::test]
    async fn on_etcd_one_leads_and_the_next_takes_over_when_it_steps_down() {
        let (store, _keep) = etcd().await;
        takes_over_when_it_steps_down(store).await;
    }

    async fn takes_over_when_it_steps_down(store: Arc<dyn Store>) {
        let (stop_a, stop_a_rx) = watch::channel(false);
        let mut a = campaign(store.clone(), who("a"), stop_a_rx);
        let fa = until_leads(&mut a, Duration::from_secs(5)).await;
        let (_stop_b, stop_b_rx) = watch::channel(false);
        let mut b = campaign(store.clone(), who("b"), stop_b_rx);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(b.borrow().is_none(), "two leaders at once");
        assert_eq!(a.borrow().as_ref(), Some(&fa), "the leader kept its term");
        // A leader that stops hands over at once, not after its TTL.
        let stepped = Instant::now();
        stop_a.send_replace(true);
        let fb = until_leads(&mut b, Duration::from_secs(5)).await;
        assert!(stepped.elapsed() < Duration::from_millis(400), "hand-over took {:?}", stepped.elapsed());
        assert!(fb.revision > fa.revision);
        assert!(a.borrow().is_none());
    }

    #[test]
    fn a_dead_leader_is_replaced_within_its_ttl() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let dying = dying_runtime();
        let (store, _keep) = {
            let _in = rt.enter();
            store()
        };
        let took = dead_leader_replaced(&rt, dying, store.clone(), store);
        // The lease outlives its holder by at most its TTL; the follower reads the key at least
        // once per TTL.
        assert!(took <= Duration::from_millis(600) * 2 + Duration::from_millis(300), "took {took:?}");
    }

    #[test]
    fn on_etcd_a_dead_leader_is_replaced_within_its_ttl() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let dying = dying_runtime();
        let (b, keep) = rt.block_on(etcd());
        let Keep::Etcd(server) = &keep else { unreachable!() };
        // Each server has its own connection, made on its own runtime.
        let config = enjin_store::EtcdStoreConfig::new([server.endpoint()]);
        let a: Arc<dyn Store> =
            Arc::new(dying.block_on(enjin_store::EtcdStore::connect(config)).expect("a's connection"));
        let took = dead_leader_replaced(&rt, dying, a, b);
        // etcd's least TTL (2 s with its default election timeout), and its expiry check.
        assert!(took <= Duration::from_millis(3500), "took {took:?}");
    }

    /// The runtime a leader runs on and dies with (dropped without stepping down).
    fn dying_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt")
    }

    /// How long after the leader's runtime died the next leads.
    fn dead_leader_replaced(
        rt: &tokio::runtime::Runtime,
        dying: tokio::runtime::Runtime,
        store_a: Arc<dyn Store>,
        store_b: Arc<dyn Store>,
    ) -> Duration {
        let (_stop_a, stop_a_rx) = watch::channel(false);
        let mut a = dying.block_on(async { campaign(store_a, who("a"), stop_a_rx) });
        dying.block_on(until_leads(&mut a, Duration::from_secs(5)));
        let (_stop_b, stop_b_rx) = watch::channel(false);
        let mut b = rt.block_on(async { campaign(store_b, who("b"), stop_b_rx) });
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
        assert!(b.borrow().is_none());
        let died = Instant::now();
        drop(dying);
        rt.block_on(until_leads(&mut b, Duration::from_secs(15)));
        died.elapsed()
    }

    #[tokio::test]
    async fn a_deposed_leaders_writes_fail_and_the_new_leaders_land() {
        let (store, _keep) = store();
        deposed_leaders_writes_fail(store).await;
    }

    #[tokio::test]
    async fn on_etcd_a_deposed_leaders_writes_fail_and_the_new_leaders_land() {
        let (store, _keep) = etcd().await;
        deposed_leaders_writes_fail(store).await;
    }

    async fn deposed_leaders_writes_fail(store: Arc<dyn Store>) {
        let (_stop_a, stop_a_rx) = watch::channel(false);
        let mut a = campaign(store.clone(), who("a"), stop_a_rx);
        let fa = until_leads(&mut a, Duration::from_secs(5)).await;
        let registry = Registry::new(store.clone());
        let old = registry.fenced(fa.clone());
        old.create(machine("m0"), Utc::now()).await.expect("the leader writes");
        // The leader is cut off: its key goes (as when its lease expires) and b leads, before
        // a has noticed.
        store.txn(Txn::new().then([Op::delete(CONTROLLERS_KEY)])).await.expect("delete");
        let (_stop_b, stop_b_rx) = watch::channel(false);
        let mut b = campaign(store.clone(), who("b"), stop_b_rx);
        let fb = until_leads(&mut b, Duration::from_secs(5)).await;
        match old.create(machine("m1"), Utc::now()).await {
            Err(RegistryError::Fenced(msg)) => assert!(msg.contains("no longer leads"), "{msg}"),
            other => panic!("a deposed leader's write: {other:?}"),
        }
        let new = registry.fenced(fb);
        new.create(machine("m1"), Utc::now()).await.expect("the new leader writes");
        // The old leader learns it too, at its next renewal.
        let _ = tokio::time::timeout(Duration::from_secs(5), a.wait_for(Option::is_none))
            .await
            .expect("a steps down");
    }
}
