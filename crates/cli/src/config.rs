//! Configuration, read once here: the data directory, `enjin.toml`, and where the CLI finds
//! its server and token. Nothing below the CLI reads the environment or these files.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::args::Global;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
pub const DEFAULT_BUS_LISTEN: &str = "127.0.0.1:7481";
pub const CONFIG_FILE: &str = "enjin.toml";
pub const TOKEN_FILE: &str = "admin.token";
pub const ENDPOINT_FILE: &str = "endpoint";
pub const STATE_FILE: &str = "state.db";
pub const DEFAULT_ROUTER_LISTEN: &str = "127.0.0.1:7482";
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:7453";

/// `enjin.toml` in the data directory. Every field is optional; defaults are in code and in
/// docs/configuration.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub bus: BusFileConfig,
    #[serde(default)]
    pub hosts: HostsFileConfig,
    #[serde(default)]
    pub router: RouterFileConfig,
    #[serde(default)]
    pub dns: DnsFileConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFileConfig {
    /// Where the HTTP router listens (default 127.0.0.1:7482).
    pub listen: Option<SocketAddr>,
    /// Apps are served at `<app>.<domain>` (default `localhost`).
    pub domain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFileConfig {
    /// Where the DNS service listens, UDP and TCP (default 127.0.0.1:7453).
    pub listen: Option<SocketAddr>,
    /// The zone of apps, instances and hosts (default `enjin.internal`).
    pub zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsFileConfig {
    /// How many ring 1 hosts `enjin up` runs (default 2).
    pub count: Option<usize>,
    /// The hosts network's range, when hosts get network namespaces (default 10.250.0.0/24).
    pub cidr: Option<enjin_model::kinds::Cidr>,
    /// Seconds without a heartbeat before a host is *disconnected* (default 10) …
    pub disconnected_after_seconds: Option<u64>,
    /// … and before it is *lost* (default 300).
    pub lost_after_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusFileConfig {
    /// Where the ring 1 bus hub listens (default 127.0.0.1:7481).
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the API listens (default 127.0.0.1:7480).
    pub listen: Option<SocketAddr>,
}

/// The data directory: `--data-dir`, else `/var/lib/enjin` as root, else
/// `$XDG_DATA_HOME/enjin` (or `~/.local/share/enjin`).
pub fn data_dir(global: &Global) -> Result<PathBuf> {
    if let Some(d) = &global.data_dir {
        return Ok(d.clone());
    }
    if is_root() {
        return Ok(PathBuf::from("/var/lib/enjin"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("enjin"));
    }
    let home = std::env::var_os("HOME").context("neither --data-dir, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/enjin"))
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective uid; no libc call needed.
    fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

pub fn load_file_config(dir: &Path) -> Result<FileConfig> {
    let path = dir.join(CONFIG_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("invalid {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Create the data directory, private to its owner.
pub fn ensure_data_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("failed to create data directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("failed to make {} private", dir.display()))
}

/// Write a secret file with mode 0600 from the start (never briefly world-readable).
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("failed to create {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("failed to move {} into place", path.display()))
}

/// Where the CLI sends requests, and with which token.
#[derive(Debug)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
}

pub fn target(global: &Global) -> Result<Target> {
    let dir = data_dir(global).ok();
    let server = match &global.server {
        Some(s) => s.clone(),
        None => dir
            .as_ref()
            .and_then(|d| fs::read_to_string(d.join(ENDPOINT_FILE)).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}")),
    };
    let token = match &global.token {
        Some(t) => Some(t.clone()),
        None => dir
            .as_ref()
            .and_then(|d| fs::read_to_string(d.join(TOKEN_FILE)).ok())
            .map(|t| t.trim().to_string()),
    };
    if token.is_none() {
        tracing::debug!("no token given and none readable in the data directory");
    }
    if token.as_deref().is_some_and(str::is_empty) {
        bail!("the token is empty");
    }
    Ok(Target { server, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t");
        write_secret(&p, "s3cret").expect("write");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(&p).expect("read"), "s3cret");
    }

    #[test]
    fn config_refuses_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(CONFIG_FILE), "[api]\nlisten = \"127.0.0.1:9\"\n").expect("write");
        let c = load_file_config(dir.path()).expect("valid");
        assert_eq!(c.api.listen, Some("127.0.0.1:9".parse().expect("addr")));
        fs::write(dir.path().join(CONFIG_FILE), "[api]\nlisen = 1\n").expect("write");
        let err = load_file_config(dir.path()).expect_err("typo refused");
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    }
}
