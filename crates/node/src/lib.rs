//! The runtime of `enjin up` and `enjin server`: open the store, bootstrap, serve the API until
//! `shutdown` completes; with `up`, also this machine as the ring 0 node, the ring 1 hub, and
//! the ring 1 hosts and edge it supervises ([`hosts`], [`edge`]). What a cloud makes outside
//! its data directory is recorded and taken apart by [`cloud`].
//!
//! It is the only crate that starts the control plane's servers. It never parses arguments,
//! reads the environment or installs a signal handler: it is given a validated [`NodeConfig`]
//! and a shutdown future.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod banner;
pub mod cloud;
mod config;
mod copy;
pub mod edge;
mod error;
pub mod hosts;
mod hub;
pub mod layout;
mod machine;
mod nats;
pub use nats::{account as nats_account, server_config as nats_server_config};

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_control::bus::{BusAuthority, BusConfig};
use enjin_control::cache::WatchCache;
use enjin_control::platform::{Platform, PlatformConfig};
use enjin_control::{ControlConfig, ControlPlane, Registry};
use enjin_model::Ring;
use enjin_store::{EtcdStore, EtcdStoreConfig, EtcdTlsConfig, SqliteStore, SqliteStoreConfig, Store};
use tokio::net::TcpListener;

pub use config::{
    ConfigError, DEFAULT_BUS_LISTEN, DEFAULT_DISCONNECTED_AFTER, DEFAULT_DNS_LISTEN, DEFAULT_HOSTS,
    DEFAULT_HOSTS_CIDR, DEFAULT_INSTANCE_CIDR, DEFAULT_LISTEN, DEFAULT_LOST_AFTER, DEFAULT_ROUTER_LISTEN,
    EtcdBackend, Mode, NodeConfig, StoreBackend,
};
pub use copy::copy_store;
pub use enjin_store::{COPY_MARKER_KEY, CopyReport};
pub use error::NodeError;
use layout::{CA_FILE, ENDPOINT_FILE, STATE_FILE, TOKEN_FILE};

/// How long the edge gets to start listening before `enjin up` gives up on it.
const EDGE_PATIENCE: Duration = Duration::from_secs(30);

