//! Certificates that stop counting, and state that outlives the hub: how long after a member's
//! key stops being trusted the hub closes its connection (the admission check runs every
//! 250 ms on each connection), and how long after reconnecting to a restarted hub each member
//! has its retained desired set again, with the hub's retained directory on disk, nobody
//! publishing the state meanwhile and a flood of other traffic on the hub.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use enjin_bus::acl::Role;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::hub::{Admission, Hub, HubConfig};
use enjin_bus::identity::{Identity, KeyId};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::Transport;
use enjin_pki::RingCa;
use tokio::sync::oneshot;

/// Revocations measured, and members of the restart row.
pub const REVOCATIONS: usize = 50;
pub const MEMBERS: usize = 200;
const QUICK_REVOCATIONS: usize = 5;
const QUICK_MEMBERS: usize = 20;
/// Messages of other traffic published while the members come back.
const FLOOD: u32 = 20_000;
const PATIENCE: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(86_400);

/// One row: a sorted sample of durations.
pub struct StandingRow {
    pub name: &'static str,
    pub times: Vec<Duration>,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl StandingRow {
    pub fn quantile(&self, q: f64) -> Duration {
        if self.times.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.times.len() - 1) as f64 * q).round() as usize;
        self.times[i.min(self.times.len() - 1)]
    }

    pub fn max(&self) -> Duration {
        self.times.last().copied().unwrap_or_default()
    }

    /// Why the row fails its goal (1 s at the worst), or had errors.
    pub fn failure(&self) -> Option<String> {
        if self.errors > 0 {
            return Some(format!(
                "{} errors, first: {}",
                self.errors,
                self.first_error.clone().unwrap_or_default()
            ));
        }
        (self.max() > Duration::from_secs(1)).then(|| format!("worst {:?}, goal 1 s", self.max()))
    }

    fn new(name: &'static str, results: Vec<Result<Duration, String>>) -> Self {
        let mut row = StandingRow { name, times: Vec::new(), errors: 0, first_error: None };
        for r in results {
            match r {
                Ok(t) => row.times.push(t),
                Err(e) => {
                    row.errors += 1;
                    row.first_error.get_or_insert(e);
                }
            }
        }
        row.times.sort();
        row
    }
}

pub async fn rows(quick: bool) -> anyhow::Result<Vec<StandingRow>> {
    let (revocations, members) =
        if quick { (QUICK_REVOCATIONS, QUICK_MEMBERS) } else { (REVOCATIONS, MEMBERS) };
    let ca = RingCa::generate(1).context("failed to generate the benchmark ring CA")?;
    Ok(vec![revocation(&ca, revocations).await?, restart(&ca, members).await?])
}

fn material(ca: &RingCa, cn: &str, key: Option<&KeyId>) -> anyhow::Result<TlsMaterial> {
    let issued = match key {
        Some(k) => ca.issue_bound(cn, &k.to_string(), DAY)?,
        None => ca.issue(cn, &["localhost".into(), "127.0.0.1".into()], DAY)?,
    };
    Ok(TlsMaterial { ca_pem: ca.cert_pem().into(), cert_pem: issued.cert_pem, key_pem: issued.key_pem })
}

/// A host's member: common name `host:<uuid from the key>`, bound to a fresh key.
fn host(ca: &RingCa) -> anyhow::Result<(KeyId, String, TlsMaterial)> {
    let key = Identity::generate()?.key_id();
    let h: String = key.to_string().chars().take(32).collect();
    let node = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    let tls = material(ca, &format!("host:{node}"), Some(&key))?;
    Ok((key, node, tls))
}

/// Admits the parent's components and the keys in `allowed`, as the key service's check does.
fn admission(allowed: &Arc<RwLock<HashSet<KeyId>>>) -> Admission {
    let allowed = allowed.clone();
    Arc::new(move |member, key| {
        if member.role() == Role::Parent {
            return Ok(());
        }
        match key {
            Some(k) if allowed.read().map(|a| a.contains(k)).unwrap_or(false) => Ok(()),
            _ => Err("not admitted".to_owned()),
        }
    })
}

/// A running hub and how to stop it.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(
        addr: SocketAddr,
        tls: &TlsMaterial,
        config: HubConfig,
        admission: Admission,
    ) -> anyhow::Result<Running> {
        let hub =
            Hub::bind(addr, tls, config).await.with_context(|| format!("failed to start a hub on {addr}"))?;
        let hub = hub.with_admission(admission);
        let addr = hub.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hub.run(async move {
            drop(stopped.await);
        }));
        Ok(Running { addr, stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(PATIENCE, self.task).await;
    }
}

