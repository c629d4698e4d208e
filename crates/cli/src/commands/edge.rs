//! The ring 1 services `enjin up` runs on this machine for apps: the HTTP router and the DNS
//! service. Each serves from a snapshot: the last one saved in `<data-dir>/edge` at start, then
//! each newer one the parent publishes on the ring bus (verified: signed by a parent key). They
//! never read the store, so they keep serving while the control plane is away.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::identity::Identity;
use enjin_bus::node::BusNode;
use enjin_bus::trust::{KeyRole, VerifierConfig};
use enjin_control::bus::BusAuthority;
use enjin_control::platform::TrafficStats;
use enjin_dns::{DnsConfig, DnsServer};
use enjin_model::api::{DNS_TOPIC, DnsZone, ROUTES_TOPIC, RouteTable};
use enjin_router::{Router, RouterConfig};

/// The router and DNS service, serving.
#[derive(Debug, Clone)]
pub struct Edge {
    pub router: Router,
    pub router_addr: SocketAddr,
    pub dns: DnsServer,
    pub dns_addr: SocketAddr,
}

/// The router's counters as the platform shows them.
#[derive(Debug)]
pub struct RouterTraffic(pub Router);

impl TrafficStats for RouterTraffic {
    fn app(&self, app: &str) -> Option<serde_json::Value> {
        let s = self.0.stats(app)?;
        let ms = |d: Option<std::time::Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
        Some(serde_json::json!({
            "requests": s.requests,
            "responses_5xx": s.by_class.server_error,
            "in_flight": s.in_flight,
            "p50_ms": ms(s.p50),
            "p99_ms": ms(s.p99),
            "connect_failures": s.connect_failures,
            "retries": s.retries,
            "backends": s.backends,
        }))
    }

    fn metrics_text(&self) -> String {
        self.0.metrics_text()
    }
}

fn routes_file(dir: &Path) -> PathBuf {
    dir.join("routes.json")
}

fn zone_file(dir: &Path) -> PathBuf {
    dir.join("zone.json")
}

/// Bind both services and serve their saved snapshots until `stop`.
pub async fn start(
    dir: &Path,
    router_listen: SocketAddr,
    dns_listen: SocketAddr,
    stop: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> Result<Edge> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let router = Router::new(RouterConfig::default());
    match enjin_router::snapshot::load(&routes_file(dir)) {
        Ok(Some(t)) => {
            router.apply(t);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "saved routes unreadable; starting with none"),
    }
    let listener = tokio::net::TcpListener::bind(router_listen).await.with_context(|| {
        format!(
            "failed to start the HTTP router on {router_listen}; pick another address with --router-listen"
        )
    })?;
    let router_addr = listener.local_addr()?;
    let r = router.clone();
    let shutdown = stop();
    tokio::spawn(async move {
        if let Err(e) = r.serve(listener, shutdown).await {
            tracing::error!(error = %e, "the HTTP router stopped");
        }
    });

    let dns = DnsServer::new(DnsConfig::default());
    match enjin_dns::snapshot::load(&zone_file(dir)) {
        Ok(Some(z)) => {
            dns.apply(z);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "saved DNS zone unreadable; starting empty"),
    }
    let udp = tokio::net::UdpSocket::bind(dns_listen).await.with_context(|| {
        format!("failed to start the DNS service on udp {dns_listen}; pick another address with --dns-listen")
    })?;
    let dns_addr = udp.local_addr()?;
    let tcp = tokio::net::TcpListener::bind(dns_addr).await.with_context(|| {
        format!("failed to start the DNS service on tcp {dns_addr}; pick another address with --dns-listen")
    })?;
    let d = dns.clone();
    let shutdown = stop();
    tokio::spawn(async move {
        if let Err(e) = d.serve(udp, tcp, shutdown).await {
            tracing::error!(error = %e, "the DNS service stopped");
        }
    });
    Ok(Edge { router, router_addr, dns, dns_addr })
}

/// Follow the snapshots the parent publishes on the ring bus at `hub`, applying and saving
/// each newer one.
pub async fn follow(edge: &Edge, authority: &Arc<BusAuthority>, hub: SocketAddr, dir: &Path) -> Result<()> {
    // Its identity only receives: it never speaks on the bus, so it needs no place in the
    // ring's trust set, only the set itself to check what it receives.
    let identity = Identity::generate().context("failed to make the router's bus identity")?;
    let tls = authority.local_tls("edge", &[])?;
    let client = BusClient::connect(hub, "localhost", &tls, ClientConfig::default())
        .context("failed to connect the router to the ring bus")?;
    let bundle = authority.bundle().await?;
    let node = Arc::new(
        BusNode::start(Arc::new(client), identity, bundle, VerifierConfig::default())
            .context("failed to join the ring bus")?,
    );
    let mut routes = node.subscribe(ROUTES_TOPIC).context("failed to follow routes")?;
    let mut zones = node.subscribe(DNS_TOPIC).context("failed to follow the DNS zone")?;
    let (router, dns, dir) = (edge.router.clone(), edge.dns.clone(), dir.to_path_buf());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(env) = routes.next() => {
                    if node.bundle().key(&env.sender()).map(|k| k.role) != Some(KeyRole::Parent) {
                        continue;
                    }
                    match serde_json::from_slice::<RouteTable>(env.payload()) {
                        Ok(t) => {
                            let snapshot = t.clone();
                            if router.apply(t) {
                                tracing::debug!(version = snapshot.version, "routes applied");
                                if let Err(e) = enjin_router::snapshot::save(&routes_file(&dir), &snapshot) {
                                    tracing::warn!(error = %e, "routes not saved");
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable route table"),
                    }
                }
                Some(env) = zones.next() => {
                    if node.bundle().key(&env.sender()).map(|k| k.role) != Some(KeyRole::Parent) {
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
                else => break,
            }
        }
    });
    Ok(())
}
