//! Configuration, read once here: the data directory, `enjin.toml`, and where the CLI finds
//! its server and token. Nothing below the CLI reads the environment or these files.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use enjin_control::{ApiLimits, AuditConfig, InstanceDefaults, Rate};
use serde::Deserialize;

use crate::args::{Global, ServeArgs};
use crate::contexts::{self, Contexts};

pub const CONFIG_FILE: &str = "enjin.toml";
pub use enjin_node::layout::{CA_FILE, ENDPOINT_FILE, TOKEN_FILE};
use enjin_node::{DEFAULT_LISTEN, EtcdBackend, Mode, NodeConfig, StoreBackend};

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
    #[serde(default)]
    pub store: StoreFileConfig,
}

/// `[store]`: where the control plane keeps its objects. `backend` is `"sqlite"` (the default:
/// `<data-dir>/state.db`) or `"etcd"`, which takes `endpoints` and, with `https://` ones,
/// `ca_file`. The endpoints themselves are checked by `NodeConfig::validate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFileConfig {
    pub backend: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub ca_file: Option<PathBuf>,
}

impl StoreFileConfig {
    /// The backend, with errors naming the key.
    pub fn backend(&self) -> Result<StoreBackend> {
        match self.backend.as_deref() {
            None | Some("sqlite") => {
                for (key, set) in
                    [("endpoints", self.endpoints.is_some()), ("ca_file", self.ca_file.is_some())]
                {
                    if set {
                        bail!("[store] {key}: only with backend = \"etcd\" (the backend is sqlite)");
                    }
                }
                Ok(StoreBackend::Sqlite)
            }
            Some("etcd") => Ok(StoreBackend::Etcd(EtcdBackend {
                endpoints: self.endpoints.clone().unwrap_or_default(),
                ca_file: self.ca_file.clone(),
            })),
            Some(other) => bail!("[store] backend: {other:?} is neither \"sqlite\" nor \"etcd\""),
        }
    }
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
    /// The instance network's range (default 10.252.0.0/16): each host owns a /24 of it, the
    /// one at its offset on the hosts network.
    pub instance_cidr: Option<enjin_model::kinds::Cidr>,
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
    /// How long the certificates of the ring's members are valid (default a day); members
    /// renew theirs over the bus when two thirds of it have passed.
    pub certificate_validity_seconds: Option<u64>,
    /// The ring 1 bus on a NATS server (`nats://host:port`) instead of the embedded hub
    /// (`up` only; `enjin nats config` prints what the server needs).
    pub nats_url: Option<String>,
}

impl BusFileConfig {
    /// Shortest certificate validity accepted: members must have time to renew.
    const MIN_CERTIFICATE_VALIDITY: u64 = 30;
    /// Longest: short-lived certificates are the point.
    const MAX_CERTIFICATE_VALIDITY: u64 = 30 * 86_400;

    /// The members' certificate validity, checked.
    pub fn certificate_validity(&self) -> anyhow::Result<std::time::Duration> {
        match self.certificate_validity_seconds {
            None => Ok(enjin_control::bus::CERT_VALIDITY),
            Some(s) if (Self::MIN_CERTIFICATE_VALIDITY..=Self::MAX_CERTIFICATE_VALIDITY).contains(&s) => {
                Ok(std::time::Duration::from_secs(s))
            }
            Some(s) => anyhow::bail!(
                "[bus] certificate_validity_seconds: {s} is outside {}..={} (30 seconds to 30 days)",
                Self::MIN_CERTIFICATE_VALIDITY,
                Self::MAX_CERTIFICATE_VALIDITY
            ),
        }
    }
}

/// `[api]`: where the API listens, the extra names its certificate carries, and its limits at
/// the door. Validated when the file is read, with errors naming the key.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawApi")]
pub struct ApiConfig {
    /// Where the API listens (default 127.0.0.1:7480).
    pub listen: Option<SocketAddr>,
    /// Names (DNS names or IP addresses) the API certificate carries besides localhost, the
    /// loopback addresses and the listen address.
    pub tls_names: Vec<String>,
    pub limits: ApiLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<SocketAddr>,
    #[serde(default)]
    tls_names: Vec<String>,
    /// Requests per second per principal (default 100), or "unlimited".
    rate: Option<toml::Value>,
    /// Requests a principal may make at once (default twice the rate).
    burst: Option<toml::Value>,
    /// Failed authentications per second per source address (default 1), or "unlimited".
    failed_auth_rate: Option<toml::Value>,
    /// Failed authentications a source address may make at once (default 20).
    failed_auth_burst: Option<toml::Value>,
    /// Open connections at most (default 1024).
    max_connections: Option<toml::Value>,
    /// Seconds (default 10 each, idle 60).
    header_timeout_seconds: Option<toml::Value>,
    /// Seconds to send a request's body after its headers (default 300).
    body_timeout_seconds: Option<toml::Value>,
    tls_handshake_timeout_seconds: Option<toml::Value>,
    idle_timeout_seconds: Option<toml::Value>,
}

