//! An agent on a real ring 1 bus (the control plane's key service and hub, on loopback)
//! answers its parent's log requests and refuses instances it does not run; hosts' use reports
//! are kept only from the key bound to the host they are about.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_agent::logs::collected_path;
use enjin_agent::{AgentConfig, AgentFile, Children};
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, bundle_from_birth};
use enjin_bus::trust::VerifierConfig;
use enjin_control::ControlPlane;
use enjin_control::bus::{BusAuthority, BusConfig};
use enjin_model::Ring;
use enjin_model::api::{
    CreateRequest, DesiredChildren, HostStats, InstanceStats, LogsRequest, logs_topic, stats_topic,
};
use enjin_model::kinds::{NodeSpec, Strategy};
use enjin_store::{SqliteStore, SqliteStoreConfig, Store};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

struct NoChildren;

impl Children for NoChildren {
    fn apply(&self, _desired: &DesiredChildren) {}
}

struct Ring1 {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    authority: Arc<BusAuthority>,
    hub: std::net::SocketAddr,
    machine: Uuid,
    stop: watch::Sender<bool>,
}

impl Ring1 {
    async fn start() -> Ring1 {
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
        };
        let authority = BusAuthority::open(store, config).await.expect("key service");
        let tls = authority.local_tls("hub", &["localhost".into(), "127.0.0.1".into()]).expect("hub tls");
        let hub = enjin_bus::hub::Hub::bind("127.0.0.1:0".parse().expect("addr"), &tls, Default::default())
            .await
            .expect("hub")
            .with_filter(authority.hub_filter());
        let addr = hub.local_addr();
        authority.set_hub(addr, hub.stats());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(hub.run(until(stopped)));
        let own = authority.local_tls("control-plane", &[]).expect("tls");
        let client = BusClient::connect(addr, "localhost", &own, ClientConfig::default()).expect("client");
        client.wait_connected(WAIT).await.expect("control plane on its bus");
        authority.attach(Arc::new(client)).await.expect("attach");
        Ring1 { dir, cp, authority, hub: addr, machine, stop }
    }

    /// A host under m0 with its agent directory prepared, as `enjin up` does.
    async fn host(&self, label: &str) -> (Uuid, AgentConfig) {
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
        let file =
            AgentFile { ring: 1, node: host, hub: self.hub, server_name: "localhost".into(), sandbox: false };
        AgentConfig::write(&dir, &file).expect("agent.json");
        (host, AgentConfig::load(&dir).expect("agent config"))
    }

    /// A bus node signing with `config`'s host key, for sending as that host.
    async fn as_host(&self, config: &AgentConfig) -> (BusNode, Arc<BusClient>) {
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

async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parent_reads_a_host_s_logs_over_the_bus() {
    let ring = Ring1::start().await;
    let (host, config) = ring.host("h1").await;
    let logs = enjin_agent::logs_dir(&config);
    std::fs::create_dir_all(&logs).expect("logs dir");
    // An instance that ran on this host: its output already collected.
    let instance = Uuid::new_v4();
    let mut raw = String::new();
    for seq in 0..3u64 {
        let line = serde_json::json!({
            "at": Utc::now(), "instance": instance, "stream": "stdout", "seq": seq, "line": format!("hello {seq}"), "offset": 0
        });
        raw.push_str(&format!("{line}\n"));
    }
    std::fs::write(collected_path(&logs, instance, 0), raw).expect("collected log");

    let (stop_agent, stopped) = watch::channel(false);
    let (_obs_tx, obs_rx) = mpsc::channel(8);
    let agent = tokio::spawn(enjin_agent::run(config, Arc::new(NoChildren), obs_rx, until(stopped)));

    // Wait until the agent answers at all, then ask properly.
    let probe = serde_json::to_vec(&LogsRequest::default()).expect("json");
    let mut answered = false;
    for _ in 0..40 {
        if ring.authority.request(&logs_topic(host), probe.clone(), Duration::from_millis(500)).await.is_ok()
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "the agent answers log requests");
    let req = LogsRequest {
        instances: vec![instance],
        after: [(instance, 0)].into_iter().collect(),
        ..LogsRequest::default()
    };
    let reply = ring.authority.logs(host, &req).await.expect("logs");
    let lines: Vec<(u64, &str)> = reply.lines.iter().map(|l| (l.seq, l.line.as_str())).collect();
    assert_eq!(lines, vec![(1, "hello 1"), (2, "hello 2")]);

    let stranger = Uuid::new_v4();
    let err = ring
        .authority
        .logs(host, &LogsRequest { instances: vec![stranger], ..LogsRequest::default() })
        .await
        .expect_err("refused");
    assert!(err.to_string().contains(&format!("instance {stranger} does not run on this host")), "{err}");

    stop_agent.send(true).expect("stop");
    tokio::time::timeout(WAIT, agent).await.expect("agent stops").expect("agent task").expect("agent ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_reports_are_kept_only_from_the_host_s_own_key() {
    let ring = Ring1::start().await;
    let (h2, c2) = ring.host("h2").await;
    let (h3, c3) = ring.host("h3").await;
    let (node2, client2) = ring.as_host(&c2).await;
    let (node3, _client3) = ring.as_host(&c3).await;
    let report = |node: Uuid, instance: Uuid, cpu: u64| {
        let stats = HostStats {
            node,
            at: Utc::now(),
            instances: vec![InstanceStats { instance, cpu_usage_ns: cpu, memory_bytes: 4096 }],
        };
        serde_json::to_vec(&stats).expect("json")
    };
    let (genuine, forged, later) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    node3.publish(&stats_topic(h3), report(h3, genuine, 1_500_000_000)).expect("publish");
    eventually("h3's report is kept", || ring.authority.instance_stats().contains_key(&genuine)).await;
    // h2 claims to speak for h3, then reports on itself.
    node2.publish(&stats_topic(h3), report(h3, forged, 1)).expect("publish");
    client2.flush(WAIT).await.expect("flush");
    node2.publish(&stats_topic(h2), report(h2, later, 2)).expect("publish");
    eventually("h2's own report is kept", || ring.authority.instance_stats().contains_key(&later)).await;
    let stats = ring.authority.instance_stats();
    assert!(!stats.contains_key(&forged), "a report about another host is refused");
    assert_eq!(stats[&genuine].0.cpu_usage_ns, 1_500_000_000);

    let metrics = ring.authority.render_metrics();
    assert!(
        metrics.contains(&format!("enjin_instance_cpu_seconds_total{{instance=\"{genuine}\"}} 1.5\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("enjin_instance_memory_bytes{{instance=\"{later}\"}} 4096\n")),
        "{metrics}"
    );
    assert_eq!(metrics.matches("# TYPE enjin_instance_memory_bytes gauge").count(), 1);
}