/// Run `enjin up` (`Mode::Up`) or `enjin server` (`Mode::Server`) until `shutdown` completes,
/// then stop: the API drains, nothing more is published, the hosts' agents are stopped
/// gracefully (each stops its own children), the store is closed.
///
/// `shutdown` is spawned as a task of its own, so that it is listened for from the start
/// whatever this is doing: hence `Send + 'static`.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    let whole_cloud = config.mode == Mode::Up;
    let dir = config.data_dir.clone();
    ensure_data_dir(&dir)?;
    if whole_cloud {
        cloud::claim(&dir)?;
    }
    let store = open_store(&dir, &config.store).await?;
    tracing::info!(instances = ?config.instances, "limits for instances that leave them out");
    tracing::info!(retention_seconds = config.audit.retention.as_secs(), "audit log retention");
    tracing::info!(api_limits = ?config.api_limits, "limits at the API's door");
    let token_key = token_signing_key(&dir)?;

    // One shutdown signal for every part: the API, the watch cache, the hub.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Lists are answered from one watch cache of the store, shared by the API and the bus.
    let control_config =
        ControlConfig { instances: config.instances, api: config.api_limits, audit: config.audit };
    let cache = WatchCache::start(store.clone(), stop_rx.clone());
    let registry = Registry::with_config(store.clone(), &control_config).with_cache(cache);
    let cp = ControlPlane::with_registry(registry.clone(), &control_config).with_token_key(token_key);
    cp.bootstrap().await.map_err(|source| NodeError::Registry {
        what: "failed to bootstrap the system account and roles".into(),
        source,
    })?;

    let token_path = dir.join(TOKEN_FILE);
    if !token_path.exists() {
        let created =
            cp.auth().issue_admin("the admin token of this data directory", Utc::now()).await.map_err(
                |source| NodeError::Registry { what: "failed to create the admin token".into(), source },
            )?;
        write_private(&token_path, &created.token)?;
        tracing::info!(path = %token_path.display(), "admin token created");
    }

    let listen = config.listen;
    let listener =
        TcpListener::bind(listen).await.map_err(|source| NodeError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(NodeError::LocalAddr)?;
    let (cp, url) = if config.insecure_http {
        (cp, format!("http://{}", reachable(addr)))
    } else {
        let tls = api_tls(&dir, addr, &config.tls_names)?;
        (cp.with_tls(tls), format!("https://{}", reachable(addr)))
    };
    write_private(&dir.join(ENDPOINT_FILE), &format!("{url}\n"))?;

    let machine = if whole_cloud { Some(machine::register(&cp).await?) } else { None };

    // Keys and trust are a ring 0 service; `enjin up` also hosts the ring 1 bus as its parent.
    let bus_config = BusConfig {
        ring: Ring::INFRASTRUCTURE,
        keys_dir: dir.join("keys"),
        pki_dir: dir.join("pki"),
        label: machine.as_ref().and_then(|m| m.meta.label.clone()).unwrap_or_else(machine::label),
        node: machine.as_ref().map(|m| m.meta.uuid),
        disconnected_after: config.disconnected_after,
        lost_after: config.lost_after,
        certificate_validity: config.certificate_validity,
        member_key_overlap: enjin_control::bus::DEFAULT_OVERLAP,
    };
    let authority = BusAuthority::open(registry, bus_config)
        .await
        .map_err(|source| NodeError::Bus { what: "failed to start the key service", source })?;
    let mut hub_addr = None;
    let mut nats_plan: Option<hosts::NatsPlan> = None;
    let mut host_supervisor = None;
    let mut edge = None;
    if whole_cloud {
        let mut bus_listen = config.bus_listen;
        // Hosts in network namespaces reach this machine on their bridge, not on loopback.
        let hosts_net = if hosts::can_netns() {
            // What this cloud makes outside its data directory is recorded before it is made;
            // what clouds whose data directories are gone left is reclaimed first.
            let id = cloud::cloud_id(&dir)?;
            let own = id.clone();
            tokio::task::spawn_blocking(move || cloud::reclaim(&own))
                .await
                .map_err(|_| NodeError::Panicked("reclaiming"))?;
            let record = cloud::record_for(&dir, &id)?;
            let net = hosts::hosts_network(&cp, config.hosts_cidr, config.instance_cidr, record)
                .await
                .map_err(NodeError::HostsNetwork)?;
            bus_listen = SocketAddr::new(net.gateway, bus_listen.port());
            Some(net)
        } else {
            None
        };
        let own_tls = authority.local_tls("control-plane", &[]).map_err(|source| NodeError::Bus {
            what: "failed to make the control plane's certificate",
            source,
        })?;
        let addr = match &config.bus_nats {
            // The ring's bus on NATS: no hub here; every node a user of the ring's account.
            Some(url) => {
                let gateway = hosts_net.as_ref().map(|n| n.gateway);
                let (plan, transport) = nats::connect(&dir, url, gateway, own_tls).await?;
                authority
                    .attach(Arc::new(transport))
                    .await
                    .map_err(|source| NodeError::Bus { what: "failed to join the ring 1 bus", source })?;
                let addr = plan.server;
                // Machines that join reach the server as the hosts do, on the hosts' network.
                authority.set_nats(plan.plan.account.clone(), plan.plan.hosts_url.clone());
                nats_plan = Some(plan.plan);
                addr
            }
            None => {
                let hub = hub::bind(&dir, bus_listen, &authority).await?;
                let addr = hub.local_addr();
                authority.set_hub(addr, hub.stats());
                tokio::spawn(hub.run(stopped(stop_rx.clone())));
                let client = BusClient::connect(addr, "localhost", &own_tls, ClientConfig::default())
                    .map_err(NodeError::BusClient)?;
                authority
                    .attach(Arc::new(client))
                    .await
                    .map_err(|source| NodeError::Bus { what: "failed to join the ring 1 bus", source })?;
                addr
            }
        };
        hub_addr = Some(addr);
        if let Some(machine) = &machine {
            let listen = enjin_edge::EdgeFile {
                router_listen: config.router_listen,
                dns_listen: config.dns_listen,
                instance_dns: hosts_net
                    .as_ref()
                    .map(|n| SocketAddr::new(n.gateway, enjin_control::netpolicy::DNS_PORT)),
            };
            let edge_dir = dir.join("edge");
            let edge_spec =
                edge::prepare(&cp, &authority, machine, &edge_dir, addr, listen, nats_plan.as_ref())
                    .await
                    .map_err(NodeError::HostsNetwork)?;
            let plan = hosts::HostsPlan {
                machine,
                data_dir: &dir,
                hub: addr,
                net: hosts_net.as_ref(),
                count: config.hosts,
                also: vec![edge_spec],
                nats: nats_plan.as_ref(),
            };
            let sup = hosts::start(&cp, &authority, plan).await.map_err(NodeError::Hosts)?;
            host_supervisor = Some(sup);
            edge = Some(enjin_edge::wait_listening(&edge_dir, EDGE_PATIENCE).await?);
        }
    }
    let platform_config = {
        let mut c = PlatformConfig::new(dir.join("packages"));
        if let Some(d) = &config.domain {
            c.domain.clone_from(d);
        }
        if let Some(z) = &config.zone {
            c.zone.clone_from(z);
        }
        c.router = edge.as_ref().map(|e: &enjin_edge::Listening| e.router);
        c
    };
    let platform = Platform::open(cp.registry().clone(), platform_config).map_err(NodeError::Platform)?;
    if hub_addr.is_some() {
        platform.attach_bus(authority.clone());
    }
    let cp = cp.with_bus(authority.clone()).with_platform(platform);
    let ca = (!config.insecure_http).then(|| dir.join(CA_FILE));
    banner::Banner {
        url: &url,
        dir: &dir,
        token: &token_path,
        ca: ca.as_deref(),
        machine: machine.as_ref(),
        hub: hub_addr,
        nats: config.bus_nats.as_deref(),
        edge: edge.as_ref(),
    }
    .print();

    let served = cp.serve(listener, stopped(stop_rx)).await;
    // Nothing is published for hosts that are stopping.
    authority.stop().await;
    if let Some(sup) = host_supervisor {
        // Stop the hosts' agents gracefully; each stops its own children.
        if let Err(e) = sup.shutdown().await {
            tracing::warn!(error = %e, "hosts' supervisor was already gone");
        }
    }
    store.close().await.map_err(NodeError::CloseStore)?;
    served.map_err(|source| NodeError::Serve { addr, source })?;
    if whole_cloud {
        cloud::release(&dir);
    }
    Ok(())
}