/// The longest timeout `[api]` takes, in seconds: a day.
const MAX_TIMEOUT_SECONDS: u64 = 86_400;

impl TryFrom<RawApi> for ApiConfig {
    type Error = String;

    fn try_from(raw: RawApi) -> Result<Self, String> {
        let d = ApiLimits::default();
        fn key(k: &'static str) -> impl Fn(String) -> String {
            move |m| format!("[api] {k}: {m}")
        }
        for name in &raw.tls_names {
            if !enjin_control::tls::valid_name(name) {
                return Err(format!("[api] tls_names: {name:?} is neither a DNS name nor an IP address"));
            }
        }
        let rate = rate_setting(
            (raw.rate, "rate"),
            (raw.burst, "burst"),
            Rate { per_second: ApiLimits::RATE_PER_SECOND, burst: ApiLimits::BURST },
        )?;
        let failed_auth = rate_setting(
            (raw.failed_auth_rate, "failed_auth_rate"),
            (raw.failed_auth_burst, "failed_auth_burst"),
            Rate { per_second: ApiLimits::FAILED_AUTH_PER_SECOND, burst: ApiLimits::FAILED_AUTH_BURST },
        )?;
        let seconds = |v: Option<toml::Value>, k: &'static str, default: std::time::Duration| match v {
            None => Ok(default),
            Some(v) => {
                bounded(&v, 1, MAX_TIMEOUT_SECONDS).map(std::time::Duration::from_secs).map_err(key(k))
            }
        };
        let max_connections = match raw.max_connections {
            None => d.max_connections,
            Some(v) => bounded(&v, 1, ApiLimits::MAX_MAX_CONNECTIONS as u64)
                .map_err(key("max_connections"))? as usize,
        };
        Ok(ApiConfig {
            listen: raw.listen,
            tls_names: raw.tls_names,
            limits: ApiLimits {
                rate,
                failed_auth,
                max_connections,
                header_timeout: seconds(
                    raw.header_timeout_seconds,
                    "header_timeout_seconds",
                    d.header_timeout,
                )?,
                body_timeout: seconds(raw.body_timeout_seconds, "body_timeout_seconds", d.body_timeout)?,
                handshake_timeout: seconds(
                    raw.tls_handshake_timeout_seconds,
                    "tls_handshake_timeout_seconds",
                    d.handshake_timeout,
                )?,
                idle_timeout: seconds(raw.idle_timeout_seconds, "idle_timeout_seconds", d.idle_timeout)?,
            },
        })
    }
}

/// A token bucket from a rate key (a whole number per second, or "unlimited" for none) and a
/// burst key (default: `default`'s burst with the default rate, else twice the rate).
fn rate_setting(
    (rate, rate_key): (Option<toml::Value>, &'static str),
    (burst, burst_key): (Option<toml::Value>, &'static str),
    default: Rate,
) -> Result<Option<Rate>, String> {
    fn key(k: &'static str) -> impl Fn(String) -> String {
        move |m| format!("[api] {k}: {m}")
    }
    let per_second = match rate {
        Some(toml::Value::String(s)) if s == UNLIMITED => None,
        Some(v) => Some(bounded(&v, 1, 1_000_000).map_err(key(rate_key))?),
        None => Some(u64::from(default.per_second)),
    };
    let Some(per_second) = per_second else {
        if burst.is_some() {
            return Err(format!("[api] {burst_key}: needs a rate; {rate_key} is \"unlimited\""));
        }
        return Ok(None);
    };
    let burst = match burst {
        Some(v) => bounded(&v, 1, 10_000_000).map_err(key(burst_key))?,
        None if per_second == u64::from(default.per_second) => u64::from(default.burst),
        None => per_second * 2,
    };
    // Both in range of u32 (checked above).
    Ok(Some(Rate { per_second: per_second as u32, burst: burst as u32 }))
}

/// A whole number from `min` to `max`.
fn bounded(value: &toml::Value, min: u64, max: u64) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) if (min as i128..=max as i128).contains(&i128::from(*n)) => Ok(*n as u64),
        other => Err(format!("must be a whole number from {min} to {max}, not {other}")),
    }
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