fn client(addr: SocketAddr, tls: &TlsMaterial) -> anyhow::Result<BusClient> {
    let config = ClientConfig { backoff_max: Duration::from_millis(500), ..ClientConfig::default() };
    Ok(BusClient::connect(addr, "localhost", tls, config)?)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {PATIENCE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// From a key leaving the trusted set to its member's connection closed, one at a time.
async fn revocation(ca: &RingCa, n: usize) -> anyhow::Result<StandingRow> {
    let allowed = Arc::new(RwLock::new(HashSet::new()));
    let hub_tls = material(ca, "parent:hub", None)?;
    let hub = Running::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &hub_tls,
        HubConfig::default(),
        admission(&allowed),
    )
    .await?;
    let mut results = Vec::new();
    for _ in 0..n {
        let (key, _, tls) = host(ca)?;
        allowed.write().map_err(|_| anyhow::anyhow!("lock"))?.insert(key);
        let member = client(hub.addr, &tls)?;
        if let Err(e) = member.wait_connected(PATIENCE).await {
            results.push(Err(format!("member did not connect: {e}")));
            continue;
        }
        allowed.write().map_err(|_| anyhow::anyhow!("lock"))?.remove(&key);
        let revoked = Instant::now();
        results.push(
            until("the revoked member disconnected", || !member.is_connected())
                .await
                .map(|()| revoked.elapsed()),
        );
    }
    hub.stop().await;
    Ok(StandingRow::new("revocation to disconnect", results))
}

/// From each member's reconnection to a restarted hub to its desired set delivered.
async fn restart(ca: &RingCa, n: usize) -> anyhow::Result<StandingRow> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let config = HubConfig { retained_dir: Some(dir.path().join("retained")), ..HubConfig::default() };
    let allowed = Arc::new(RwLock::new(HashSet::new()));
    let hub_tls = material(ca, "parent:hub", None)?;
    let hub =
        Running::start(SocketAddr::from(([127, 0, 0, 1], 0)), &hub_tls, config.clone(), admission(&allowed))
            .await?;
    let addr = hub.addr;
    let publisher = client(addr, &material(ca, "parent:publisher", None)?)?;
    publisher.wait_connected(PATIENCE).await?;
    let mut members = Vec::new();
    for i in 0..n {
        let (key, node, tls) = host(ca)?;
        allowed.write().map_err(|_| anyhow::anyhow!("lock"))?.insert(key);
        let topic = format!("state.desired.{node}");
        publisher.publish(&topic, None, format!("set {i}").into_bytes())?;
        let m = client(addr, &tls)?;
        let sub = m.subscribe(&topic)?;
        members.push((m, sub, format!("set {i}").into_bytes()));
    }
    publisher.flush(PATIENCE).await?;
    for (m, sub, _) in &mut members {
        m.wait_connected(PATIENCE).await?;
        tokio::time::timeout(PATIENCE, sub.next()).await.context("the first desired set")?;
    }
    drop(publisher);
    hub.stop().await;
    for (m, _, _) in &members {
        until("the member noticed the hub stopped", || !m.is_connected())
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let hub = Running::start(addr, &hub_tls, config, admission(&allowed)).await?;
    let noisy = client(addr, &material(ca, "parent:noise", None)?)?;
    let flood = tokio::spawn(async move {
        let _ = noisy.wait_connected(PATIENCE).await;
        for k in 0..FLOOD {
            if noisy.publish("noise", None, k.to_be_bytes().to_vec()).is_err() {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut waits = Vec::new();
    for (m, mut sub, want) in members {
        waits.push(tokio::spawn(async move {
            m.wait_connected(PATIENCE).await.map_err(|e| format!("no reconnection: {e}"))?;
            let back = Instant::now();
            match tokio::time::timeout(PATIENCE, sub.next()).await {
                Ok(Some(msg)) if msg.payload == want => Ok(back.elapsed()),
                Ok(Some(_)) => Err("another member's state".to_owned()),
                Ok(None) => Err("the subscription ended".to_owned()),
                Err(_) => Err(format!("no state within {PATIENCE:?}")),
            }
        }));
    }
    let mut results = Vec::new();
    for w in waits {
        results.push(w.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    let _ = flood.await;
    hub.stop().await;
    Ok(StandingRow::new("hub restart to desired set", results))
}
