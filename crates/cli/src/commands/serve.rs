//! `enjin up` and `enjin server`: open the store, bootstrap, serve until Ctrl-C or SIGTERM.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::Utc;
use enjin_control::cache::WatchCache;
use enjin_control::{ControlConfig, ControlPlane, Registry};
use enjin_model::api::{CreateRequest, ListQuery};
use enjin_model::kinds::{NodeSpec, Resources};
use enjin_model::{Object, Ring};
use enjin_store::{SqliteStore, SqliteStoreConfig, Store};
use tokio::net::TcpListener;

use super::{cloud, edge, hosts};
use crate::args::{Global, ServeArgs};
use crate::config::{
    self, CA_FILE, DEFAULT_BUS_LISTEN, DEFAULT_DNS_LISTEN, DEFAULT_LISTEN, DEFAULT_ROUTER_LISTEN,
    ENDPOINT_FILE, STATE_FILE, TOKEN_FILE,
};
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::hub::{Hub, HubConfig};
use enjin_control::bus::{BusAuthority, BusConfig};
use enjin_control::platform::{Platform, PlatformConfig};

/// `<data>/bus/hub.addr`: where the ring 1 hub listened last.
const HUB_ADDR_FILE: &str = "hub.addr";

pub async fn run(g: &Global, args: &ServeArgs, whole_cloud: bool) -> Result<()> {
    let dir = config::data_dir(g)?;
    config::ensure_data_dir(&dir)?;
    if whole_cloud {
        cloud::claim(&dir)?;
    }
    let file = config::load_file_config(&dir)?;
    let default: SocketAddr = DEFAULT_LISTEN.parse().context("default listen address")?;
    let listen = args.listen.or(file.api.listen).unwrap_or(default);
    check_plain_http(args.insecure_http, listen)?;

    let db = dir.join(STATE_FILE);
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(SqliteStoreConfig::new(db)))
        .await
        .context("store opener panicked")??;
    // The store holds every object: readable by the owner alone.
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(format!("{STATE_FILE}{suffix}"));
        if p.exists() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("failed to make {} private", p.display()))?;
        }
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let instances = file.instances.0;
    tracing::info!(?instances, "limits for instances that leave them out");
    let audit = file.audit.0;
    tracing::info!(retention_seconds = audit.retention.as_secs(), "audit log retention");
    let api_limits = file.api.limits;
    tracing::info!(?api_limits, "limits at the API's door");
    let token_key = token_signing_key(&dir)?;

    // One shutdown signal for every part: the API, the watch cache, the hub.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Lists are answered from one watch cache of the store, shared by the API and the bus.
    let control_config = ControlConfig { instances, api: api_limits, audit };
    let cache = WatchCache::start(store.clone(), stop_rx.clone());
    let registry = Registry::with_config(store.clone(), &control_config).with_cache(cache);
    let cp = ControlPlane::with_registry(registry.clone(), &control_config).with_token_key(token_key);
    cp.bootstrap().await.context("failed to bootstrap the system account and roles")?;

    let token_path = dir.join(TOKEN_FILE);
    if !token_path.exists() {
        let created = cp.auth().issue_admin("the admin token of this data directory", Utc::now()).await?;
        config::write_secret(&token_path, &created.token)?;
        tracing::info!(path = %token_path.display(), "admin token created");
    }

    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("failed to listen on {listen}: is another enjin running? pick another address with --listen")
    })?;
    let addr = listener.local_addr().context("listener address")?;
    let (cp, url) = if args.insecure_http {
        (cp, format!("http://{}", reachable(addr)))
    } else {
        let tls = api_tls(&dir, addr, &file.api.tls_names)?;
        (cp.with_tls(tls), format!("https://{}", reachable(addr)))
    };
    config::write_secret(&dir.join(ENDPOINT_FILE), &format!("{url}\n"))?;

    let machine = if whole_cloud { Some(register_machine(&cp).await?) } else { None };

    // Keys and trust are a ring 0 service; `enjin up` also hosts the ring 1 bus as its parent.
    let bus_config = BusConfig {
        ring: Ring::INFRASTRUCTURE,
        keys_dir: dir.join("keys"),
        pki_dir: dir.join("pki"),
        label: machine.as_ref().and_then(|m| m.meta.label.clone()).unwrap_or_else(machine_label),
        node: machine.as_ref().map(|m| m.meta.uuid),
        disconnected_after: std::time::Duration::from_secs(
            file.hosts.disconnected_after_seconds.unwrap_or(10),
        ),
        lost_after: std::time::Duration::from_secs(file.hosts.lost_after_seconds.unwrap_or(300)),
        certificate_validity: file.bus.certificate_validity()?,
        member_key_overlap: enjin_control::bus::DEFAULT_OVERLAP,
    };
    let authority =
        BusAuthority::open(registry, bus_config).await.context("failed to start the key service")?;
    let mut hub_addr = None;
    let mut host_supervisor = None;
    let mut edge = None;
    if whole_cloud {
        let default_bus: SocketAddr = DEFAULT_BUS_LISTEN.parse().context("default bus address")?;
        let mut bus_listen = args.bus_listen.or(file.bus.listen).unwrap_or(default_bus);
        // Hosts in network namespaces reach this machine on their bridge, not on loopback.
        let hosts_net = if hosts::can_netns() {
            let cidr = match args.hosts_cidr.or(file.hosts.cidr) {
                Some(c) => c,
                None => hosts::HOSTS_CIDR.parse().map_err(anyhow::Error::msg)?,
            };
            let instance_cidr = match args.instance_cidr.or(file.hosts.instance_cidr) {
                Some(c) => c,
                None => hosts::INSTANCE_CIDR.parse().map_err(anyhow::Error::msg)?,
            };
            // What this cloud makes outside its data directory is recorded before it is made;
            // what clouds whose data directories are gone left is reclaimed first.
            let id = cloud::cloud_id(&dir)?;
            let own = id.clone();
            tokio::task::spawn_blocking(move || cloud::reclaim(&own)).await.context("reclaiming panicked")?;
            let record = cloud::record_for(&dir, &id)?;
            let net = hosts::hosts_network(&cp, cidr, instance_cidr, record).await?;
            bus_listen = SocketAddr::new(net.gateway, bus_listen.port());
            Some(net)
        } else {
            None
        };
        let sans = vec!["localhost".to_string(), bus_listen.ip().to_string()];
        let hub_tls = authority.local_tls("hub", &sans)?;
        let hub_config =
            HubConfig { retained_dir: Some(dir.join("bus").join("retained")), ..HubConfig::default() };
        // Asked for any port, listen where the last run did when that port is free: the agents
        // this run adopts know only that address.
        let bus_dir = dir.join("bus");
        fs::create_dir_all(&bus_dir).with_context(|| format!("failed to create {}", bus_dir.display()))?;
        let last = bus_dir.join(HUB_ADDR_FILE);
        let again = std::fs::read_to_string(&last)
            .ok()
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .filter(|a| bus_listen.port() == 0 && a.ip() == bus_listen.ip());
        let bound = match again {
            Some(a) => match Hub::bind(a, &hub_tls, hub_config.clone()).await {
                Ok(hub) => Ok(hub),
                Err(e) => {
                    tracing::warn!(addr = %a, error = %e, "the hub's last address is taken; running agents must be restarted to find the new one");
                    Hub::bind(bus_listen, &hub_tls, hub_config).await
                }
            },
            None => Hub::bind(bus_listen, &hub_tls, hub_config).await,
        };
        let hub = bound
            .with_context(|| {
                format!("failed to start the ring 1 bus hub on {bus_listen}; pick another with --bus-listen")
            })?
            .with_filter(authority.hub_filter())
            .with_admission(authority.hub_admission());
        let addr = hub.local_addr();
        enjin_sys::fs::write_private(&last, addr.to_string().as_bytes())
            .with_context(|| format!("failed to write {}", last.display()))?;
        authority.set_hub(addr, hub.stats());
        tokio::spawn(hub.run(stopped(stop_rx.clone())));
        let own_tls = authority.local_tls("control-plane", &[])?;
        let client = BusClient::connect(addr, "localhost", &own_tls, ClientConfig::default())
            .context("failed to connect the control plane to its bus")?;
        authority.attach(Arc::new(client)).await.context("failed to join the ring 1 bus")?;
        hub_addr = Some(addr);
        if let Some(machine) = &machine {
            let listen = edge::EdgeFile {
                router_listen: match args.router_listen.or(file.router.listen) {
                    Some(a) => a,
                    None => DEFAULT_ROUTER_LISTEN.parse().context("default router address")?,
                },
                dns_listen: match args.dns_listen.or(file.dns.listen) {
                    Some(a) => a,
                    None => DEFAULT_DNS_LISTEN.parse().context("default DNS address")?,
                },
                instance_dns: hosts_net
                    .as_ref()
                    .map(|n| SocketAddr::new(n.gateway, enjin_control::netpolicy::DNS_PORT)),
            };
            let edge_dir = dir.join("edge");
            let edge_spec = edge::prepare(&cp, &authority, machine, &edge_dir, addr, listen).await?;
            let count = args.hosts.or(file.hosts.count).unwrap_or(2);
            let sup = hosts::start(
                &cp,
                &authority,
                machine,
                &dir,
                addr,
                hosts_net.as_ref(),
                count,
                vec![edge_spec],
            )
            .await
            .context("failed to start the ring 1 hosts")?;
            host_supervisor = Some(sup);
            edge = Some(edge::wait_listening(&edge_dir, std::time::Duration::from_secs(30)).await?);
        }
    }
    let platform_config = {
        let mut c = PlatformConfig::new(dir.join("packages"));
        if let Some(d) = &file.router.domain {
            c.domain.clone_from(d);
        }
        if let Some(z) = &file.dns.zone {
            c.zone.clone_from(z);
        }
        c.router = edge.as_ref().map(|e: &edge::Listening| e.router);
        c
    };
    let platform =
        Platform::open(cp.registry().clone(), platform_config).context("failed to open the package store")?;
    if hub_addr.is_some() {
        platform.attach_bus(authority.clone());
    }
    // After the bus: a rollout that is finished drains through the routers as any other.
    if let Err(e) = platform.recover().await {
        tracing::warn!(error = %e, "unfinished rollouts not taken up");
    }
    let cp = cp.with_bus(authority.clone()).with_platform(platform);
    let ca = (!args.insecure_http).then(|| dir.join(CA_FILE));
    banner(&url, &dir, &token_path, ca.as_deref(), machine.as_ref(), hub_addr, edge.as_ref());

    let served = cp.serve(listener, stopped(stop_rx)).await;
    // Nothing is published for hosts that are stopping.
    authority.stop().await;
    if let Some(sup) = host_supervisor {
        // Stop the hosts' agents gracefully; each stops its own children.
        if let Err(e) = sup.shutdown().await {
            tracing::warn!(error = %e, "hosts' supervisor was already gone");
        }
    }
    store.close().await.context("failed to close the state store")?;
    served.with_context(|| format!("the API server on {addr} failed"))?;
    if whole_cloud {
        cloud::release(&dir);
    }
    println!("enjin: stopped cleanly; run it again to resume");
    Ok(())
}

