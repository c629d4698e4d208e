use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cloud::CloudError;
use crate::config::ConfigError;
use crate::hosts::HostsError;

/// Why `enjin up` or `enjin server` could not start, or stopped badly. Each variant names the
/// step and the object; its source says why.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to create data directory {}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("failed to open the state store {}", path.display())]
    OpenStore {
        path: PathBuf,
        #[source]
        source: enjin_store::StoreError,
    },
    #[error("failed to close the state store")]
    CloseStore(#[source] enjin_store::StoreError),
    #[error("failed to load the token-signing key {}", path.display())]
    TokenKey {
        path: PathBuf,
        #[source]
        source: enjin_control::biscuits::TokenKeyError,
    },
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: enjin_control::RegistryError,
    },
    #[error("failed to listen on {addr}: is another enjin running? pick another address with --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener address")]
    LocalAddr(#[source] std::io::Error),
    #[error("failed to open the ring 0 certificate authority")]
    RingCa(#[source] enjin_pki::PkiError),
    #[error("failed to set up TLS for the API")]
    ApiTls(#[source] enjin_control::tls::ApiTlsError),
    #[error("{what}")]
    Bus {
        what: &'static str,
        #[source]
        source: enjin_control::bus::BusError,
    },
    #[error("failed to start the ring 1 bus hub on {addr}; pick another with --bus-listen")]
    Hub {
        addr: SocketAddr,
        #[source]
        source: enjin_bus::hub::HubError,
    },
    #[error("failed to connect the control plane to its bus")]
    BusClient(#[source] enjin_bus::client::ClientError),
    #[error(transparent)]
    HostsNetwork(HostsError),
    #[error("failed to start the ring 1 hosts")]
    Hosts(#[source] HostsError),
    #[error(transparent)]
    Edge(#[from] enjin_edge::EdgeError),
    #[error("failed to open the package store")]
    Platform(#[source] enjin_control::platform::PlatformError),
    #[error("the API server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} panicked")]
    Panicked(&'static str),
}

/// `e` and its sources, `: `-separated, for a log line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