/// The configuration of `enjin up` (`Mode::Up`) or `enjin server`: flags first, then
/// `enjin.toml` in the data directory, then the defaults `enjin_node` writes down. The one
/// place they are merged; the result is validated before anything starts.
pub fn node_config(global: &Global, args: &ServeArgs, mode: Mode) -> Result<NodeConfig> {
    let dir = data_dir(global)?;
    let file = load_file_config(&dir)?;
    let d = NodeConfig::new(mode, dir);
    let config = NodeConfig {
        listen: args.listen.or(file.api.listen).unwrap_or(d.listen),
        insecure_http: args.insecure_http,
        tls_names: file.api.tls_names,
        api_limits: file.api.limits,
        instances: file.instances.0,
        audit: file.audit.0,
        bus_listen: args.bus_listen.or(file.bus.listen).unwrap_or(d.bus_listen),
        certificate_validity: file.bus.certificate_validity()?,
        bus_nats: file.bus.nats_url.clone(),
        hosts: args.hosts.or(file.hosts.count).unwrap_or(d.hosts),
        hosts_cidr: args.hosts_cidr.or(file.hosts.cidr).unwrap_or(d.hosts_cidr),
        instance_cidr: args.instance_cidr.or(file.hosts.instance_cidr).unwrap_or(d.instance_cidr),
        disconnected_after: file
            .hosts
            .disconnected_after_seconds
            .map_or(d.disconnected_after, std::time::Duration::from_secs),
        lost_after: file.hosts.lost_after_seconds.map_or(d.lost_after, std::time::Duration::from_secs),
        router_listen: args.router_listen.or(file.router.listen).unwrap_or(d.router_listen),
        dns_listen: args.dns_listen.or(file.dns.listen).unwrap_or(d.dns_listen),
        domain: file.router.domain,
        zone: file.dns.zone,
        store: file.store.backend()?,
        ..d
    };
    config.validate()?;
    Ok(config)
}

/// Write a secret file atomically with mode 0600 from the start (never briefly
/// world-readable): [`enjin_sys::fs::write_private`].
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    enjin_sys::fs::write_private(path, contents.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))
}

/// Where the CLI sends requests, with which token, trusting which CA.
#[derive(Debug)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    /// PEM; the only CA the client trusts.
    pub ca_pem: Option<String>,
}

/// Resolve the target. A token and a CA go with the server they came with, never to another:
/// 1. `--server` (or `ENJIN_SERVER`): with the token and CA of a context or a data directory
///    that names the same server, if any;
/// 2. `--context NAME`;
/// 3. an explicit `--data-dir` (or `ENJIN_DATA_DIR`): the server `enjin up` runs from it;
/// 4. the current context;
/// 5. the default data directory's server, else `https://127.0.0.1:7480`.
///
/// `--token` and `--ca` (or `ENJIN_TOKEN`, `ENJIN_CA`) replace whatever came with the server.
pub fn target(global: &Global) -> Result<Target> {
    let mut t = base_target(global)?;
    if let Some(token) = &global.token {
        t.token = Some(token.clone());
    }
    if let Some(path) = &global.ca {
        let pem = fs::read_to_string(path)
            .with_context(|| format!("failed to read the CA file {}", path.display()))?;
        t.ca_pem = Some(pem);
    }
    if t.token.is_none() {
        tracing::debug!(server = %t.server, "no token for this server");
    }
    if t.token.as_deref().is_some_and(str::is_empty) {
        bail!("the token is empty");
    }
    Ok(t)
}

fn base_target(global: &Global) -> Result<Target> {
    let contexts = || -> Result<Contexts> { Contexts::load(&contexts::config_dir()?) };
    if let Some(server) = &global.server {
        if let Some(local) = data_dir(global)
            .ok()
            .and_then(|d| local_target(&d))
            .filter(|l| contexts::same_server(&l.server, server))
        {
            return Ok(local);
        }
        let known = contexts().ok().and_then(|c| c.for_server(server).cloned());
        return Ok(Target {
            server: server.clone(),
            token: known.as_ref().map(|c| c.token.clone()),
            ca_pem: known.and_then(|c| c.ca),
        });
    }
    if let Some(name) = &global.context {
        let all = contexts()?;
        if let Some((_, c)) = all.get(Some(name))? {
            return Ok(from_context(c));
        }
    }
    if global.data_dir.is_none() {
        let all = contexts()?;
        if let Some((_, c)) = all.get(None)? {
            return Ok(from_context(c));
        }
    }
    let dir = data_dir(global).ok();
    Ok(dir.as_deref().and_then(local_target).unwrap_or_else(|| Target {
        server: format!("https://{DEFAULT_LISTEN}"),
        token: dir.as_deref().and_then(|d| read_trimmed(&d.join(TOKEN_FILE))),
        ca_pem: dir.as_deref().and_then(|d| fs::read_to_string(d.join(CA_FILE)).ok()),
    }))
}