/// Create the data directory, private to its owner.
fn ensure_data_dir(dir: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir { path: dir.to_path_buf(), source })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| NodeError::Io {
        action: "set the mode of",
        path: dir.to_path_buf(),
        source,
    })
}

/// The store the configuration names.
async fn open_store(dir: &Path, backend: &StoreBackend) -> Result<Arc<dyn Store>, NodeError> {
    match backend {
        StoreBackend::Sqlite => open_sqlite(dir).await,
        StoreBackend::Etcd(etcd) => open_etcd(dir, etcd).await,
    }
}

/// How long the etcd client certificate is valid. A new one is issued at every start, and a
/// running control plane keeps its connections, so this only bounds a stolen one.
const ETCD_CLIENT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// The store on an etcd cluster; over TLS, with a client certificate the ring 0 CA issues now
/// (kept in memory only) and the servers checked against `ca_file` or that CA.
async fn open_etcd(dir: &Path, etcd: &EtcdBackend) -> Result<Arc<dyn Store>, NodeError> {
    let mut config = EtcdStoreConfig::new(etcd.endpoints.iter().cloned());
    if etcd.tls() {
        let ca = enjin_pki::RingCa::load_or_create(&dir.join("pki"), Ring::META.get())
            .map_err(NodeError::RingCa)?;
        let client = ca.issue("enjin-control", &[], ETCD_CLIENT_VALIDITY).map_err(NodeError::RingCa)?;
        let ca_pem = match &etcd.ca_file {
            Some(path) => std::fs::read(path).map_err(|source| NodeError::Io {
                action: "read",
                path: path.clone(),
                source,
            })?,
            None => ca.cert_pem().as_bytes().to_vec(),
        };
        config.tls = Some(EtcdTlsConfig {
            ca_pem,
            cert_pem: client.cert_pem.into_bytes(),
            key_pem: client.key_pem.into_bytes(),
            domain: None,
        });
    }
    let store = EtcdStore::connect(config)
        .await
        .map_err(|source| NodeError::OpenStore { path: PathBuf::from(etcd.endpoints.join(",")), source })?;
    Ok(Arc::new(store))
}

