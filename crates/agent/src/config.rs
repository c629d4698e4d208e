//! What a parent gives an agent at birth, in the agent's directory: `agent.json` (ring, node,
//! hub), `bus.key` (its Ed25519 identity, 0600), `tls.crt`/`tls.key` (0600)/`ca.crt` (its ring's
//! TLS), and `bundle.env` (its signed trust bundle).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use enjin_bus::tls::TlsMaterial;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why the agent's directory could not be read or written. Every one means the directory is not
/// as its parent prepared it; the agent cannot fix it on its own.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file is missing or unreadable.
    #[error("failed to read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error from the filesystem, as text.
        error: String,
    },
    /// `agent.json` could not be written.
    #[error("failed to write {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error from the filesystem, as text.
        error: String,
    },
    /// A file was read but its content is wrong: `agent.json` does not parse (unknown fields
    /// included), or a PEM file is not UTF-8.
    #[error("invalid {path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: String,
    },
    /// `bus.key` could not be loaded as an Ed25519 identity.
    #[error("bad identity: {0}")]
    Key(String),
}

/// An agent's connection to its ring's bus.
#[allow(missing_debug_implementations, reason = "transports are trait objects without Debug")]
pub struct BusConnection {
    /// What it publishes and subscribes on.
    pub transport: std::sync::Arc<dyn enjin_bus::transport::Transport>,
    /// The hub's client, when the bus is the hub (certificates are renewed on it).
    pub hub: Option<std::sync::Arc<enjin_bus::client::BusClient>>,
}

/// `agent.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// The ring the agent belongs to; `enjin agent --ring N` refuses a directory prepared for
    /// another ring.
    pub ring: u8,
    /// The agent's own node (host) uuid: it names the bus topics it follows and reports on,
    /// and its branch of the cgroup tree.
    pub node: Uuid,
    /// The ring's bus hub to connect to (mutual TLS).
    pub hub: SocketAddr,
    /// The name the hub's certificate must carry; `localhost` when left out.
    #[serde(default = "localhost")]
    pub server_name: String,
    /// Whether this host runs `unix-user` children in the sandbox (it needs root). Each child
    /// runs as the uid the control plane reserved for it (`spec.run.uid`).
    #[serde(default)]
    pub sandbox: bool,
    /// Rotate the agent's bus key once it is this many seconds old (default 30 days; 0:
    /// never on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_key_after_seconds: Option<u64>,
    /// The ring's bus is NATS at this URL (`nats://…`), joined as the user in `nats.creds`;
    /// `hub` is then not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<String>,
}

/// How old an agent's bus key gets before the agent rotates it, unless configured.
pub const DEFAULT_KEY_ROTATION: Duration = Duration::from_secs(30 * 86_400);

fn localhost() -> String {
    "localhost".into()
}

/// The agent's settings: `agent.json` read once, with the directory it came from, which also
/// holds the agent's keys and state.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's directory, prepared by its parent; root's alone on a host.
    pub dir: PathBuf,
    /// See [`AgentFile::ring`].
    pub ring: u8,
    /// See [`AgentFile::node`].
    pub node: Uuid,
    /// See [`AgentFile::hub`].
    pub hub: SocketAddr,
    /// See [`AgentFile::server_name`].
    pub server_name: String,
    /// Runs `unix-user` children in the sandbox.
    pub sandbox: bool,
    /// When the agent rotates its bus key; `None`: never on its own.
    pub rotate_key_after: Option<Duration>,
    /// See [`AgentFile::nats`].
    pub nats: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Read { path: path.to_path_buf(), error: e.to_string() })
}

impl AgentConfig {
    /// The settings file's name inside the agent's directory.
    pub const FILE: &'static str = "agent.json";

    /// Read the agent's directory.
    pub fn load(dir: &Path) -> Result<AgentConfig, ConfigError> {
        let path = dir.join(Self::FILE);
        let f: AgentFile = serde_json::from_slice(&read(&path)?)
            .map_err(|e| ConfigError::Invalid { path: path.clone(), error: e.to_string() })?;
        Ok(AgentConfig {
            dir: dir.to_path_buf(),
            ring: f.ring,
            node: f.node,
            hub: f.hub,
            server_name: f.server_name,
            sandbox: f.sandbox,
            rotate_key_after: match f.rotate_key_after_seconds {
                None => Some(DEFAULT_KEY_ROTATION),
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
            },
            nats: f.nats,
        })
    }

