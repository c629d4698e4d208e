//! Configuration, read once here: the data directory, `enjin.toml`, and where the CLI finds
//! its server and token. Nothing below the CLI reads the environment or these files.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use enjin_control::{AuditConfig, InstanceDefaults};
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
    #[serde(default)]
    pub instances: InstancesFileConfig,
    #[serde(default)]
    pub audit: AuditFileConfig,
}

/// `[audit]`: how long the audit log keeps its records (`retention`, a duration such as
/// `"90d"`, `"12h"` or `"30m"`). Validated when the file is read, with errors naming the key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawAudit")]
pub struct AuditFileConfig(pub AuditConfig);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// Default 90d.
    retention: Option<toml::Value>,
}

/// The shortest retention: records must outlive the prune pass that would otherwise delete
/// them before anyone could read them.
const MIN_RETENTION_SECS: u64 = 3600;
/// The longest: about 100 years, only there to keep time arithmetic finite.
const MAX_RETENTION_SECS: u64 = 100 * 365 * 86_400;

impl TryFrom<RawAudit> for AuditFileConfig {
    type Error = String;

    fn try_from(raw: RawAudit) -> Result<Self, String> {
        let retention = match raw.retention {
            None => AuditConfig::RETENTION,
            Some(v) => retention(&v).map_err(|m| format!("[audit] retention: {m}"))?,
        };
        Ok(AuditFileConfig(AuditConfig { retention }))
    }
}

/// A retention period: `"90d"`, `"12h"`, `"30m"`, `"3600s"`, from an hour to a century.
fn retention(value: &toml::Value) -> Result<std::time::Duration, String> {
    let toml::Value::String(text) = value else {
        return Err(format!("must be a duration such as \"90d\" or \"12h\", not {value}"));
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{text:?} is not a duration such as \"90d\" or \"12h\""))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    let secs = n.saturating_mul(unit_secs);
    if !(MIN_RETENTION_SECS..=MAX_RETENTION_SECS).contains(&secs) {
        return Err(format!("{text:?} must be from 1h to {}d", MAX_RETENTION_SECS / 86_400));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// `[instances]`: the limits an instance gets when its spec (or its app's manifest) leaves one
/// out. Each is a number (bytes, a count, cores), a size like `"512MiB"` for memory and disk,
/// or `"unlimited"`. Validated when the file is read, with errors naming the key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawInstances")]
pub struct InstancesFileConfig(pub InstanceDefaults);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstances {
    /// Default 512MiB.
    memory: Option<toml::Value>,
    /// Default 256.
    pids: Option<toml::Value>,
    /// In cores; default 1.
    cpu: Option<toml::Value>,
    /// Default 1GiB.
    disk: Option<toml::Value>,
}

/// The word that lifts a limit.
const UNLIMITED: &str = "unlimited";
/// The most cores a default may be; only there to keep the arithmetic finite.
const MAX_CPU_CORES: f64 = 1_000_000.0;

impl TryFrom<RawInstances> for InstancesFileConfig {
    type Error = String;

    fn try_from(raw: RawInstances) -> Result<Self, String> {
        let d = InstanceDefaults::default();
        let pick = |value: Option<toml::Value>,
                    key: &str,
                    default: Option<u64>,
                    parse: fn(&toml::Value) -> Result<u64, String>| {
            match value {
                None => Ok(default),
                Some(toml::Value::String(s)) if s == UNLIMITED => Ok(None),
                Some(v) => parse(&v).map(Some).map_err(|m| format!("[instances] {key}: {m}")),
            }
        };
        Ok(InstancesFileConfig(InstanceDefaults {
            memory_bytes: pick(raw.memory, "memory", d.memory_bytes, size)?,
            pids: pick(raw.pids, "pids", d.pids, count)?,
            cpu_millis: pick(raw.cpu, "cpu", d.cpu_millis, cpu_millis)?,
            disk_bytes: pick(raw.disk, "disk", d.disk_bytes, size)?,
        }))
    }
}

/// A size: a positive number of bytes, or a string like `"512MiB"`.
fn size(value: &toml::Value) -> Result<u64, String> {
    let bytes = match value {
        toml::Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} is not a size"))?,
        toml::Value::String(s) => {
            enjin_app::manifest::parse_size(s).map_err(|m| format!("{m}, nor \"{UNLIMITED}\""))?
        }
        other => {
            return Err(format!(
                "must be a size such as \"512MiB\", a number of bytes or \"{UNLIMITED}\", not {other}"
            ));
        }
    };
    if bytes == 0 {
        return Err(format!("must be more than 0 bytes; write \"{UNLIMITED}\" for no limit"));
    }
    Ok(bytes)
}

/// A positive count.
fn count(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        toml::Value::Integer(n) => {
            Err(format!("must be a positive number, not {n}; write \"{UNLIMITED}\" for no limit"))
        }
        other => Err(format!("must be a positive number or \"{UNLIMITED}\", not {other}")),
    }
}

