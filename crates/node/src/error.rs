use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cloud::CloudError;
use crate::config::ConfigError;
use crate::hosts::HostsError;

/// Why `enjin up` or `enjin server` could not start or stopped badly, or `enjin store copy`
/// failed. Each variant names the step and the object; its source says why.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The ring's bus on NATS could not be set up: its URL, the operator's seeds in
    /// `<data-dir>/nats`, a user, or the server itself.
    #[error("NATS: {0}")]
    Nats(String),
    /// The configuration was refused before anything started; nothing was touched.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created (a permission, or a file in the way).
    #[error("failed to create data directory {}", path.display())]
    DataDir {
        /// The data directory as configured.
        path: PathBuf,
        /// Why it could not be created.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory of the data directory could not be written, created or chmod-ed.
    #[error("failed to {action} {}", path.display())]
    Io {
        /// What was being done, a verb phrase that completes "failed to …" (`"write"`,
        /// `"set the mode of"`).
        action: &'static str,
        /// The file or directory acted on.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The data directory's cloud could not be claimed or recorded (`enjin up` only), including
    /// when another `enjin up` already runs on it.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The store could not be opened.
    #[error("failed to open the state store {}", path.display())]
    OpenStore {
        /// The database file, `<data-dir>/state.db`, or the etcd endpoints.
        path: PathBuf,
        /// The store's reason.
        #[source]
        source: enjin_store::StoreError,
    },
    /// `enjin store copy` found no store to copy in the data directory.
    #[error("no state store at {}: nothing to copy (is this the cloud's data directory?)", .0.display())]
    NoStore(PathBuf),
    /// `enjin store copy` was refused or failed; the source store is untouched.
    #[error("failed to copy the state store to {}", to.display())]
    StoreCopy {
        /// The etcd endpoints.
        to: PathBuf,
        /// What went wrong, and what the target holds now.
        #[source]
        source: enjin_store::CopyError,
    },
    /// The store failed to close at shutdown, after the API and the hosts had stopped.
    #[error("failed to close the state store")]
    CloseStore(#[source] enjin_store::StoreError),
    /// The ring 0 key that signs every token could not be read or created; without it no token
    /// issued before would verify, so the node does not start.
    #[error("failed to load the token-signing key {}", path.display())]
    TokenKey {
        /// `<data-dir>/keys/token-signing.key`.
        path: PathBuf,
        /// Why it could not be read or made.
        #[source]
        source: enjin_control::biscuits::TokenKeyError,
    },
    /// A step that reads or writes objects through the registry failed (bootstrap, the admin
    /// token, registering this machine).
    #[error("{what}")]
    Registry {
        /// The step, as a whole message (`"failed to bootstrap the system account and roles"`).
        what: String,
        /// The registry's reason.
        #[source]
        source: enjin_control::RegistryError,
    },
    /// The API's address could not be bound.
    #[error("failed to listen on {addr}: is another enjin running? pick another address with --listen")]
    Listen {
        /// The API's configured listen address.
        addr: SocketAddr,
        /// Usually "address in use" or a permission on a low port.
        #[source]
        source: std::io::Error,
    },
    /// The bound API listener could not say its own address (should not happen).
    #[error("listener address")]
    LocalAddr(#[source] std::io::Error),
    /// The ring 0 CA in `<data-dir>/pki`, which issues the API's certificate, could not be
    /// loaded or created.
    #[error("failed to open the ring 0 certificate authority")]
    RingCa(#[source] enjin_pki::PkiError),
    /// The API's certificate could not be issued or its TLS configuration built.
    #[error("failed to set up TLS for the API")]
    ApiTls(#[source] enjin_control::tls::ApiTlsError),
    /// The key service or the control plane's place on the ring 1 bus could not be set up.
    #[error("{what}")]
    Bus {
        /// The step, as a whole message (`"failed to start the key service"`).
        what: &'static str,
        /// The bus authority's reason.
        #[source]
        source: enjin_control::bus::BusError,
    },
    /// The ring 1 hub could not listen (`enjin up` only).
    #[error("failed to start the ring 1 bus hub on {addr}; pick another with --bus-listen")]
    Hub {
        /// The address asked for (`--bus-listen`, its IP replaced by the hosts' gateway as root).
        addr: SocketAddr,
        /// Why the hub could not bind.
        #[source]
        source: enjin_bus::hub::HubError,
    },
    /// The control plane's own bus client could not be built to join the hub it hosts.
    #[error("failed to connect the control plane to its bus")]
    BusClient(#[source] enjin_bus::client::ClientError),
    /// The hosts' network (bridge, instance network, routes) could not be set up as root, or
    /// the edge's node and directory could not be prepared: the source names which.
    #[error(transparent)]
    HostsNetwork(HostsError),
    /// The hosts could not be created, enrolled or put under supervision.
    #[error("failed to start the ring 1 hosts")]
    Hosts(#[source] HostsError),
    /// The edge did not start listening in time, or said it failed.
    #[error(transparent)]
    Edge(#[from] enjin_edge::EdgeError),
    /// The platform (apps, deploys) could not open its package store in `<data-dir>/packages`.
    #[error("failed to open the package store")]
    Platform(#[source] enjin_control::platform::PlatformError),
    /// The API server stopped with an error rather than at shutdown; the rest was still stopped
    /// and the store closed before this is returned.
    #[error("the API server on {addr} failed")]
    Serve {
        /// The address the API was serving on.
        addr: SocketAddr,
        /// The server's reason.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task (named) panicked; a bug.
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
