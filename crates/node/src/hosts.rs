//! The ring 1 hosts `enjin up` runs on this machine (and, beside them, its edge): each a node in
//! the store, an identity and certificate given at birth, and an `enjin agent --ring 1`
//! supervised (OTP, permanent) by this process — inside its own network namespace on the hosts'
//! bridge as root (`netns`), as a plain process otherwise (`process`, said loudly).
//!
//! Each host says whether it can sandbox its instances in its `enjin.dev/sandbox` label
//! (`unix-user` as root, `none` otherwise), set when it is created and corrected at every
//! start, so that the platform records instances with the strategy they really run by.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_agent::{AgentConfig, AgentFile};
use enjin_control::bus::BusAuthority;
use enjin_control::platform::{SANDBOX_LABEL, Sandbox};
use enjin_control::{ControlPlane, RegistryError};
use enjin_model::api::{CreateRequest, ListQuery, UpdateRequest};
use enjin_model::kinds::{Cidr, NetworkInterfaceSpec, NetworkSpec, NetworkStrategy, NodeSpec, Strategy};
use enjin_model::{Object, Ring};
use enjin_net::NetError;
use enjin_net::cloud::{CloudRecord, HostRecord, RecordError};
use enjin_supervisor::{
    ChildId, ChildSpec, Intensity, ProcessLauncher, Restart, Supervisor, SupervisorConfig,
};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Why the hosts (or the edge beside them) could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Reading or writing a node, network or interface object failed.
    #[error("{what}")]
    Registry {
        /// The step, as a whole message (`"failed to create host-2"`).
        what: String,
        /// The registry's reason.
        #[source]
        source: RegistryError,
    },
    /// The hosts network's range is too small to hold a gateway address (a /31 or /32).
    #[error("the hosts network has no room for a gateway")]
    NoGateway,
    /// The cloud's record could not be saved before the bridge or a host namespace was made;
    /// the resource is not made, so nothing goes unrecorded.
    #[error("{what}")]
    Record {
        /// The step, as a whole message.
        what: &'static str,
        /// The record store's reason.
        #[source]
        source: RecordError,
    },
    /// The hosts' bridge could not be created or given its gateway address.
    #[error(
        "failed to set up the hosts' bridge {bridge} (its range is set with --hosts-cidr or [hosts] cidr){owner}"
    )]
    Bridge {
        /// The bridge's name, derived from the hosts network's uuid.
        bridge: String,
        /// Whose the bridge in the way is, when a cloud on this machine recorded it: a clause
        /// starting with `; `, or empty.
        owner: String,
        /// Why `ip` failed; [`NetError::AddressInUse`] when another interface holds the gateway.
        #[source]
        source: NetError,
    },
    /// The instance network, about to be made, would share addresses with the hosts network.
    #[error(
        "the instance network {instances} overlaps the hosts network {hosts}: give [hosts] instance_cidr another range"
    )]
    Overlap {
        /// The instance network's range asked for.
        instances: Cidr,
        /// The hosts network's range.
        hosts: Cidr,
    },
    /// The instance network asked for cannot hold even one host's block.
    #[error("the instance network {0} is narrower than one host's block (a /24)")]
    TooNarrow(Cidr),
    /// A route or a host's namespace could not be set up.
    #[error("{what}")]
    Net {
        /// The step, as a whole message naming the block or namespace.
        what: String,
        /// Why `ip` failed.
        #[source]
        source: NetError,
    },
    /// One host's interface or namespace could not be set up.
    #[error("failed to set up {label}'s network")]
    HostNetwork {
        /// The host's label (`host-1`), or its uuid when it has none.
        label: String,
        /// What failed: its interface, record or namespace.
        #[source]
        source: Box<HostsError>,
    },
    /// IPAM left a host's interface on the hosts network without an address (the network is
    /// full).
    #[error("the host's interface has no address")]
    NoAddress,
    /// The path of the running binary, which the agents and the edge are run from, is unknown.
    #[error("{what}")]
    Exe {
        /// The step, as a whole message.
        what: &'static str,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A directory under `<data-dir>/hosts` could not be created or made private.
    #[error("failed to {action} {}", path.display())]
    Io {
        /// What was being done, completing "failed to …".
        action: &'static str,
        /// The directory acted on.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A host or the edge could not be given its identity and certificate in its directory.
    #[error("failed to enrol {label}")]
    Enrol {
        /// The host's label, or `the edge`.
        label: String,
        /// The key service's reason.
        #[source]
        source: enjin_control::bus::BusError,
    },
    /// A node's NATS user could not be minted.
    #[error("failed to mint a NATS user: {0}")]
    Nats(String),
    /// A host's or the edge's `agent.json` could not be written.
    #[error(transparent)]
    Agent(#[from] enjin_agent::ConfigError),
    /// The edge's listen file could not be written.
    #[error(transparent)]
    Edge(#[from] enjin_edge::EdgeError),
    /// A node uuid was refused as a supervisor child id (should not happen).
    #[error(transparent)]
    ChildId(#[from] enjin_supervisor::ChildIdError),
    /// A blocking task (named) panicked; a bug.
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// The supervisor of the hosts' agents could not start: its directory
    /// `<data-dir>/hosts/supervisor` could not be made, or another supervisor (another
    /// `enjin up` on this data directory) holds it.
    #[error("failed to start the hosts' supervisor")]
    Supervisor(#[source] enjin_supervisor::StartError),
    /// The supervisor refused the set of agents (and the edge) to run.
    #[error("failed to start the hosts' agents")]
    Desired(#[source] enjin_supervisor::EnsureError),
    /// A host's sandbox label could not be written in five tries: each time, someone else had
    /// updated the node first. Holds the host's label.
    #[error("failed to record the sandbox of host {0}: it kept changing")]
    KeptChanging(String),
}

pub(crate) fn registry(what: impl Into<String>) -> impl FnOnce(RegistryError) -> HostsError {
    let what = what.into();
    move |source| HostsError::Registry { what, source }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostsError {
    let path = path.to_path_buf();
    move |source| HostsError::Io { action, path, source }
}

fn net_error(what: String) -> impl FnOnce(NetError) -> HostsError {
    move |source| HostsError::Net { what, source }
}

/// The hosts' network on this machine, when hosts get network namespaces.
#[derive(Debug, Clone)]
pub struct HostsNetwork {
    /// The ring 1 network object labelled `hosts`.
    pub network: Uuid,
    /// Its range, as stored: the one given when it was first made, whatever is configured now.
    pub cidr: Cidr,
    /// This machine's address on the bridge, which hosts route through and reach the hub at.
    pub gateway: IpAddr,
    /// The bridge's interface name on this machine.
    pub bridge: String,
    /// The instance network: its range, each host owning a block of it.
    pub instances: Cidr,
    /// What this cloud has made outside its data directory (`cloud.rs`).
    pub record: Arc<std::sync::Mutex<CloudRecord>>,
}

/// Whether this process may make network namespaces (root, with iproute2).
pub fn can_netns() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    root && std::process::Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
}

/// The ring 1 network the hosts live on, and its bridge, up.
pub async fn hosts_network(
    cp: &ControlPlane,
    cidr: Cidr,
    instance_cidr: Cidr,
    mut record: CloudRecord,
) -> Result<HostsNetwork, HostsError> {
    let q =
        ListQuery { ring: Some(Ring::INFRASTRUCTURE), label: Some("hosts".into()), ..ListQuery::default() };
    let (found, _) =
        cp.registry().list::<NetworkSpec>(&q).await.map_err(registry("failed to find the hosts network"))?;
    let network = match found.into_iter().next() {
        Some(n) => n,
        None => {
            let spec = NetworkSpec { strategy: NetworkStrategy::Local, cidr, compartments: Vec::new() };
            let req = CreateRequest {
                account: None,
                ring: Ring::INFRASTRUCTURE,
                label: Some("hosts".into()),
                labels: Default::default(),
                spec,
            };
            cp.registry()
                .create(req, Utc::now())
                .await
                .map_err(registry("failed to create the hosts network"))?
        }
    };
    let cidr = network.spec.cidr;
    let gateway = enjin_control::ipam::gateway(&cidr).ok_or(HostsError::NoGateway)?;
    let bridge = enjin_net::names(&network.meta.uuid.to_string()).bridge;
    record.bridge = Some(bridge.clone());
    record
        .save()
        .map_err(|source| HostsError::Record { what: "failed to record the hosts' bridge", source })?;
    let (b, g, p, id) = (bridge.clone(), gateway, cidr.prefix, record.id.clone());
    tokio::task::spawn_blocking(move || {
        enjin_net::ensure_bridge(&b, g, p)?;
        enjin_net::cloud::set_alias(None, &b, &id)
    })
    .await
    .map_err(|_| HostsError::Panicked("bridge setup"))?
    .map_err(|source| {
        // Say whose the other bridge is, when a cloud on this machine recorded it.
        let owner = match &source {
            NetError::AddressInUse { interface, .. } => enjin_net::cloud::records()
                .into_iter()
                .find(|r| r.bridge.as_deref() == Some(interface.as_str()))
                .map(|r| {
                    format!(
                        "; it is the bridge of the cloud of {} (`enjin down --data-dir {}` removes it)",
                        r.data_dir.display(),
                        r.data_dir.display()
                    )
                }),
            _ => None,
        };
        HostsError::Bridge { bridge: bridge.clone(), owner: owner.unwrap_or_default(), source }
    })?;
    let instances = instance_network(cp, &cidr, instance_cidr).await?;
    enjin_control::platform::network::ensure_default_rule_sets(cp.registry(), None)
        .await
        .map_err(registry("failed to give the accounts their default rule sets"))?;
    let record = Arc::new(std::sync::Mutex::new(record));
    Ok(HostsNetwork { network: network.meta.uuid, cidr, gateway, bridge, instances, record })
}

/// The ring 2 network instances get their addresses from (made once; its range then stays).
async fn instance_network(cp: &ControlPlane, hosts: &Cidr, cidr: Cidr) -> Result<Cidr, HostsError> {
    let label = enjin_control::platform::network::INSTANCES;
    let q = ListQuery { ring: Some(Ring::PLATFORM), label: Some(label.into()), ..ListQuery::default() };
    let (found, _) = cp
        .registry()
        .list::<NetworkSpec>(&q)
        .await
        .map_err(registry("failed to find the instance network"))?;
    if let Some(n) = found.into_iter().next() {
        return Ok(n.spec.cidr);
    }
    if cidr.contains(hosts.addr) || hosts.contains(cidr.addr) {
        return Err(HostsError::Overlap { instances: cidr, hosts: *hosts });
    }
    if cidr.prefix > enjin_control::platform::network::BLOCK_PREFIX {
        return Err(HostsError::TooNarrow(cidr));
    }
    let spec = NetworkSpec { strategy: NetworkStrategy::Local, cidr, compartments: Vec::new() };
    let req = CreateRequest {
        account: None,
        ring: Ring::PLATFORM,
        label: Some(label.into()),
        labels: Default::default(),
        spec,
    };
    cp.registry().create(req, Utc::now()).await.map_err(registry("failed to create the instance network"))?;
    Ok(cidr)
}

/// Routes to every host's block of the instance network: on this machine (the router reaches
/// instances from here) and in every other host's namespace, through the host that owns it.
fn route_blocks(net: &HostsNetwork, hosts: &[(String, IpAddr)]) -> Result<(), HostsError> {
    let blocks: Vec<(String, IpAddr, Cidr)> = hosts
        .iter()
        .filter_map(|(ns, addr)| {
            let block = enjin_control::platform::network::host_block(&net.instances, &net.cidr, *addr)?;
            Some((ns.clone(), *addr, block))
        })
        .collect();
    for (ns, via, block) in &blocks {
        enjin_net::route_replace(None, &block.to_string(), *via)
            .map_err(net_error(format!("failed to route {block} to its host")))?;
        for (other, _, _) in blocks.iter().filter(|(o, _, _)| o != ns) {
            enjin_net::route_replace(Some(other), &block.to_string(), *via)
                .map_err(net_error(format!("failed to route {block} from {other}")))?;
        }
    }
    Ok(())
}

/// How often the routes to joined hosts' blocks are brought in line with the store.
const JOINED_ROUTES_EVERY: Duration = Duration::from_secs(1);

/// Keep routes to the blocks of the hosts that joined from other machines (strategy
/// `joined`), through their addresses on the hosts network: on this machine, where the router
/// reaches instances from, and in each host namespace `local` names. A joined host gets its
/// route once its interface has an address; a deleted one loses it. Until the bus authority stops.
async fn route_joined(registry: enjin_control::Registry, net: HostsNetwork, local: Vec<(String, IpAddr)>) {
    let mut routed: std::collections::BTreeMap<String, IpAddr> = std::collections::BTreeMap::new();
    let mut tick = tokio::time::interval(JOINED_ROUTES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wanted = match joined_blocks(&registry, &net).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the joined hosts; their routes stay as they are");
                continue;
            }
        };
        if wanted == routed {
            continue;
        }
        let (before, after, namespaces) = (routed.clone(), wanted.clone(), local.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let spaces = std::iter::once(None).chain(namespaces.iter().map(|(ns, _)| Some(ns.as_str())));
            for ns in spaces {
                for (block, via) in &after {
                    if before.get(block) != Some(via) {
                        enjin_net::route_replace(ns, block, *via)?;
                    }
                }
                for block in before.keys().filter(|b| !after.contains_key(*b)) {
                    enjin_net::route_delete(ns, block)?;
                }
            }
            Ok::<(), NetError>(())
        })
        .await;
        match applied {
            Ok(Ok(())) => {
                tracing::info!(routes = ?wanted, "routes to joined hosts' instances");
                routed = wanted;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "failed to route to a joined host's instances"),
            Err(_) => tracing::error!("routing to joined hosts panicked"),
        }
    }
}

/// Each joined host's block of the instance network and its address, by block.
async fn joined_blocks(
    registry: &enjin_control::Registry,
    net: &HostsNetwork,
) -> Result<std::collections::BTreeMap<String, IpAddr>, RegistryError> {
    let (nodes, _) = registry
        .list::<NodeSpec>(&ListQuery { ring: Some(Ring::INFRASTRUCTURE), ..ListQuery::default() })
        .await?;
    let joined: std::collections::HashSet<Uuid> =
        nodes.iter().filter(|n| n.spec.strategy == Some(Strategy::Joined)).map(|n| n.meta.uuid).collect();
    let (interfaces, _) = registry.list::<NetworkInterfaceSpec>(&ListQuery::default()).await?;
    Ok(interfaces
        .iter()
        .filter(|i| i.spec.network == net.network && joined.contains(&i.spec.node))
        .filter_map(|i| {
            let addr = *i.spec.addresses.first()?;
            let block = enjin_control::platform::network::host_block(&net.instances, &net.cidr, addr)?;
            Some((block.to_string(), addr))
        })
        .collect())
}

/// What [`start`] needs besides the control plane: where the hosts connect, their network and
/// how many there are.
#[derive(Debug)]
pub struct HostsPlan<'a> {
    /// This machine's ring 0 node, the hosts' parent.
    pub machine: &'a Object<NodeSpec>,
    /// The data directory; hosts get `<data-dir>/hosts/<label>`.
    pub data_dir: &'a Path,
    /// The ring 1 hub the agents connect to.
    pub hub: SocketAddr,
    /// The hosts network when running as root; `None` runs the agents as plain processes.
    pub net: Option<&'a HostsNetwork>,
    /// How many hosts (`host-1` … `host-<count>`) must exist; hosts already in the store beyond
    /// that are kept and run too, never deleted.
    pub count: usize,
    /// Other ring 1 processes of this machine to supervise beside the agents (the edge).
    pub also: Vec<ChildSpec>,
    /// The ring's bus is NATS: where hosts reach it, and the account their users are minted in.
    pub nats: Option<&'a NatsPlan>,
}

/// The ring 1 bus on NATS: the URL each kind of node reaches the server at, and the ring's
/// account, which mints each node's user.
#[derive(Debug)]
pub struct NatsPlan {
    /// Where processes of this machine's own namespace reach it (the control plane, the edge).
    pub local_url: String,
    /// Where hosts in their namespaces reach it (through the bridge's gateway).
    pub hosts_url: String,
    /// The ring's account.
    pub account: enjin_bus::nats::auth::NatsAccount,
}

/// How long a node's NATS user is valid.
pub use enjin_bus::nats::auth::USER_VALIDITY as NATS_USER_VALIDITY;

/// Mint `member`'s NATS user in `nats`'s account into `<dir>/nats.creds` (0600).
pub fn write_nats_user(
    nats: &NatsPlan,
    member: &enjin_bus::acl::Member,
    dir: &Path,
) -> Result<(), HostsError> {
    let creds =
        nats.account.mint_user(member, NATS_USER_VALIDITY).map_err(|e| HostsError::Nats(e.to_string()))?;
    creds.write_creds_file(&dir.join("nats.creds")).map_err(io("write", &dir.join("nats.creds")))
}

/// Make sure `count` hosts exist under `machine`, prepare each one's directory (and network
/// namespace), and start supervising their agents.
pub async fn start(
    cp: &ControlPlane,
    authority: &Arc<BusAuthority>,
    plan: HostsPlan<'_>,
) -> Result<Supervisor, HostsError> {
    let HostsPlan { machine, data_dir, hub, net, count, also, nats } = plan;
    let strategy = if net.is_some() { Strategy::Netns } else { Strategy::Process };
    if net.is_none() {
        tracing::warn!("not root: ring 1 hosts run as plain processes, without network namespaces");
    }
    // Root runs instances in the sandbox; without root they would be plain processes of this
    // user, and the hosts say so.
    let root_user = can_netns();
    let sandbox = Sandbox::from_capability(root_user);
    if sandbox == Sandbox::None {
        tracing::warn!(
            "not root: ring 1 hosts cannot sandbox instances; the system account's apps run as plain \
             processes of this user, and deploys of other accounts' apps are refused"
        );
    }
    let q = ListQuery { parent: Some(machine.meta.uuid), ..ListQuery::default() };
    let (mut hosts, _) =
        cp.registry().list::<NodeSpec>(&q).await.map_err(registry("failed to list this machine's hosts"))?;
    // The edge is this machine's ring 1 node too, but no host; joined hosts run their own
    // agents on their own machines (this machine only routes to them).
    hosts.retain(|h| h.meta.labels.get(enjin_edge::ROLE.0).map(String::as_str) != Some(enjin_edge::ROLE.1));
    hosts.retain(|h| h.spec.strategy != Some(Strategy::Joined));
    for i in 1..=count {
        let label = format!("host-{i}");
        if hosts.iter().any(|h| h.meta.label.as_deref() == Some(label.as_str())) {
            continue;
        }
        let spec =
            NodeSpec { parent: Some(machine.meta.uuid), strategy: Some(strategy), ..NodeSpec::default() };
        let req = CreateRequest {
            account: None,
            ring: Ring::INFRASTRUCTURE,
            label: Some(label.clone()),
            labels: [(SANDBOX_LABEL.to_string(), sandbox.label_value().to_string())].into(),
            spec,
        };
        hosts.push(
            cp.registry()
                .create(req, Utc::now())
                .await
                .map_err(registry(format!("failed to create {label}")))?,
        );
    }
    let exe = std::env::current_exe()
        .map_err(|source| HostsError::Exe { what: "cannot find the enjin binary to run agents", source })?;
    let root = data_dir.join("hosts");
    std::fs::create_dir_all(&root).map_err(io("create", &root))?;
    // Root's alone: instances see their own files through their own mounts, never through
    // a path below here.
    for d in [data_dir, root.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", d))?;
    }
    for host in &mut hosts {
        if host.meta.labels.get(SANDBOX_LABEL).map(String::as_str) != Some(sandbox.label_value()) {
            *host = label_sandbox(cp, host, sandbox).await?;
        }
    }
    let mut specs = Vec::new();
    let mut routed = Vec::new();
    for host in &hosts {
        let label = host.meta.label.clone().unwrap_or_else(|| host.meta.uuid.to_string());
        let dir = root.join(&label);
        authority
            .enroll_local(host.meta.uuid, &label, &dir)
            .await
            .map_err(|source| HostsError::Enrol { label: label.clone(), source })?;
        // Sandboxed children run as the uids the control plane reserved for them.
        if let Some(n) = nats {
            let member =
                enjin_bus::acl::Member::node(enjin_bus::acl::Role::Host, &host.meta.uuid.to_string())
                    .map_err(|e| HostsError::Nats(e.to_string()))?;
            write_nats_user(n, &member, &dir)?;
        }
        let file = AgentFile {
            ring: 1,
            node: host.meta.uuid,
            hub,
            server_name: "localhost".into(),
            sandbox: root_user,
            rotate_key_after_seconds: None,
            nats: nats.map(|n| if net.is_some() { n.hosts_url.clone() } else { n.local_url.clone() }),
        };
        AgentConfig::write(&dir, &file)?;
        let agent = vec![
            exe.display().to_string(),
            "agent".to_string(),
            "--ring".to_string(),
            "1".to_string(),
            "--dir".to_string(),
            dir.display().to_string(),
        ];
        let command = match (net, host.spec.strategy) {
            (Some(n), Some(Strategy::Netns)) => {
                let (ns, address) = netns_host(cp, host.meta.uuid, n)
                    .await
                    .map_err(|e| HostsError::HostNetwork { label: label.clone(), source: Box::new(e) })?;
                let mut c = enjin_net::exec_prefix(&ns);
                routed.push((ns, address));
                c.extend(agent);
                c
            }
            _ => agent,
        };
        let id = ChildId::new(host.meta.uuid.to_string())?;
        specs.push(ring1_child(id, command, "info"));
    }
    if let Some(n) = net {
        let (net, local) = (n.clone(), routed.clone());
        tokio::task::spawn_blocking(move || route_blocks(&net, &local))
            .await
            .map_err(|_| HostsError::Panicked("routing"))??;
        authority.until_stopped(route_joined(cp.registry().clone(), n.clone(), routed));
    }
    std::fs::create_dir_all(root.join("logs")).map_err(io("create", &root))?;
    let (obs_tx, mut obs_rx) = mpsc::channel(256);
    let supervisor = Supervisor::start(
        SupervisorConfig::new(root.join("supervisor")),
        Arc::new(ProcessLauncher::new(root.join("logs"))),
        obs_tx,
    )
    .await
    .map_err(HostsError::Supervisor)?;
    specs.extend(also);
    supervisor.handle().set_desired(specs).await.map_err(HostsError::Desired)?;
    let authority = authority.clone();
    tokio::spawn(async move {
        while let Some(o) = obs_rx.recv().await {
            let Some(report) = enjin_agent::report_of(&o) else { continue };
            let node = report.node;
            if let Err(e) = authority.store_observation(report, Ring::INFRASTRUCTURE).await {
                tracing::warn!(%node, error = %e, "host observation not stored");
            }
        }
    });
    Ok(supervisor)
}

/// Record on `host` whether it can sandbox its instances (its [`SANDBOX_LABEL`]), as this start
/// of `enjin up` runs it: a host made as root and now run without root must not claim a sandbox.
async fn label_sandbox(
    cp: &ControlPlane,
    host: &Object<NodeSpec>,
    sandbox: Sandbox,
) -> Result<Object<NodeSpec>, HostsError> {
    let label = host.meta.label.clone().unwrap_or_else(|| host.meta.uuid.to_string());
    let mut current = host.clone();
    for _ in 0..5 {
        let mut labels = current.meta.labels.clone();
        labels.insert(SANDBOX_LABEL.to_string(), sandbox.label_value().to_string());
        let req = UpdateRequest {
            revision: current.meta.revision,
            label: current.meta.label.clone(),
            labels,
            spec: current.spec.clone(),
        };
        match cp.registry().update(current.meta.uuid, req, Utc::now()).await {
            Ok(updated) => {
                tracing::info!(host = %label, sandbox = sandbox.label_value(), "host's sandbox recorded");
                return Ok(updated);
            }
            // Changed meanwhile (its agent's observations do not touch it, but an operator may).
            Err(RegistryError::Conflict { .. }) => {
                current = cp
                    .registry()
                    .get::<NodeSpec>(current.meta.uuid)
                    .await
                    .map_err(registry(format!("failed to read host {label}")))?;
            }
            Err(e) => return Err(registry(format!("failed to record the sandbox of host {label}"))(e)),
        }
    }
    Err(HostsError::KeptChanging(label))
}

/// How this machine runs one of its ring 1 nodes' processes (an agent, the edge): permanent,
/// at most 10 restarts a minute, logging at `log` (an `ENJIN_LOG` filter).
pub fn ring1_child(id: ChildId, command: Vec<String>, log: &str) -> ChildSpec {
    let mut spec = ChildSpec::new(id, command);
    spec.env.insert("ENJIN_LOG".into(), log.into());
    spec.inherit_env = true;
    spec.restart.restart = Restart::Permanent;
    spec.restart.intensity = Intensity { max_restarts: 10, period: Duration::from_secs(60) };
    spec
}

/// The host's interface on the hosts network (its address from IPAM) and its namespace.
async fn netns_host(
    cp: &ControlPlane,
    host: Uuid,
    net: &HostsNetwork,
) -> Result<(String, IpAddr), HostsError> {
    let (interfaces, _) = cp
        .registry()
        .list::<NetworkInterfaceSpec>(&ListQuery::default())
        .await
        .map_err(registry("failed to list the network interfaces"))?;
    let iface = match interfaces.into_iter().find(|i| i.spec.node == host && i.spec.network == net.network) {
        Some(i) => i,
        None => {
            let spec =
                NetworkInterfaceSpec { network: net.network, node: host, addresses: Vec::new(), mac: None };
            let req = CreateRequest {
                account: None,
                ring: Ring::INFRASTRUCTURE,
                label: None,
                labels: Default::default(),
                spec,
            };
            cp.registry()
                .create(req, Utc::now())
                .await
                .map_err(registry("failed to create the host's network interface"))?
        }
    };
    let address = *iface.spec.addresses.first().ok_or(HostsError::NoAddress)?;
    let names = enjin_net::names(&host.to_string());
    let (ns, veth, bridge, gw, prefix) =
        (names.netns.clone(), names.veth, net.bridge.clone(), net.gateway, net.cidr.prefix);
    let id = {
        let mut record = net.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        record.add_host(HostRecord { node: host.to_string(), netns: ns.clone(), veth: veth.clone() });
        record
            .save()
            .map_err(|source| HostsError::Record { what: "failed to record the host's namespace", source })?;
        record.id.clone()
    };
    tokio::task::spawn_blocking(move || {
        enjin_net::ensure_host(&ns, &veth, &bridge, address, prefix, gw)?;
        enjin_net::cloud::set_alias(None, &veth, &id)
    })
    .await
    .map_err(|_| HostsError::Panicked("namespace setup"))?
    .map_err(net_error(format!("failed to set up namespace {}", names.netns)))?;
    tracing::info!(%host, %address, netns = %names.netns, "host network ready");
    Ok((names.netns, address))
}
