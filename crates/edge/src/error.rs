use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why the edge could not start, or a parent could not prepare or find it.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot start the edge")]
    Config(#[source] enjin_agent::ConfigError),
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to encode {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the HTTP router on {addr}; pick another address with --router-listen")]
    RouterListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the DNS service on udp {addr}; pick another address with --dns-listen")]
    DnsListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the DNS service on tcp {addr}")]
    DnsTcpListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the edge's listening address")]
    LocalAddr(#[source] std::io::Error),
    #[error("the edge's identity")]
    Identity(#[source] enjin_bus::identity::LoadKeyError),
    #[error("the edge's trust bundle")]
    Bundle(#[source] enjin_bus::node::NodeError),
    #[error("failed to connect to the ring bus")]
    Connect(#[source] enjin_bus::client::ClientError),
    #[error("failed to join the ring bus")]
    Join(#[source] enjin_bus::node::NodeError),
    #[error("the edge (router and DNS) did not start listening within {patience:?}; its log is in {}", log.display())]
    NotListening { patience: Duration, log: PathBuf },
}