    /// Write `agent.json` (the parent does this when it prepares a host): atomically, 0600.
    pub fn write(dir: &Path, file: &AgentFile) -> Result<(), ConfigError> {
        let path = dir.join(Self::FILE);
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| ConfigError::Invalid { path: path.clone(), error: e.to_string() })?;
        enjin_sys::fs::write_private(&path, &bytes)
            .map_err(|e| ConfigError::Write { path, error: e.to_string() })
    }

    /// `<dir>/bus.key`: the agent's Ed25519 bus identity (0600), replaced when the key rotates.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("bus.key")
    }

    /// The ring's CA (`ca.crt`) and the agent's certificate and key (`tls.crt`, `tls.key`),
    /// read now: after a renewal the next call sees the new files.
    pub fn tls(&self) -> Result<TlsMaterial, ConfigError> {
        let text = |name: &str| {
            let p = self.dir.join(name);
            String::from_utf8(read(&p)?).map_err(|e| ConfigError::Invalid { path: p, error: e.to_string() })
        };
        Ok(TlsMaterial { ca_pem: text("ca.crt")?, cert_pem: text("tls.crt")?, key_pem: text("tls.key")? })
    }

    /// The raw bytes of `bundle.env`, the signed trust bundle the agent was born with; it is
    /// verified when the agent joins the bus, not here.
    pub fn bundle(&self) -> Result<Vec<u8>, ConfigError> {
        read(&self.dir.join("bundle.env"))
    }

    /// The agent's credentials and how it keeps them fresh.
    pub fn credentials(&self) -> crate::credentials::Credentials {
        crate::credentials::Credentials { dir: self.dir.clone(), rotate_key_after: self.rotate_key_after }
    }

    /// `<dir>/nats.creds`: the agent's NATS user (JWT and seed, 0600), when its bus is NATS.
    pub fn nats_creds_file(&self) -> PathBuf {
        self.dir.join("nats.creds")
    }

    /// Connect to the ring's bus: NATS when the directory names a server, else the hub over
    /// mutual TLS (whose client is returned too: the agent renews its certificate on it).
    pub async fn connect_bus(&self) -> Result<BusConnection, String> {
        use enjin_bus::client::{BusClient, ClientConfig};
        use enjin_bus::nats::auth::NatsCredentials;
        use enjin_bus::nats::{NatsAuth, NatsConfig, NatsTransport};
        match &self.nats {
            Some(url) => {
                let path = self.nats_creds_file();
                let text = String::from_utf8(read(&path).map_err(|e| e.to_string())?)
                    .map_err(|_| format!("{} is not text", path.display()))?;
                let creds = NatsCredentials::from_creds_file(&text)
                    .ok_or_else(|| format!("{} holds no NATS user", path.display()))?;
                let mut config = NatsConfig::new(url.clone());
                config.member_id = Some(self.node.to_string());
                config.auth = Some(NatsAuth::Credentials(creds));
                // Mutual TLS with the agent's ring certificate, as on the hub.
                if url.starts_with("tls://") {
                    config.tls = Some(self.tls().map_err(|e| e.to_string())?);
                }
                let transport = NatsTransport::connect(config).await.map_err(|e| e.to_string())?;
                Ok(BusConnection { transport: std::sync::Arc::new(transport), hub: None })
            }
            None => {
                let tls = self.tls().map_err(|e| e.to_string())?;
                let client = std::sync::Arc::new(
                    BusClient::connect(self.hub, &self.server_name, &tls, ClientConfig::default())
                        .map_err(|e| e.to_string())?,
                );
                Ok(BusConnection { transport: client.clone(), hub: Some(client) })
            }
        }
    }

    /// Where the agent keeps its children's state and logs.
    pub fn children_dir(&self) -> PathBuf {
        self.dir.join("children")
    }
}
