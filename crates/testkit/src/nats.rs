//! A throwaway `nats-server` for one test: loopback, a free port, JetStream on with its store
//! in the server's own temporary directory, killed, reaped and removed on drop. A missing
//! `nats-server` binary fails the test, naming `scripts/install-deps`.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server gets to listen.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// The largest message the test server accepts: room for the bus's largest payload (2 MiB)
/// and its headers.
pub const NATS_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// A running nats-server on loopback; killed, reaped and its directory removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl NatsServer {
    /// Starts nats-server with JetStream and no authorization.
    pub fn start() -> NatsServer {
        Self::start_with("")
    }

    /// Starts nats-server with `extra` appended to its configuration file (an
    /// `authorization { … }` block, say), and waits until its client port accepts connections.
    pub fn start_with(extra: &str) -> NatsServer {
        let found =
            Command::new("nats-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok_and(|status| status.success()),
            "the nats-server binary is missing: run scripts/install-deps (it installs Debian's nats-server)"
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = std::env::temp_dir().join(crate::unique("enjin-nats"));
            std::fs::create_dir_all(&dir).expect("create the nats test directory");
            let port = free_port();
            let config = dir.join("nats.conf");
            let store = dir.join("jetstream");
            std::fs::write(
                &config,
                format!(
                    "listen: \"127.0.0.1:{port}\"\nmax_payload: {NATS_MAX_PAYLOAD}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n{extra}\n",
                    store.display()
                ),
            )
            .expect("write the nats config");
            let log = dir.join("nats.log");
            let log_file = File::create(&log).expect("create the nats log");
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .expect("start nats-server");
            let mut server = NatsServer { child, url: format!("nats://127.0.0.1:{port}"), dir };
            if server.wait_listening(port) {
                return server;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("nats-server did not start on loopback; its last log:\n{last_log}");
    }

    /// Whether the client port accepts connections before the server exits or patience ends.
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

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's directory: its configuration, JetStream store and log (`nats.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
