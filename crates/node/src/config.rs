//! [`NodeConfig`]: everything `enjin up` and `enjin server` run with, merged by the caller from
//! flags, environment and `enjin.toml` before it gets here, and checked by
//! [`NodeConfig::validate`]. The defaults are written here, once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use enjin_control::{ApiLimits, AuditConfig, InstanceDefaults};
use enjin_model::kinds::Cidr;

/// Where the API listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr = local(7480);
/// Where the ring 1 bus hub listens (with network namespaces only its port counts).
pub const DEFAULT_BUS_LISTEN: SocketAddr = local(7481);
/// Where the edge's HTTP router listens.
pub const DEFAULT_ROUTER_LISTEN: SocketAddr = local(7482);
/// Where the edge's DNS service listens, UDP and TCP.
pub const DEFAULT_DNS_LISTEN: SocketAddr = local(7453);
/// The hosts network's range, when hosts get network namespaces.
pub const DEFAULT_HOSTS_CIDR: Cidr = Cidr { addr: IpAddr::V4(Ipv4Addr::new(10, 250, 0, 0)), prefix: 24 };
/// The instance network's range: each host owns the /24 at its offset on the hosts network.
pub const DEFAULT_INSTANCE_CIDR: Cidr = Cidr { addr: IpAddr::V4(Ipv4Addr::new(10, 252, 0, 0)), prefix: 16 };
/// How many ring 1 hosts `enjin up` runs.
pub const DEFAULT_HOSTS: usize = 2;
/// Silence (no heartbeat) before a host is marked *disconnected*.
pub const DEFAULT_DISCONNECTED_AFTER: Duration = Duration::from_secs(10);
/// Silence before a host is marked *lost*; counted from its last heartbeat, not from when it
/// was marked disconnected.
pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(300);

const fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Which state store the control plane keeps its objects in (`[store]` in `enjin.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded SQLite file `<data-dir>/state.db` (the default).
    #[default]
    Sqlite,
    /// An etcd cluster.
    Etcd(EtcdBackend),
}

/// How to reach the etcd cluster of [`StoreBackend::Etcd`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdBackend {
    /// The members' client URLs: all `https://`, or all `http://` on loopback.
    pub endpoints: Vec<String>,
    /// With `https://` endpoints, the CA that signed the etcd servers' certificates; `None`
    /// trusts the ring 0 CA. The client certificate always comes from the ring 0 CA, issued at
    /// every start, so etcd must trust `<data-dir>/pki/ring-0-ca.crt` (`--trusted-ca-file`).
    pub ca_file: Option<PathBuf>,
}

impl EtcdBackend {
    /// Whether the endpoints are `https://` (all of them, once validated).
    pub fn tls(&self) -> bool {
        self.endpoints.iter().all(|endpoint| endpoint.starts_with("https://"))
    }

    /// Checks the endpoints and `ca_file` (as `[store]` keys in its messages).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let refuse = |reason: String| Err(ConfigError::Store(reason));
        if self.endpoints.is_empty() {
            return refuse("[store] endpoints: backend = \"etcd\" needs at least one endpoint".into());
        }
        let https = self.endpoints.iter().filter(|endpoint| endpoint.starts_with("https://")).count();
        if https != 0 && https != self.endpoints.len() {
            return refuse("[store] endpoints: all https:// or all http://, not a mix".into());
        }
        for endpoint in &self.endpoints {
            let Some((scheme, rest)) = endpoint.split_once("://") else {
                return refuse(format!("[store] endpoints: {endpoint:?} is not an http:// or https:// URL"));
            };
            if scheme != "http" && scheme != "https" {
                return refuse(format!("[store] endpoints: {endpoint:?} is not an http:// or https:// URL"));
            }
            let authority = rest.split('/').next().unwrap_or_default();
            let host = match authority.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => host,
                _ => {
                    return refuse(format!(
                        "[store] endpoints: {endpoint:?} has no port (etcd's is usually 2379)"
                    ));
                }
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            // Every object, token hash and secret reference crosses this link.
            if scheme == "http" && !loopback {
                return refuse(format!(
                    "[store] endpoints: {endpoint:?} is plain HTTP off loopback; use https:// (the store's \
                     client certificate comes from the ring 0 CA)"
                ));
            }
        }
        if self.ca_file.is_some() && https == 0 {
            return refuse("[store] ca_file: only with https:// endpoints".into());
        }
        Ok(())
    }
}

/// Which of the two commands runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `enjin up`: the whole cloud on this machine — the control plane, this machine as the
    /// ring 0 node, the ring 1 hub, hosts and edge.
    Up,
    /// `enjin server`: the control plane alone.
    Server,
}

