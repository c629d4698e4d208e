//! The ring 1 edge: the HTTP router and the DNS service for apps, run by `enjin up` as a
//! supervised process of its own (`enjin edge --dir D`), so that it keeps serving while the
//! control plane is away or restarting, and is adopted rather than restarted when it comes back.
//! It is a ring 1 node (label `edge`, `enjin.dev/role=edge`) enrolled like a host: its own
//! identity, certificate and trust bundle in `D`. It serves from a snapshot — the last one saved
//! in `D` at start, then each newer one its parent publishes on the bus, verified as signed by a
//! parent key — and reports a heartbeat and its traffic counters on the bus.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use enjin_agent::{AgentConfig, AgentFile};
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, bundle_from_birth};
use enjin_bus::trust::VerifierConfig;
use enjin_control::ControlPlane;
use enjin_control::bus::BusAuthority;
use enjin_dns::{DnsConfig, DnsServer};
use enjin_model::api::{
    AppTraffic, CreateRequest, DNS_TOPIC, DnsZone, EdgeReport, ListQuery, ObservationReport, ROUTES_TOPIC,
    RouteTable, edge_topic, observation_topic,
};
use enjin_model::kinds::{NodeSpec, ObservationState, ObservationStrategy, Strategy};
use enjin_model::{Object, Ring};
use enjin_router::{Router, RouterConfig};
use enjin_supervisor::{ChildId, ChildSpec};
use serde::{Deserialize, Serialize};

use crate::args::EdgeArgs;

/// The label and role of the edge node.
pub const LABEL: &str = "edge";
pub const ROLE: (&str, &str) = ("enjin.dev/role", "edge");

/// How often the edge says it is alive, and reports its counters.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// `<dir>/edge.json`: where to listen, written by the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    pub router_listen: SocketAddr,
    pub dns_listen: SocketAddr,
    /// Where instances query DNS: the hosts network's gateway, port 53 (the instances'
    /// firewalls admit exactly that). `None` without a hosts network.
    #[serde(default)]
    pub instance_dns: Option<SocketAddr>,
}

/// `<dir>/listening.json`: where it listens, written by the edge once bound (the ports may
/// have been 0).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listening {
    pub pid: u32,
    pub router: SocketAddr,
    pub dns: SocketAddr,
}

fn routes_file(dir: &Path) -> PathBuf {
    dir.join("routes.json")
}

fn zone_file(dir: &Path) -> PathBuf {
    dir.join("zone.json")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("invalid {}", path.display()))
}

