//! The ring 1 edge: the HTTP router and the DNS service for apps, run by `enjin up` as a
//! supervised process of its own (`enjin edge --dir D`), so that it keeps serving while the
//! control plane is away or restarting, and is adopted rather than restarted when it comes back.
//! It is a ring 1 node (label `edge`, `enjin.dev/role=edge`) enrolled like a host: its own
//! identity, certificate and trust bundle in `D`. It serves from a snapshot — the last one saved
//! in `D` at start, then each newer one its parent publishes on the bus, verified as signed by a
//! parent key — and reports a heartbeat and its traffic counters on the bus.
//!
//! It must never depend on the control plane or the store: its parent prepares `D` and talks to
//! it only through the bus. It reads no environment and installs no signal handler: shutdown is
//! an argument.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod files;
mod report;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_agent::AgentConfig;
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, bundle_from_birth};
use enjin_bus::trust::VerifierConfig;
use enjin_dns::{DnsConfig, DnsServer};
use enjin_model::api::{
    DNS_TOPIC, DnsZone, ObservationReport, ROUTES_TOPIC, RouteTable, edge_topic, observation_topic,
};
use enjin_model::kinds::{ObservationState, ObservationStrategy};
use enjin_router::{Router, RouterConfig};

pub use error::EdgeError;
pub use files::{EdgeFile, Listening, wait_listening};
use files::{routes_file, zone_file};
use report::{edge_report, publish};

/// The label of the edge node, unique among the ring 1 nodes under one machine: its parent
/// finds the node by it at every start rather than making another.
pub const LABEL: &str = "edge";
/// The label (key, value) that marks the edge node, so that listings of a machine's hosts can
/// leave it out: it is a ring 1 node, but runs no instances.
pub const ROLE: (&str, &str) = ("enjin.dev/role", "edge");

/// How often the edge says it is alive, and reports its counters.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long requests in flight get to finish once the edge is asked to stop.
const DRAIN: Duration = Duration::from_secs(15);

/// What `enjin edge` runs on: the directory its parent prepared (`agent.json`, `edge.json`,
/// keys, certificates, bundle), where it also keeps its snapshots.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The edge's directory; it must already hold what the parent wrote (`enjin up` prepares
    /// it before starting the edge).
    pub dir: PathBuf,
}

/// Run the edge in `config.dir` until `shutdown` completes, then drain requests in flight.
pub async fn run(config: EdgeConfig, shutdown: impl Future<Output = ()>) -> Result<(), EdgeError> {
    let dir = config.dir;
    let config = AgentConfig::load(&dir).map_err(EdgeError::Config)?;
    let listen = EdgeFile::load(&dir)?;

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
    let listener = tokio::net::TcpListener::bind(listen.router_listen)
        .await
        .map_err(|source| EdgeError::RouterListen { addr: listen.router_listen, source })?;
    let udp = tokio::net::UdpSocket::bind(listen.dns_listen)
        .await
        .map_err(|source| EdgeError::DnsListen { addr: listen.dns_listen, source })?;
    let dns_addr = udp.local_addr().map_err(EdgeError::LocalAddr)?;
    let tcp = tokio::net::TcpListener::bind(dns_addr)
        .await
        .map_err(|source| EdgeError::DnsTcpListen { addr: dns_addr, source })?;
    let here = Listening {
        pid: std::process::id(),
        router: listener.local_addr().map_err(EdgeError::LocalAddr)?,
        dns: dns_addr,
    };
    here.write(&dir)?;
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
    let identity = Identity::load(&config.key_file()).map_err(EdgeError::Identity)?;
    let bundle =
        bundle_from_birth(&config.bundle().map_err(EdgeError::Config)?).map_err(EdgeError::Bundle)?;
    let bus = config.connect_bus().await.map_err(EdgeError::Bus)?;
    let node = Arc::new(
        BusNode::start(bus.transport, identity, bundle, VerifierConfig::default())
            .map_err(EdgeError::Join)?,
    );
    // On the hub the edge keeps its certificate fresh; a NATS user lives as long as its JWT.
    let upkeep = bus.hub.map(|client| tokio::spawn(config.credentials().keep_fresh(node.clone(), client)));
    let mut routes = node.subscribe(ROUTES_TOPIC).map_err(EdgeError::Join)?;
    let mut zones = node.subscribe(DNS_TOPIC).map_err(EdgeError::Join)?;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut report = tokio::time::interval(REPORT_EVERY);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
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
    if let Some(u) = upkeep {
        u.abort();
    }
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(DRAIN, async {
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