/// The configuration of one `enjin up` or `enjin server`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Whole cloud or control plane alone; every field marked "`up` only" is ignored by
    /// `Server`.
    pub mode: Mode,
    /// The data directory: the store, keys, certificates, the hosts' and the edge's directories.
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Serve the API as plain HTTP (loopback only, see [`NodeConfig::validate`]).
    pub insecure_http: bool,
    /// Names the API certificate carries besides localhost, loopback and the listen address.
    pub tls_names: Vec<String>,
    /// Rate limits, the connection cap and timeouts at the API's door (`[api]` in `enjin.toml`).
    pub api_limits: ApiLimits,
    /// Limits for instances that leave them out.
    pub instances: InstanceDefaults,
    /// How long the audit log of changes is kept.
    pub audit: AuditConfig,
    /// Where the ring 1 bus hub listens (`up` only).
    pub bus_listen: SocketAddr,
    /// How long the ring's members' certificates are valid.
    pub certificate_validity: Duration,
    /// The ring 1 bus on this NATS server (`nats://…`) instead of the embedded hub (`up`
    /// only): the cloud's NATS operator is kept in `<data-dir>/nats`.
    pub bus_nats: Option<String>,
    /// How many ring 1 hosts run (`up` only).
    pub hosts: usize,
    /// The hosts network (`up` as root).
    pub hosts_cidr: Cidr,
    /// The instance network (`up` as root), used when it is first made; its range then stays.
    pub instance_cidr: Cidr,
    /// A host whose heartbeat is this late is marked *disconnected*; its children are presumed
    /// still running, so nothing is rescheduled yet.
    pub disconnected_after: Duration,
    /// A host whose heartbeat is this late is marked *lost*; longer than `disconnected_after`.
    pub lost_after: Duration,
    /// Where the edge's HTTP router listens (`up` only).
    pub router_listen: SocketAddr,
    /// Where the edge's DNS service listens, UDP and TCP on the same port (`up` only).
    pub dns_listen: SocketAddr,
    /// Apps are served at `<app>.<domain>`; `None` keeps the platform's default.
    pub domain: Option<String>,
    /// The DNS zone of apps, instances and hosts; `None` keeps the platform's default.
    pub zone: Option<String>,
    /// Where the control plane's objects are kept.
    pub store: StoreBackend,
}

impl NodeConfig {
    /// The defaults, for `mode` on `data_dir`.
    pub fn new(mode: Mode, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            mode,
            data_dir,
            listen: DEFAULT_LISTEN,
            insecure_http: false,
            tls_names: Vec::new(),
            api_limits: ApiLimits::default(),
            instances: InstanceDefaults::default(),
            audit: AuditConfig::default(),
            bus_listen: DEFAULT_BUS_LISTEN,
            certificate_validity: enjin_control::bus::CERT_VALIDITY,
            bus_nats: None,
            hosts: DEFAULT_HOSTS,
            hosts_cidr: DEFAULT_HOSTS_CIDR,
            instance_cidr: DEFAULT_INSTANCE_CIDR,
            disconnected_after: DEFAULT_DISCONNECTED_AFTER,
            lost_after: DEFAULT_LOST_AFTER,
            router_listen: DEFAULT_ROUTER_LISTEN,
            dns_listen: DEFAULT_DNS_LISTEN,
            domain: None,
            zone: None,
            store: StoreBackend::Sqlite,
        }
    }

    /// Check what can be checked before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Plain HTTP only when asked for, and only on loopback, where no one else can listen in.
        if self.insecure_http && !self.listen.ip().is_loopback() {
            return Err(ConfigError::PlainHttpOffLoopback { listen: self.listen });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::NoDataDir);
        }
        // A host beats every `HEARTBEAT_EVERY`: a shorter patience marks healthy hosts.
        if self.disconnected_after <= enjin_agent::HEARTBEAT_EVERY {
            return Err(ConfigError::Patience {
                disconnected_after: self.disconnected_after,
                lost_after: self.lost_after,
            });
        }
        if self.lost_after <= self.disconnected_after {
            return Err(ConfigError::Patience {
                disconnected_after: self.disconnected_after,
                lost_after: self.lost_after,
            });
        }
        if let StoreBackend::Etcd(etcd) = &self.store {
            etcd.validate()?;
        }
        Ok(())
    }
}