/// Cores, as thousandths of a core.
fn cpu_millis(value: &toml::Value) -> Result<u64, String> {
    let cores = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        other => {
            return Err(format!("must be a number of cores such as 1.5, or \"{UNLIMITED}\", not {other}"));
        }
    };
    if !cores.is_finite() || !(0.001..=MAX_CPU_CORES).contains(&cores) {
        return Err(format!(
            "must be a number of cores from 0.001 to {MAX_CPU_CORES}, not {cores}; write \"{UNLIMITED}\" for no limit"
        ));
    }
    // In range (checked above), so the cast neither truncates nor wraps.
    Ok((cores * 1000.0).round() as u64)
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

    fn instances(text: &str) -> Result<InstanceDefaults> {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(CONFIG_FILE), text).expect("write");
        Ok(load_file_config(dir.path())?.instances.0)
    }

    #[test]
    fn instance_defaults_apply_without_an_instances_section() {
        let d = instances("").expect("valid");
        assert_eq!(d, InstanceDefaults::default());
        assert_eq!(d.memory_bytes, Some(512 << 20));
        assert_eq!(d.pids, Some(256));
        assert_eq!(d.cpu_millis, Some(1000));
        assert_eq!(d.disk_bytes, Some(1 << 30));
    }

    #[test]
    fn instance_limits_take_sizes_numbers_and_unlimited() {
        let d = instances("[instances]\nmemory = \"1GiB\"\npids = 64\ncpu = 0.5\ndisk = 2147483648\n")
            .expect("valid");
        assert_eq!(
            d,
            InstanceDefaults {
                memory_bytes: Some(1 << 30),
                pids: Some(64),
                cpu_millis: Some(500),
                disk_bytes: Some(2 << 30)
            }
        );
        let d = instances("[instances]\nmemory = \"unlimited\"\npids = \"unlimited\"\ncpu = \"unlimited\"\ndisk = \"unlimited\"\n")
            .expect("valid");
        assert_eq!(d, InstanceDefaults::UNLIMITED);
        // What is left out keeps its default.
        let d = instances("[instances]\ncpu = 2\n").expect("valid");
        assert_eq!(d, InstanceDefaults { cpu_millis: Some(2000), ..InstanceDefaults::default() });
    }

    #[test]
    fn bad_instance_limits_are_refused_naming_the_key() {
        for (text, key) in [
            ("memory = \"lots\"", "[instances] memory"),
            ("memory = 0", "[instances] memory"),
            ("memory = -5", "[instances] memory"),
            ("memory = true", "[instances] memory"),
            ("disk = \"12XB\"", "[instances] disk"),
            ("pids = 0", "[instances] pids"),
            ("pids = \"many\"", "[instances] pids"),
            ("pids = 1.5", "[instances] pids"),
            ("cpu = 0", "[instances] cpu"),
            ("cpu = -1.0", "[instances] cpu"),
            ("cpu = nan", "[instances] cpu"),
            ("cpu = \"two\"", "[instances] cpu"),
        ] {
            let err = instances(&format!("[instances]\n{text}\n")).expect_err(text);
            let msg = format!("{err:#}");
            assert!(msg.contains(key), "{text}: {msg}");
            assert!(msg.contains(CONFIG_FILE), "{text}: {msg}");
        }
        let err = instances("[instances]\nmemroy = 1\n").expect_err("typo refused");
        assert!(format!("{err:#}").contains("memroy"), "{err:#}");
    }

    fn audit(text: &str) -> Result<AuditConfig> {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(CONFIG_FILE), text).expect("write");
        Ok(load_file_config(dir.path())?.audit.0)
    }

    #[test]
    fn audit_retention_defaults_and_parses() {
        use std::time::Duration;
        assert_eq!(audit("").expect("valid").retention, Duration::from_secs(90 * 86_400));
        for (text, secs) in
            [("\"30d\"", 30 * 86_400), ("\"12h\"", 12 * 3600), ("\"90m\"", 5400), ("\"3600s\"", 3600)]
        {
            let got = audit(&format!("[audit]\nretention = {text}\n")).expect(text).retention;
            assert_eq!(got, Duration::from_secs(secs), "{text}");
        }
    }

    #[test]
    fn bad_audit_retention_is_refused_naming_the_key() {
        for text in ["\"soon\"", "\"10y\"", "\"30\"", "\"59m\"", "\"0d\"", "\"-1d\"", "90", "\"40000d\""] {
            let err = audit(&format!("[audit]\nretention = {text}\n")).expect_err(text);
            let msg = format!("{err:#}");
            assert!(msg.contains("[audit] retention"), "{text}: {msg}");
        }
        let err = audit("[audit]\nretension = \"1d\"\n").expect_err("typo refused");
        assert!(format!("{err:#}").contains("retension"), "{err:#}");
    }
}
