//! A throwaway etcd for one test: its own data directory and loopback ports, stopped and reaped
//! on drop. Tuned for tests: a short election timeout, so that it leads within a fraction of a
//! second and leases can be as short as etcd allows (one second), and room for large
//! transactions.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enjin_store::EtcdStore;
use tempfile::TempDir;

use crate::PATIENCE;

/// The most operations of one transaction the test server accepts (etcd's default is 128).
pub(crate) const MAX_TXN_OPS: usize = 10_000;

pub(crate) struct EtcdServer {
    child: Child,
    pub(crate) endpoint: String,
    dir: TempDir,
}

/// PEM files that make the server speak TLS on its client port and require client
/// certificates signed by `trusted_ca`.
pub(crate) struct ServerTls {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
    pub(crate) trusted_ca: std::path::PathBuf,
}

/// A port that was free a moment ago (etcd binds it itself; a clash makes it exit, and
/// [`EtcdServer::start`] tries again with other ports).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl EtcdServer {
    /// Starts etcd and waits until its client port accepts connections. Fails (never skips)
    /// when the `etcd` binary is missing.
    pub(crate) fn start() -> EtcdServer {
        Self::start_with(None)
    }

    /// Starts etcd, with TLS and client certificates on its client port when `tls` is given.
    pub(crate) fn start_with(tls: Option<&ServerTls>) -> EtcdServer {
        let found =
            Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok_and(|status| status.success()),
            "the etcd binary is missing: run scripts/install-deps (it installs Debian's etcd-server)"
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for etcd");
            let (client, peer) = (free_port(), free_port());
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.path().join("etcd.log");
            let log_file = File::create(&log).expect("create the etcd log");
            let mut command = Command::new("etcd");
            if let Some(tls) = tls {
                command
                    .arg(format!("--cert-file={}", tls.cert.display()))
                    .arg(format!("--key-file={}", tls.key.display()))
                    .arg(format!("--trusted-ca-file={}", tls.trusted_ca.display()))
                    .arg("--client-cert-auth");
            }
            let child = command
                .arg("--name=test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={endpoint}"))
                .arg(format!("--advertise-client-urls={endpoint}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=test={peer_url}"))
                .arg("--heartbeat-interval=10")
                .arg("--election-timeout=100")
                .arg(format!("--max-txn-ops={MAX_TXN_OPS}"))
                .arg("--max-request-bytes=33554432")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("start etcd");
            let mut server = EtcdServer { child, endpoint, dir };
            if server.wait_listening() {
                return server;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("etcd did not start on loopback; its last log:\n{last_log}");
    }

    /// Whether the client port accepts connections before etcd exits or the patience ends.
    fn wait_listening(&mut self) -> bool {
        let address = self.endpoint.split_once("://").map_or("", |(_, address)| address).to_owned();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if TcpStream::connect(&address).is_ok() {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A store connected to this server; waits until the server answers (it elects itself
    /// leader first).
    pub(crate) async fn connect(&self) -> EtcdStore {
        self.connect_with(crate::etcd_config(&self.endpoint)).await
    }

    /// Like [`EtcdServer::connect`], with a configuration of the test's own.
    pub(crate) async fn connect_with(&self, config: enjin_store::EtcdStoreConfig) -> EtcdStore {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match EtcdStore::connect(config.clone()).await {
                Ok(store) => return store,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "etcd at {} does not answer: {e}; its log is in {}",
                        self.endpoint,
                        self.dir.path().display()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Already gone is fine; either way it is reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
