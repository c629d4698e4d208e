//! A ring 1 bus on loopback for the agent's tests: the control plane's key service and hub,
//! hosts prepared as `enjin up` prepares them, and bus nodes that speak as those hosts.

#![allow(dead_code, reason = "each test binary uses a different subset of the helpers")]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_agent::{AgentConfig, AgentFile, Children};
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::hub::{HubConfig, HubStats};
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, bundle_from_birth};
use enjin_bus::trust::VerifierConfig;
use enjin_control::ControlPlane;
use enjin_control::bus::{BusAuthority, BusConfig};
use enjin_model::Ring;
use enjin_model::api::{CreateRequest, DesiredChildren};
use enjin_model::kinds::{NodeSpec, Strategy};
use enjin_store::{SqliteStore, SqliteStoreConfig, Store};
use tokio::sync::watch;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct NoChildren;

impl Children for NoChildren {
    fn apply(&self, _desired: &DesiredChildren) {}
}

pub struct Ring1 {
    pub dir: tempfile::TempDir,
    pub cp: ControlPlane,
    pub authority: Arc<BusAuthority>,
    pub hub: std::net::SocketAddr,
    pub hub_stats: Arc<HubStats>,
    pub machine: Uuid,
    stop: watch::Sender<bool>,
    hub_task: Option<tokio::task::JoinHandle<()>>,
}

impl Ring1 {
    pub async fn start() -> Ring1 {
        Self::start_with(enjin_control::bus::CERT_VALIDITY, enjin_control::bus::DEFAULT_OVERLAP).await
    }

    /// A ring whose members' certificates last `validity` and whose rotated keys overlap for
    /// `overlap`.
    pub async fn start_with(validity: Duration, overlap: Duration) -> Ring1 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(SqliteStoreConfig::new(dir.path().join("state.db"))).expect("store"));
        let cp = ControlPlane::new(store.clone());
        cp.bootstrap().await.expect("bootstrap");
        let req = CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some("m0".into()),
            labels: Default::default(),
            spec: NodeSpec::default(),
        };
        let machine = cp.registry().create(req, Utc::now()).await.expect("machine").meta.uuid;
        let config = BusConfig {
            ring: Ring::INFRASTRUCTURE,
            keys_dir: dir.path().join("keys"),
            pki_dir: dir.path().join("pki"),
            label: "m0".into(),
            node: Some(machine),
            disconnected_after: Duration::from_secs(60),
            lost_after: Duration::from_secs(300),
            certificate_validity: validity,
            member_key_overlap: overlap,
        };
        let authority =
            BusAuthority::open(enjin_control::Registry::new(store), config).await.expect("key service");
        let (stop, stopped) = watch::channel(false);
        let retained = dir.path().join("retained");
        let (addr, hub_stats, hub_task) =
            run_hub(&authority, "127.0.0.1:0".parse().expect("addr"), &retained, stopped).await;
        let own = authority.local_tls("control-plane", &[]).expect("tls");
        let client = BusClient::connect(addr, "localhost", &own, ClientConfig::default()).expect("client");
        client.wait_connected(WAIT).await.expect("control plane on its bus");
        authority.attach(Arc::new(client)).await.expect("attach");
        Ring1 { dir, cp, authority, hub: addr, hub_stats, machine, stop, hub_task: Some(hub_task) }
    }

    /// Stop the hub and start a new one on the same address and retained directory, as a
    /// restart of the process that runs it does.
    pub async fn restart_hub(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.hub_task.take() {
            tokio::time::timeout(WAIT, task).await.expect("the hub stops").expect("hub task");
        }
        let (stop, stopped) = watch::channel(false);
        self.stop = stop;
        let retained = self.dir.path().join("retained");
        let (_, stats, task) = run_hub(&self.authority, self.hub, &retained, stopped).await;
        self.hub_stats = stats;
        self.hub_task = Some(task);
    }

    /// A host under m0 with its agent directory prepared, as `enjin up` does.
    pub async fn host(&self, label: &str) -> (Uuid, AgentConfig) {
        let spec =
            NodeSpec { parent: Some(self.machine), strategy: Some(Strategy::Netns), ..NodeSpec::default() };
        let req = CreateRequest {
            account: None,
            ring: Ring::INFRASTRUCTURE,
            label: Some(label.into()),
            labels: Default::default(),
            spec,
        };
        let host = self.cp.registry().create(req, Utc::now()).await.expect("host").meta.uuid;
        let dir = self.dir.path().join("hosts").join(label);
        self.authority.enroll_local(host, label, &dir).await.expect("enrol");
        let file = AgentFile {
            ring: 1,
            node: host,
            hub: self.hub,
            server_name: "localhost".into(),
            sandbox: false,
            rotate_key_after_seconds: None,
            nats: None,
        };
        AgentConfig::write(&dir, &file).expect("agent.json");
        (host, AgentConfig::load(&dir).expect("agent config"))
    }

    /// A bus node signing with `config`'s host key, for sending as that host.
    pub async fn as_host(&self, config: &AgentConfig) -> (BusNode, Arc<BusClient>) {
        let identity = Identity::load(&config.key_file()).expect("key");
        let bundle = bundle_from_birth(&config.bundle().expect("bundle")).expect("birth bundle");
        let tls = config.tls().expect("tls");
        let client = Arc::new(
            BusClient::connect(self.hub, "localhost", &tls, ClientConfig::default()).expect("client"),
        );
        client.wait_connected(WAIT).await.expect("connected");
        let node = BusNode::start(client.clone(), identity, bundle, VerifierConfig::default()).expect("node");
        (node, client)
    }
}

impl Drop for Ring1 {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ring's hub as `enjin up` runs it: the key service's filter and admission check, and
/// retained messages kept in `retained`.
async fn run_hub(
    authority: &Arc<BusAuthority>,
    addr: std::net::SocketAddr,
    retained: &std::path::Path,
    stopped: watch::Receiver<bool>,
) -> (std::net::SocketAddr, Arc<HubStats>, tokio::task::JoinHandle<()>) {
    let tls = authority.local_tls("hub", &["localhost".into(), "127.0.0.1".into()]).expect("hub tls");
    let config = HubConfig { retained_dir: Some(retained.to_path_buf()), ..HubConfig::default() };
    let hub = enjin_bus::hub::Hub::bind(addr, &tls, config)
        .await
        .expect("hub")
        .with_filter(authority.hub_filter())
        .with_admission(authority.hub_admission());
    let addr = hub.local_addr();
    let stats = hub.stats();
    authority.set_hub(addr, stats.clone());
    (addr, stats, tokio::spawn(hub.run(until(stopped))))
}
