//! A throwaway `nats-server` for one test: loopback, a free port, JetStream on with its store
//! in the server's own temporary directory, killed, reaped and removed on drop. A missing
//! `nats-server` binary fails the test, naming `scripts/install-deps`.

use std::path::Path;

use crate::daemon::{Daemon, free_port};

/// The largest message the test server accepts: room for the bus's largest payload (2 MiB)
/// and its headers.
pub const NATS_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// A running nats-server on loopback; killed, reaped and its directory removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    daemon: Daemon,
    url: String,
}

impl NatsServer {
    /// Starts nats-server with JetStream and no authorization.
    pub fn start() -> NatsServer {
        Self::start_with("")
    }

    /// Starts nats-server with `extra` appended to its configuration file (an
    /// `authorization { … }` block, say), and waits until its client port accepts connections.
    pub fn start_with(extra: &str) -> NatsServer {
        let (daemon, url) = Daemon::start("nats-server", "nats-server", |dir, command| {
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
            command.arg("-c").arg(&config);
            (port, format!("nats://127.0.0.1:{port}"))
        });
        NatsServer { daemon, url }
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's directory: its configuration, JetStream store and log (`nats-server.log`).
    pub fn dir(&self) -> &Path {
        self.daemon.dir()
    }
}