fn from_context(c: &contexts::LoginContext) -> Target {
    Target { server: c.server.clone(), token: Some(c.token.clone()), ca_pem: c.ca.clone() }
}

/// The server `enjin up` (or `enjin server`) runs from data directory `dir`, with the admin
/// token and the CA it wrote there.
pub fn local_target(dir: &Path) -> Option<Target> {
    let server = read_trimmed(&dir.join(ENDPOINT_FILE)).filter(|s| !s.is_empty())?;
    Some(Target {
        server,
        token: read_trimmed(&dir.join(TOKEN_FILE)),
        ca_pem: fs::read_to_string(dir.join(CA_FILE)).ok(),
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn serve_config(dir: &Path, toml: &str, flags: &[&str]) -> Result<NodeConfig> {
        fs::write(dir.join(CONFIG_FILE), toml).expect("write");
        let data_dir = dir.display().to_string();
        let mut argv = vec!["enjin", "--data-dir", &data_dir, "up"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv).expect("arguments");
        let Command::Up(args) = &cli.command else { panic!("not up") };
        node_config(&cli.global, args, Mode::Up)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = "[api]\nlisten = \"127.0.0.1:9000\"\n[hosts]\ncount = 3\nlost_after_seconds = 60\n\
                    [router]\nlisten = \"127.0.0.1:9002\"\ndomain = \"apps.test\"\n";
        let c =
            serve_config(dir.path(), toml, &["--listen", "127.0.0.1:9100", "--hosts", "1"]).expect("valid");
        assert_eq!(c.data_dir, dir.path());
        assert_eq!(c.listen.to_string(), "127.0.0.1:9100", "the flag");
        assert_eq!(c.hosts, 1, "the flag");
        assert_eq!(c.router_listen.to_string(), "127.0.0.1:9002", "the file");
        assert_eq!(c.domain.as_deref(), Some("apps.test"));
        assert_eq!(c.lost_after, std::time::Duration::from_secs(60));
        assert_eq!(c.bus_listen, enjin_node::DEFAULT_BUS_LISTEN, "the default");
        assert_eq!(c.disconnected_after, enjin_node::DEFAULT_DISCONNECTED_AFTER);
        assert_eq!(c.hosts_cidr, enjin_node::DEFAULT_HOSTS_CIDR);
    }

    #[test]
    fn a_merged_config_is_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = serve_config(dir.path(), "[api]\nlisten = \"0.0.0.0:7480\"\n", &["--insecure-http"])
            .expect_err("plain HTTP off loopback");
        assert!(format!("{err:#}").contains("refusing --insecure-http on 0.0.0.0:7480"), "{err:#}");
    }

    #[test]
    fn the_store_backend_is_sqlite_unless_etcd_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = serve_config(dir.path(), "", &[]).expect("valid");
        assert_eq!(c.store, StoreBackend::Sqlite);
        let c = serve_config(dir.path(), "[store]\nbackend = \"sqlite\"\n", &[]).expect("valid");
        assert_eq!(c.store, StoreBackend::Sqlite);
        let toml = "[store]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\n\
                    ca_file = \"/etc/etcd/ca.crt\"\n";
        let c = serve_config(dir.path(), toml, &[]).expect("valid");
        let StoreBackend::Etcd(etcd) = &c.store else { panic!("etcd: {:?}", c.store) };
        assert_eq!(etcd.endpoints, ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]);
        assert_eq!(etcd.ca_file.as_deref(), Some(Path::new("/etc/etcd/ca.crt")));
        assert!(etcd.tls());
    }

    #[test]
    fn bad_store_settings_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (toml, says) in [
            ("[store]\nbackend = \"postgres\"\n", "[store] backend: \"postgres\" is neither"),
            (
                "[store]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
                "[store] endpoints: only with backend = \"etcd\"",
            ),
            ("[store]\nbackend = \"etcd\"\n", "[store] endpoints: backend = \"etcd\" needs at least one"),
            (
                "[store]\nbackend = \"etcd\"\nendpoints = [\"http://10.1.2.3:2379\"]\n",
                "plain HTTP off loopback",
            ),
            ("[store]\nbackend = \"etcd\"\nendpont = []\n", "endpont"),
        ] {
            let err = serve_config(dir.path(), toml, &[]).expect_err(says);
            assert!(format!("{err:#}").contains(says), "{toml}: {err:#}");
        }
    }

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

    fn api(text: &str) -> Result<ApiConfig> {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(CONFIG_FILE), text).expect("write");
        Ok(load_file_config(dir.path())?.api)
    }

    #[test]
    fn api_limits_have_defaults_and_take_every_key() {
        let d = api("").expect("valid");
        assert_eq!(d.limits, ApiLimits::default());
        assert_eq!(d.limits.rate, Some(Rate { per_second: 100, burst: 200 }));
        let c = api(
            "[api]\nlisten = \"0.0.0.0:7480\"\ntls_names = [\"enjin.example\", \"10.0.0.5\"]\nrate = 5\n\
             max_connections = 64\nheader_timeout_seconds = 2\ntls_handshake_timeout_seconds = 3\n\
             idle_timeout_seconds = 4\nbody_timeout_seconds = 5\n",
        )
        .expect("valid");
        assert_eq!(c.tls_names, ["enjin.example", "10.0.0.5"]);
        assert_eq!(
            c.limits.rate,
            Some(Rate { per_second: 5, burst: 10 }),
            "burst defaults to twice the rate"
        );
        assert_eq!(c.limits.max_connections, 64);
        assert_eq!(c.limits.header_timeout, std::time::Duration::from_secs(2));
        assert_eq!(c.limits.handshake_timeout, std::time::Duration::from_secs(3));
        assert_eq!(c.limits.idle_timeout, std::time::Duration::from_secs(4));
        assert_eq!(c.limits.body_timeout, std::time::Duration::from_secs(5));
        let c = api("[api]\nrate = 1\nburst = 1\n").expect("valid");
        assert_eq!(c.limits.rate, Some(Rate { per_second: 1, burst: 1 }));
        assert_eq!(api("[api]\nrate = \"unlimited\"\n").expect("valid").limits.rate, None);
        assert_eq!(d.limits.failed_auth, Some(Rate { per_second: 1, burst: 20 }));
        let c = api("[api]\nfailed_auth_rate = 2\nfailed_auth_burst = 5\n").expect("valid");
        assert_eq!(c.limits.failed_auth, Some(Rate { per_second: 2, burst: 5 }));
        let c = api("[api]\nfailed_auth_rate = \"unlimited\"\n").expect("valid");
        assert_eq!(c.limits.failed_auth, None);
        assert_eq!(c.limits.rate, d.limits.rate, "each limit is its own");
    }

    #[test]
    fn bad_api_settings_are_refused_naming_the_key() {
        for (text, key) in [
            ("rate = 0", "[api] rate"),
            ("rate = -1", "[api] rate"),
            ("rate = 1.5", "[api] rate"),
            ("rate = \"lots\"", "[api] rate"),
            ("burst = 0", "[api] burst"),
            ("rate = \"unlimited\"\nburst = 5", "[api] burst"),
            ("failed_auth_rate = 0", "[api] failed_auth_rate"),
            ("failed_auth_burst = -1", "[api] failed_auth_burst"),
            ("failed_auth_rate = \"unlimited\"\nfailed_auth_burst = 5", "[api] failed_auth_burst"),
            ("max_connections = 0", "[api] max_connections"),
            ("header_timeout_seconds = 0", "[api] header_timeout_seconds"),
            ("tls_handshake_timeout_seconds = 100000", "[api] tls_handshake_timeout_seconds"),
            ("idle_timeout_seconds = \"1m\"", "[api] idle_timeout_seconds"),
            ("body_timeout_seconds = 0", "[api] body_timeout_seconds"),
            ("tls_names = [\"not a name\"]", "[api] tls_names"),
        ] {
            let err = api(&format!("[api]\n{text}\n")).expect_err(text);
            let msg = format!("{err:#}");
            assert!(msg.contains(key), "{text}: {msg}");
        }
        let err = api("[api]\nrat = 1\n").expect_err("typo refused");
        assert!(format!("{err:#}").contains("rat"), "{err:#}");
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