/// Plain HTTP only when asked for, and only on loopback, where no one else can listen in.
fn check_plain_http(insecure_http: bool, listen: SocketAddr) -> Result<()> {
    if insecure_http && !listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing --insecure-http on {listen}: plain HTTP is allowed only on a loopback address \
             (127.0.0.1, ::1); drop --insecure-http to serve TLS, or listen on loopback"
        );
    }
    Ok(())
}

/// The API's TLS: the ring 0 CA (created in `<data-dir>/pki` on first start, its certificate
/// copied to `<data-dir>/ca.crt` for clients) issues a certificate for the names clients use.
fn api_tls(dir: &Path, addr: SocketAddr, extra: &[String]) -> Result<Arc<rustls::ServerConfig>> {
    let ca = enjin_pki::RingCa::load_or_create(&dir.join("pki"), Ring::META.get())
        .context("failed to open the ring 0 certificate authority")?;
    // Not a secret, but private like everything in the data directory (docs/security.md):
    // others get it from the operator, for `enjin login --ca`.
    config::write_secret(&dir.join(CA_FILE), ca.cert_pem())?;
    let names = enjin_control::tls::api_names(addr, extra);
    tracing::info!(?names, "API certificate names");
    enjin_control::tls::server_config(&ca, &names).context("failed to set up TLS for the API")
}