/// What is wrong with a [`NodeConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `insecure_http` with a listen address other than loopback: tokens would cross the
    /// network in the clear.
    #[error(
        "refusing --insecure-http on {listen}: plain HTTP is allowed only on a loopback address \
         (127.0.0.1, ::1); drop --insecure-http to serve TLS, or listen on loopback"
    )]
    PlainHttpOffLoopback {
        /// The refused listen address.
        listen: SocketAddr,
    },
    /// `data_dir` is the empty path, which would put the store in the working directory.
    #[error("the data directory is empty: give a path")]
    NoDataDir,
    /// The liveness thresholds are out of order: `disconnected_after` must be longer than a
    /// host's heartbeat period, and `lost_after` longer than `disconnected_after`.
    #[error(
        "hosts.disconnected_after_seconds ({}s) must be more than a host's heartbeat period ({}s), and \
         hosts.lost_after_seconds ({}s) more than it",
        disconnected_after.as_secs_f64(),
        enjin_agent::HEARTBEAT_EVERY.as_secs(),
        lost_after.as_secs_f64()
    )]
    Patience {
        /// The configured `disconnected_after`.
        disconnected_after: Duration,
        /// The configured `lost_after`.
        lost_after: Duration,
    },
    /// The `[store]` settings are wrong; says which key and why.
    #[error("{0}")]
    Store(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let config = |insecure_http: bool, listen: &str| NodeConfig {
            insecure_http,
            listen: addr(listen),
            ..NodeConfig::new(Mode::Server, "/tmp/enjin".into())
        };
        assert!(config(true, "127.0.0.1:7480").validate().is_ok());
        assert!(config(true, "[::1]:7480").validate().is_ok());
        assert!(config(false, "0.0.0.0:7480").validate().is_ok(), "TLS anywhere");
        for refused in ["0.0.0.0:7480", "10.0.0.5:7480", "[::]:7480"] {
            let err = config(true, refused).validate().expect_err(refused);
            let msg = err.to_string();
            assert!(msg.contains("--insecure-http") && msg.contains(refused), "{msg}");
        }
    }

    #[test]
    fn etcd_endpoints_are_checked() {
        let config = |endpoints: &[&str], ca_file: Option<&str>| NodeConfig {
            store: StoreBackend::Etcd(EtcdBackend {
                endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
                ca_file: ca_file.map(PathBuf::from),
            }),
            ..NodeConfig::new(Mode::Server, "/tmp/enjin".into())
        };
        for fine in [
            config(&["http://127.0.0.1:2379"], None),
            config(&["http://localhost:2379", "http://[::1]:2379"], None),
            config(&["https://10.0.0.1:2379", "https://etcd.example:2379"], None),
            config(&["https://10.0.0.1:2379"], Some("/etc/etcd/ca.crt")),
        ] {
            assert!(fine.validate().is_ok(), "{:?}", fine.store);
        }
        for (refused, says) in [
            (config(&[], None), "at least one endpoint"),
            (config(&["http://10.0.0.1:2379"], None), "plain HTTP off loopback"),
            (config(&["https://10.0.0.1:2379", "http://127.0.0.1:2379"], None), "not a mix"),
            (config(&["127.0.0.1:2379"], None), "not an http"),
            (config(&["unix:///run/etcd.sock"], None), "not an http"),
            (config(&["https://10.0.0.1"], None), "no port"),
            (config(&["http://127.0.0.1:2379"], Some("/ca.crt")), "only with https"),
        ] {
            let message = refused.validate().expect_err(says).to_string();
            assert!(message.contains(says) && message.contains("[store]"), "{message}");
        }
    }

    #[test]
    fn liveness_thresholds_must_be_in_order() {
        let config = |disconnected: u64, lost: u64| NodeConfig {
            disconnected_after: Duration::from_secs(disconnected),
            lost_after: Duration::from_secs(lost),
            ..NodeConfig::new(Mode::Server, "/tmp/enjin".into())
        };
        assert!(config(10, 60).validate().is_ok());
        assert!(NodeConfig::new(Mode::Up, "/tmp/enjin".into()).validate().is_ok(), "the defaults");
        for (disconnected, lost) in [(60, 10), (10, 10), (1, 60), (0, 0)] {
            let err = config(disconnected, lost).validate().expect_err("out of order");
            assert!(matches!(err, ConfigError::Patience { .. }), "{err}");
            assert!(err.to_string().contains("hosts.lost_after_seconds"), "{err}");
        }
    }

    #[test]
    fn the_defaults_are_valid_and_the_documented_ones() {
        let c = NodeConfig::new(Mode::Up, "/var/lib/enjin".into());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.listen.to_string(), "127.0.0.1:7480");
        assert_eq!(c.bus_listen.to_string(), "127.0.0.1:7481");
        assert_eq!(c.router_listen.to_string(), "127.0.0.1:7482");
        assert_eq!(c.dns_listen.to_string(), "127.0.0.1:7453");
        assert_eq!(c.hosts_cidr, "10.250.0.0/24".parse::<Cidr>().expect("cidr"));
        assert_eq!(c.instance_cidr, "10.252.0.0/16".parse::<Cidr>().expect("cidr"));
    }

    #[test]
    fn an_empty_data_dir_is_refused() {
        let c = NodeConfig::new(Mode::Up, PathBuf::new());
        assert_eq!(c.validate(), Err(ConfigError::NoDataDir));
    }
}