/// The edge node under `machine`, made once; its directory prepared (identity, certificate,
/// bundle, where to listen); and how to run it.
pub async fn prepare(
    cp: &ControlPlane,
    authority: &Arc<BusAuthority>,
    machine: &Object<NodeSpec>,
    dir: &Path,
    hub: SocketAddr,
    listen: EdgeFile,
) -> Result<ChildSpec> {
    let q = ListQuery { parent: Some(machine.meta.uuid), label: Some(LABEL.into()), ..ListQuery::default() };
    let (found, _) = cp.registry().list::<NodeSpec>(&q).await?;
    let node = match found.into_iter().next() {
        Some(n) => n,
        None => {
            let spec = NodeSpec {
                parent: Some(machine.meta.uuid),
                strategy: Some(Strategy::Process),
                ..NodeSpec::default()
            };
            let labels = [(ROLE.0.to_string(), ROLE.1.to_string())].into();
            let req = CreateRequest {
                account: None,
                ring: Ring::INFRASTRUCTURE,
                label: Some(LABEL.into()),
                labels,
                spec,
            };
            cp.registry().create(req, Utc::now()).await.context("failed to create the edge node")?
        }
    };
    authority.enroll_local(node.meta.uuid, LABEL, dir).await.context("failed to enrol the edge")?;
    let file = AgentFile {
        ring: 1,
        node: node.meta.uuid,
        hub,
        server_name: "localhost".into(),
        sandbox: false,
        rotate_key_after_seconds: None,
    };
    AgentConfig::write(dir, &file)?;
    let path = dir.join("edge.json");
    enjin_sys::fs::write_private(&path, &serde_json::to_vec_pretty(&listen)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    let exe = std::env::current_exe().context("cannot find the enjin binary to run the edge")?;
    let command = vec![exe.display().to_string(), "edge".into(), "--dir".into(), dir.display().to_string()];
    let id = ChildId::new(node.meta.uuid.to_string())?;
    Ok(super::hosts::ring1_child(id, command, "info,hickory_server=warn"))
}

/// Where the edge in `dir` listens, once it does (the running process's own word).
pub async fn wait_listening(dir: &Path, patience: Duration) -> Result<Listening> {
    let path = dir.join("listening.json");
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(l) = read_json::<Listening>(&path)
            && Path::new(&format!("/proc/{}", l.pid)).exists()
        {
            return Ok(l);
        }
        if Instant::now() > deadline {
            let log = dir.parent().map(|p| p.join("logs")).unwrap_or_default();
            bail!(
                "the edge (router and DNS) did not start listening within {patience:?}; its log is in {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `enjin edge --dir D`.
pub async fn run(args: &EdgeArgs) -> Result<()> {
    let config = AgentConfig::load(&args.dir).context("cannot start the edge")?;
    let listen: EdgeFile = read_json(&args.dir.join("edge.json"))?;
    let dir = args.dir.clone();

    let router = Router::new(RouterConfig::default());
    // The apps of the table served, for the traffic report.
    let mut apps: Vec<String> = Vec::new();
    match enjin_router::snapshot::load(&routes_file(&dir)) {
        Ok(Some(t)) => {
            tracing::info!(version = t.version, "serving the saved route table");
            apps = t.routes.iter().map(|r| r.app.clone()).collect();
            router.apply(t);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "saved routes unreadable; starting with none"),
    }
    let dns = DnsServer::new(DnsConfig::default());
    match enjin_dns::snapshot::load(&zone_file(&dir)) {
        Ok(Some(z)) => {
            dns.apply(z);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "saved DNS zone unreadable; starting empty"),
    }
    let listener = tokio::net::TcpListener::bind(listen.router_listen).await.with_context(|| {
        format!(
            "failed to start the HTTP router on {}; pick another address with --router-listen",
            listen.router_listen
        )
    })?;
    let udp = tokio::net::UdpSocket::bind(listen.dns_listen).await.with_context(|| {
        format!(
            "failed to start the DNS service on udp {}; pick another address with --dns-listen",
            listen.dns_listen
        )
    })?;
    let dns_addr = udp.local_addr()?;
    let tcp = tokio::net::TcpListener::bind(dns_addr)
        .await
        .with_context(|| format!("failed to start the DNS service on tcp {dns_addr}"))?;
    let here = Listening { pid: std::process::id(), router: listener.local_addr()?, dns: dns_addr };
    let path = dir.join("listening.json");
    enjin_sys::fs::write_private(&path, &serde_json::to_vec(&here)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    tracing::info!(router = %here.router, dns = %here.dns, "edge listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let r = router.clone();
    let serving_router = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move { r.serve(listener, stop).await }
    });
    let d = dns.clone();
    let serving_dns = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move { d.serve(udp, tcp, stop).await }
    });
    // The same zone for instances, on the address their resolv.conf names. Without it apps
    // still run; they just cannot resolve the platform's names.
    if let Some(addr) = listen.instance_dns {
        match bind_dns(addr).await {
            Ok((udp, tcp)) => {
                let d = dns.clone();
                let stop = stopped(stop_rx.clone());
                tokio::spawn(async move { d.serve(udp, tcp, stop).await });
                tracing::info!(%addr, "DNS for instances listening");
            }
            Err(e) => tracing::error!(%addr, error = %e, "instances get no DNS"),
        }
    }

    // The bus: the data plane above works without it; this only brings newer snapshots.
    let identity = Identity::load(&config.key_file()).context("the edge's identity")?;
    let bundle = bundle_from_birth(&config.bundle()?).context("the edge's trust bundle")?;
    let client = Arc::new(
        BusClient::connect(config.hub, &config.server_name, &config.tls()?, ClientConfig::default())
            .context("failed to connect to the ring bus")?,
    );
    let node = Arc::new(BusNode::start(client.clone(), identity, bundle, VerifierConfig::default())?);
    let upkeep = tokio::spawn(config.credentials().keep_fresh(node.clone(), client));
    let mut routes = node.subscribe(ROUTES_TOPIC)?;
    let mut zones = node.subscribe(DNS_TOPIC)?;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut report = tokio::time::interval(REPORT_EVERY);
    let term = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    tokio::pin!(term);
    loop {
        tokio::select! {
            _ = &mut term => break,
            _ = heartbeat.tick() => publish(&node, &observation_topic(config.node), &ObservationReport {
                node: config.node,
                strategy: ObservationStrategy::Heartbeat,
                state: ObservationState::Running,
                observed_at: Utc::now(),
                message: String::new(),
            }),
            _ = report.tick() => publish(&node, &edge_topic(config.node), &edge_report(config.node, &apps, &router, &dns)),
            Some(env) = routes.next() => {
                if !node.is_from_parent(&env) {
                    continue;
                }
                match serde_json::from_slice::<RouteTable>(env.payload()) {
                    Ok(t) => {
                        let snapshot = t.clone();
                        if router.apply(t) {
                            tracing::debug!(version = snapshot.version, "routes applied");
                            apps = snapshot.routes.iter().map(|r| r.app.clone()).collect();
                            // Said at once, so that a rollout knows its table is served.
                            publish(&node, &edge_topic(config.node), &edge_report(config.node, &apps, &router, &dns));
                            if let Err(e) = enjin_router::snapshot::save(&routes_file(&dir), &snapshot) {
                                tracing::warn!(error = %e, "routes not saved");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable route table"),
                }
            }
            Some(env) = zones.next() => {
                if !node.is_from_parent(&env) {
                    continue;
                }
                match serde_json::from_slice::<DnsZone>(env.payload()) {
                    Ok(z) => {
                        let snapshot = z.clone();
                        if dns.apply(z)
                            && let Err(e) = enjin_dns::snapshot::save(&zone_file(&dir), &snapshot)
                        {
                            tracing::warn!(error = %e, "DNS zone not saved");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable DNS zone"),
                }
            }
        }
    }
    tracing::info!("edge stopping: draining requests in flight");
    upkeep.abort();
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        let _ = serving_router.await;
        let _ = serving_dns.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("the edge's servers did not stop in time");
    }
    Ok(())
}

/// A UDP socket and a TCP listener on `addr`.
async fn bind_dns(addr: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    Ok((udp, tcp))
}

fn publish<T: Serialize>(node: &BusNode, topic: &str, value: &T) {
    let Ok(payload) = serde_json::to_vec(value) else { return };
    if let Err(e) = node.publish(topic, payload) {
        // Level-triggered: the next one repairs a dropped one.
        tracing::debug!(%topic, error = %e, "report not sent");
    }
}

fn edge_report(node: uuid::Uuid, apps: &[String], router: &Router, dns: &DnsServer) -> EdgeReport {
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
    let apps = apps
        .iter()
        .filter_map(|app| router.stats(app))
        .map(|s| AppTraffic {
            app: s.app.clone(),
            requests: s.requests,
            responses_5xx: s.by_class.server_error,
            in_flight: s.in_flight,
            p50_ms: ms(s.p50),
            p99_ms: ms(s.p99),
            connect_failures: s.connect_failures,
            retries: s.retries,
            backends: s.backends,
        })
        .collect();
    EdgeReport {
        node,
        at: Utc::now(),
        routes_version: router.version(),
        apps,
        metrics: format!("{}{}", router.metrics_text(), dns.metrics_text()),
    }
}
