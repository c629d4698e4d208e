use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why the edge could not start, or a parent could not prepare or find it.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The edge's `agent.json`, trust bundle or TLS material from its parent is missing or
    /// invalid: the parent did not prepare the directory, or it was changed since.
    #[error("cannot start the edge")]
    Config(#[source] enjin_agent::ConfigError),
    /// A file of the edge's directory could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The JSON file: `edge.json` or `listening.json`.
        path: PathBuf,
        /// The operating system's reason (a missing file included).
        #[source]
        source: std::io::Error,
    },
    /// A file of the edge's directory is not the JSON its type expects.
    #[error("invalid {path}")]
    Invalid {
        /// The JSON file.
        path: PathBuf,
        /// Where and why it does not parse; unknown fields are refused.
        #[source]
        source: serde_json::Error,
    },
    /// A file's content could not be encoded as JSON (should not happen).
    #[error("failed to encode {path}")]
    Encode {
        /// The file that was to be written.
        path: PathBuf,
        /// The encoder's reason.
        #[source]
        source: serde_json::Error,
    },
    /// A file of the edge's directory could not be written (atomically, 0600); the old
    /// content, if any, is left whole.
    #[error("failed to write {path}")]
    Write {
        /// `edge.json` or `listening.json`.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP router's TCP address could not be bound.
    #[error("failed to start the HTTP router on {addr}; pick another address with --router-listen")]
    RouterListen {
        /// `router_listen` from `edge.json`.
        addr: SocketAddr,
        /// Usually "address in use", or a permission on a low port.
        #[source]
        source: std::io::Error,
    },
    /// The DNS service's UDP address could not be bound.
    #[error("failed to start the DNS service on udp {addr}; pick another address with --dns-listen")]
    DnsListen {
        /// `dns_listen` from `edge.json`.
        addr: SocketAddr,
        /// Usually "address in use", or a permission on a low port.
        #[source]
        source: std::io::Error,
    },
    /// The DNS service's TCP listener could not be bound on the same address and port as its
    /// UDP socket.
    #[error("failed to start the DNS service on tcp {addr}")]
    DnsTcpListen {
        /// The address the UDP socket got (its port chosen when `dns_listen` asked for 0).
        addr: SocketAddr,
        /// Usually the port is free for UDP but taken for TCP.
        #[source]
        source: std::io::Error,
    },
    /// A bound socket could not say its own address (should not happen).
    #[error("the edge's listening address")]
    LocalAddr(#[source] std::io::Error),
    /// The edge's private key is missing, not a regular file, or readable by group or others
    /// (then it is refused unread).
    #[error("the edge's identity")]
    Identity(#[source] enjin_bus::identity::LoadKeyError),
    /// The trust bundle given at birth does not decode, or is not signed by a parent key it
    /// lists itself.
    #[error("the edge's trust bundle")]
    Bundle(#[source] enjin_bus::node::NodeError),
    /// The bus client could not be built (its TLS material or NATS credentials are unusable,
    /// or NATS did not answer). An unreachable hub is not this error: its client connects, and
    /// reconnects, in the background.
    #[error("failed to connect to the bus: {0}")]
    Bus(String),
    /// The edge could not start as a bus node, or subscribe to the route and DNS topics.
    #[error("failed to join the ring bus")]
    Join(#[source] enjin_bus::node::NodeError),
    /// [`wait_listening`](crate::wait_listening) timed out: no `listening.json` naming a
    /// running process appeared in time. The edge may have failed to start, or still be trying.
    #[error("the edge (router and DNS) did not start listening within {patience:?}; its log is in {}", log.display())]
    NotListening {
        /// How long the parent waited.
        patience: Duration,
        /// `logs` beside the edge's directory, named in the message as where to look.
        log: PathBuf,
    },
}