/// An address clients can connect to: the unspecified address stands for loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// This machine as the ring 0 node, created once and found again on later starts.
async fn register_machine(cp: &ControlPlane) -> Result<Object<NodeSpec>> {
    let label = machine_label();
    let q = ListQuery { ring: Some(Ring::META), label: Some(label.clone()), ..ListQuery::default() };
    let (found, _) = cp.registry().list::<NodeSpec>(&q).await?;
    if let Some(node) = found.into_iter().next() {
        return Ok(node);
    }
    let spec = NodeSpec { resources: machine_resources(), ..NodeSpec::default() };
    let labels = [("enjin.dev/role".to_string(), "machine".to_string())].into();
    let req = CreateRequest { account: None, ring: Ring::META, label: Some(label.clone()), labels, spec };
    let node = cp
        .registry()
        .create(req, Utc::now())
        .await
        .with_context(|| format!("failed to register this machine as ring 0 node {label}"))?;
    tracing::info!(uuid = %node.meta.uuid, %label, "registered this machine as a ring 0 node");
    Ok(node)
}

/// The host name, made into a valid label.
fn machine_label() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitize_label(raw.trim())
}

fn sanitize_label(raw: &str) -> String {
    let mapped: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() { "machine".into() } else { trimmed.into() }
}

