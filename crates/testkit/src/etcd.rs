//! A throwaway etcd for one test: its own data directory and loopback ports, stopped, reaped
//! and removed on drop. Tuned for tests: a short election timeout, so that it leads within a
//! fraction of a second and leases can be as short as etcd allows (one second), and room for
//! large transactions. A missing `etcd` binary fails the test, naming `scripts/install-deps`.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The most operations of one transaction the test server accepts (etcd's default is 128).
pub const ETCD_MAX_TXN_OPS: usize = 10_000;

/// How long the server gets to listen.
const START_PATIENCE: Duration = Duration::from_secs(10);

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
    child: Child,
    endpoint: String,
    dir: PathBuf,
}

/// A port that was free a moment ago (etcd binds it itself; a clash makes it exit, and
/// [`EtcdServer::start_with`] tries again with other ports).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl EtcdServer {
    /// Starts etcd with plain HTTP and waits until its client port accepts connections (it
    /// may still be electing itself; clients retry until it answers).
    pub fn start() -> EtcdServer {
        Self::start_with(None)
    }

    /// Starts etcd, with TLS and client certificates on its client port when `tls` is given.
    pub fn start_with(tls: Option<&EtcdTls>) -> EtcdServer {
        let found =
            Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok_and(|status| status.success()),
            "the etcd binary is missing: run scripts/install-deps (it installs Debian's etcd-server)"
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = std::env::temp_dir().join(crate::unique("enjin-etcd"));
            std::fs::create_dir_all(&dir).expect("create the etcd test directory");
            let (client, peer) = (free_port(), free_port());
            let scheme = if tls.is_some() { "https" } else { "http" };
            let endpoint = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.join("etcd.log");
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
                .arg(format!("--data-dir={}", dir.join("data").display()))
                .arg(format!("--listen-client-urls={endpoint}"))
                .arg(format!("--advertise-client-urls={endpoint}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=test={peer_url}"))
                .arg("--heartbeat-interval=10")
                .arg("--election-timeout=100")
                .arg(format!("--max-txn-ops={ETCD_MAX_TXN_OPS}"))
                .arg("--max-request-bytes=33554432")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("start etcd");
            let mut server = EtcdServer { child, endpoint, dir };
            if server.wait_listening(client) {
                return server;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("etcd did not start on loopback; its last log:\n{last_log}");
    }

    /// Whether the client port accepts connections before etcd exits or the patience ends.
    fn wait_listening(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + START_PATIENCE;
        while Instant::now() < deadline {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The client URL, `http://127.0.0.1:<port>` (or `https://`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's directory: its data and its log (`etcd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Already gone is fine; either way it is reaped and its files removed.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