/// The store in `dir`, readable by the owner alone: it holds every object.
async fn open_sqlite(dir: &Path) -> Result<Arc<dyn Store>, NodeError> {
    let db = dir.join(STATE_FILE);
    let path = db.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(SqliteStoreConfig::new(db)))
        .await
        .map_err(|_| NodeError::Panicked("store opener"))?
        .map_err(|source| NodeError::OpenStore { path, source })?;
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.join(format!("{STATE_FILE}{suffix}"));
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| NodeError::Io { action: "set the mode of", path: p, source })?;
        }
    }
    Ok(Arc::new(store))
}

/// Write a file atomically with mode 0600 from the start (never briefly world-readable).
fn write_private(path: &Path, contents: &str) -> Result<(), NodeError> {
    enjin_sys::fs::write_private(path, contents.as_bytes()).map_err(|source| NodeError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// The API's TLS: the ring 0 CA (created in `<data-dir>/pki` on first start, its certificate
/// copied to `<data-dir>/ca.crt` for clients) issues a certificate for the names clients use.
fn api_tls(dir: &Path, addr: SocketAddr, extra: &[String]) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    let ca =
        enjin_pki::RingCa::load_or_create(&dir.join("pki"), Ring::META.get()).map_err(NodeError::RingCa)?;
    // Not a secret, but private like everything in the data directory (docs/security.md):
    // others get it from the operator, for `enjin login --ca`.
    write_private(&dir.join(CA_FILE), ca.cert_pem())?;
    let names = enjin_control::tls::api_names(addr, extra);
    tracing::info!(?names, "API certificate names");
    enjin_control::tls::server_config(&ca, &names).map_err(NodeError::ApiTls)
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

/// The ring 0 token-signing key (`<data-dir>/keys/token-signing.key`, 0600), made on first
/// start: it signs the root biscuit of every token, so biscuits survive a restart.
fn token_signing_key(dir: &Path) -> Result<enjin_control::biscuits::TokenKey, NodeError> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(|source| NodeError::Io {
        action: "create",
        path: keys.clone(),
        source,
    })?;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| NodeError::Io { action: "set the mode of", path: keys.clone(), source })?;
    let path = keys.join("token-signing.key");
    enjin_control::biscuits::TokenKey::load_or_create(&path)
        .map_err(|source| NodeError::TokenKey { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:80".parse().expect("addr")).to_string(), "127.0.0.1:80");
        assert_eq!(reachable("[::]:80".parse().expect("addr")).to_string(), "[::1]:80");
        assert_eq!(reachable("10.0.0.5:80".parse().expect("addr")).to_string(), "10.0.0.5:80");
    }
}