fn machine_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    Resources { cpu_millis: Some(cpus * 1000), memory_bytes: memory, disk_bytes: None, pids: None }
}

fn banner(
    url: &str,
    dir: &Path,
    token: &Path,
    ca: Option<&Path>,
    machine: Option<&Object<NodeSpec>>,
    hub: Option<SocketAddr>,
    edge: Option<&edge::Listening>,
) {
    println!("enjin is up");
    println!("  API:        {url}   (OpenAPI document: {url}/v1/openapi.json)");
    println!("  data:       {}", dir.display());
    println!("  token:      {}   (admin; send it as `Authorization: Bearer <token>`)", token.display());
    match ca {
        Some(ca) => println!("  CA:         {}   (the API's certificate comes from it)", ca.display()),
        None => println!("  TLS:        off (--insecure-http); loopback only"),
    }
    if let Some(m) = machine {
        println!("  this node:  ring 0 node {} ({})", m.meta.label.as_deref().unwrap_or("?"), m.meta.uuid);
    }
    if let Some(h) = hub {
        println!("  bus:        ring 1 hub on {h} (mutual TLS, certificates from {}/pki)", dir.display());
    }
    if let Some(e) = edge {
        println!(
            "  router:     http://<app>.localhost:{}   (apps, once deployed: enjin deploy examples/python-hello)",
            e.router.port()
        );
        println!("  dns:        {}   (dig @{} -p {} <app>.enjin.internal)", e.dns, e.dns.ip(), e.dns.port());
    }
    println!("try:");
    println!("  enjin node list                 (from a checkout: cargo run -- node list)");
    let cacert = ca.map(|c| format!("--cacert {} ", c.display())).unwrap_or_default();
    println!("  curl {cacert}-H \"Authorization: Bearer $(cat {})\" {url}/v1/nodes", token.display());
    println!("Ctrl-C stops it; running it again resumes the same cloud; `enjin down` takes it apart.");
}

/// The ring 0 token-signing key (`<data-dir>/keys/token-signing.key`, 0600), made on first
/// start: it signs the root biscuit of every token, so biscuits survive a restart.
fn token_signing_key(dir: &std::path::Path) -> Result<enjin_control::biscuits::TokenKey> {
    use std::os::unix::fs::PermissionsExt;
    let keys = dir.join("keys");
    fs::create_dir_all(&keys).with_context(|| format!("failed to create {}", keys.display()))?;
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("failed to make {} private", keys.display()))?;
    let path = keys.join("token-signing.key");
    enjin_control::biscuits::TokenKey::load_or_create(&path)
        .with_context(|| format!("failed to load the token-signing key {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(check_plain_http(true, addr("127.0.0.1:7480")).is_ok());
        assert!(check_plain_http(true, addr("[::1]:7480")).is_ok());
        assert!(check_plain_http(false, addr("0.0.0.0:7480")).is_ok(), "TLS anywhere");
        for refused in ["0.0.0.0:7480", "10.0.0.5:7480", "[::]:7480"] {
            let err = check_plain_http(true, addr(refused)).expect_err(refused);
            let msg = format!("{err:#}");
            assert!(msg.contains("--insecure-http") && msg.contains(refused), "{msg}");
        }
    }

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:80".parse().expect("addr")).to_string(), "127.0.0.1:80");
        assert_eq!(reachable("[::]:80".parse().expect("addr")).to_string(), "[::1]:80");
        assert_eq!(reachable("10.0.0.5:80".parse().expect("addr")).to_string(), "10.0.0.5:80");
    }

    #[test]
    fn host_names_become_labels() {
        assert_eq!(sanitize_label("Build-Box.local"), "build-box.local");
        assert_eq!(sanitize_label("--weird host!"), "weird-host");
        assert_eq!(sanitize_label(""), "machine");
        assert!(enjin_model::validate_label(&sanitize_label(&"x".repeat(100))).is_ok());
    }
}
