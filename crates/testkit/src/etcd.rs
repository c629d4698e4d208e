//! A throwaway etcd for one test: its own data directory and loopback ports, stopped, reaped
//! and removed on drop. Tuned for tests: a short election timeout, so that it leads within a
//! fraction of a second and leases can be as short as etcd allows (one second), and room for
//! large transactions. A missing `etcd` binary fails the test, naming `scripts/install-deps`.

use std::path::{Path, PathBuf};

use crate::daemon::{Daemon, free_port};

/// The most operations of one transaction the test server accepts (etcd's default is 128).
pub const ETCD_MAX_TXN_OPS: usize = 10_000;

/// PEM files that make the server speak TLS on its client port and require client
/// certificates signed by `trusted_ca`.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The server's certificate; it must name 127.0.0.1.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA whose client certificates the server accepts.
    pub trusted_ca: PathBuf,
}

/// A running etcd on loopback; killed, reaped and its directory removed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    daemon: Daemon,
    endpoint: String,
}

impl EtcdServer {
    /// Starts etcd with plain HTTP and waits until its client port accepts connections (it
    /// may still be electing itself; clients retry until it answers).
    pub fn start() -> EtcdServer {
        Self::start_with(None)
    }

    /// Starts etcd, with TLS and client certificates on its client port when `tls` is given.
    pub fn start_with(tls: Option<&EtcdTls>) -> EtcdServer {
        Self::launch(tls, true)
    }

    /// Starts etcd with plain HTTP and etcd's own request limits (128 operations per
    /// transaction, 1.5 MiB per request), for code that must stay within what a production
    /// cluster accepts.
    pub fn start_with_default_limits() -> EtcdServer {
        Self::launch(None, false)
    }

    fn launch(tls: Option<&EtcdTls>, roomy: bool) -> EtcdServer {
        let (daemon, endpoint) = Daemon::start("etcd", "etcd-server", |dir, command| {
            let (client, peer) = (free_port(), free_port());
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            if let Some(tls) = tls {
                command
                    .arg(format!("--cert-file={}", tls.cert.display()))
                    .arg(format!("--key-file={}", tls.key.display()))
                    .arg(format!("--trusted-ca-file={}", tls.trusted_ca.display()))
                    .arg("--client-cert-auth");
            }
            command
                .arg("--name=test")
                .arg(format!("--data-dir={}", dir.join("data").display()))
                .arg(format!("--listen-client-urls={endpoint}"))
                .arg(format!("--advertise-client-urls={endpoint}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=test={peer_url}"))
                .arg("--heartbeat-interval=10")
                .arg("--election-timeout=100");
            if roomy {
                command.arg(format!("--max-txn-ops={ETCD_MAX_TXN_OPS}")).arg("--max-request-bytes=33554432");
            }
            (client, endpoint)
        });
        EtcdServer { daemon, endpoint }
    }

    /// The client URL, `http://127.0.0.1:<port>` (or `https://`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's directory: its data and its log (`etcd.log`).
    pub fn dir(&self) -> &Path {
        self.daemon.dir()
    }
}
