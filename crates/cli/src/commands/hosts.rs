//! The ring 1 hosts `enjin up` runs on this machine (and, beside them, its edge): each a node in the store, an identity and
//! certificate given at birth, and an `enjin agent --ring 1` supervised (OTP, permanent) by
//! this process — inside its own network namespace on the hosts' bridge as root (`netns`),
//! as a plain process otherwise (`process`, said loudly).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use enjin_agent::{AgentConfig, AgentFile};
use enjin_control::ControlPlane;
use enjin_control::bus::BusAuthority;
use enjin_model::api::{CreateRequest, ListQuery};
use enjin_model::kinds::{Cidr, NetworkInterfaceSpec, NetworkSpec, NetworkStrategy, NodeSpec, Strategy};
use enjin_model::{Object, Ring};
use enjin_supervisor::{
    ChildId, ChildSpec, Intensity, ProcessLauncher, Restart, Supervisor, SupervisorConfig,
};
use tokio::sync::mpsc;
use uuid::Uuid;

/// The hosts' network on this machine, when hosts get network namespaces.
#[derive(Debug, Clone)]
pub struct HostsNetwork {
    pub network: Uuid,
    pub cidr: Cidr,
    pub gateway: IpAddr,
    pub bridge: String,
}

pub const HOSTS_CIDR: &str = "10.250.0.0/24";
/// Ring 2 instances run as uids from here up, a block per host.
const UID_BASE: u32 = 200_000;
const UID_BLOCK: u32 = 10_000;

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
pub async fn hosts_network(cp: &ControlPlane, cidr: Cidr) -> Result<HostsNetwork> {
    let q = ListQuery { ring: Some(1), label: Some("hosts".into()), ..ListQuery::default() };
    let (found, _) = cp.registry().list::<NetworkSpec>(&q).await?;
    let network = match found.into_iter().next() {
        Some(n) => n,
        None => {
            let spec = NetworkSpec { strategy: NetworkStrategy::Local, cidr, compartments: Vec::new() };
            let req = CreateRequest {
                ring: Ring::INFRASTRUCTURE,
                label: Some("hosts".into()),
                labels: Default::default(),
                spec,
            };
            cp.registry().create(req, Utc::now()).await.context("failed to create the hosts network")?
        }
    };
    let cidr = network.spec.cidr;
    let gateway =
        enjin_control::ipam::gateway(&cidr).context("the hosts network has no room for a gateway")?;
    let bridge = enjin_net::names(&network.meta.uuid.to_string()).bridge;
    let (b, g, p) = (bridge.clone(), gateway, cidr.prefix);
    tokio::task::spawn_blocking(move || enjin_net::ensure_bridge(&b, g, p))
        .await
        .context("bridge setup panicked")?
        .with_context(|| format!("failed to set up the hosts' bridge {bridge} (its range is set with --hosts-cidr or [hosts] cidr)"))?;
    Ok(HostsNetwork { network: network.meta.uuid, cidr, gateway, bridge })
}

/// Make sure `count` hosts exist under `machine`, prepare each one's directory (and network
/// namespace), and start supervising their agents.
#[allow(clippy::too_many_arguments, reason = "called once, by enjin up, with what it has built")]
pub async fn start(
    cp: &ControlPlane,
    authority: &Arc<BusAuthority>,
    machine: &Object<NodeSpec>,
    data_dir: &Path,
    hub: SocketAddr,
    net: Option<&HostsNetwork>,
    count: usize,
    also: Vec<ChildSpec>,
) -> Result<Supervisor> {
    let strategy = if net.is_some() { Strategy::Netns } else { Strategy::Process };
    if net.is_none() {
        tracing::warn!("not root: ring 1 hosts run as plain processes, without network namespaces");
    }
    let q = ListQuery { parent: Some(machine.meta.uuid), ..ListQuery::default() };
    let (mut hosts, _) = cp.registry().list::<NodeSpec>(&q).await?;
    // The edge is this machine's ring 1 node too, but no host.
    hosts.retain(|h| h.meta.labels.get(super::edge::ROLE.0).map(String::as_str) != Some(super::edge::ROLE.1));
    for i in 1..=count {
        let label = format!("host-{i}");
        if hosts.iter().any(|h| h.meta.label.as_deref() == Some(label.as_str())) {
            continue;
        }
        let spec =
            NodeSpec { parent: Some(machine.meta.uuid), strategy: Some(strategy), ..NodeSpec::default() };
        let req = CreateRequest {
            ring: Ring::INFRASTRUCTURE,
            label: Some(label.clone()),
            labels: Default::default(),
            spec,
        };
        hosts.push(
            cp.registry()
                .create(req, Utc::now())
                .await
                .with_context(|| format!("failed to create {label}"))?,
        );
    }
    let exe = std::env::current_exe().context("cannot find the enjin binary to run agents")?;
    let root = data_dir.join("hosts");
    std::fs::create_dir_all(&root).with_context(|| format!("failed to create {}", root.display()))?;
    // Instances run as their own uids and must reach their workdirs below here: the
    // directories on the way are traversable (0711) but not listable; everything secret in
    // them is 0600 or in 0700 directories.
    for d in [data_dir, root.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("failed to set the mode of {}", d.display()))?;
    }
    let mut specs = Vec::new();
    let root_user = can_netns();
    for (index, host) in hosts.iter().enumerate() {
        let label = host.meta.label.clone().unwrap_or_else(|| host.meta.uuid.to_string());
        let dir = root.join(&label);
        authority
            .enroll_local(host.meta.uuid, &label, &dir)
            .await
            .with_context(|| format!("failed to enrol {label}"))?;
        // Each host gets its own block of uids for its unix-user children, so no two instances
        // on this machine ever share one.
        let (uid_base, uid_count) = if root_user {
            (Some(UID_BASE + UID_BLOCK * u32::try_from(index).unwrap_or(0)), Some(UID_BLOCK))
        } else {
            (None, None)
        };
        let file = AgentFile {
            ring: 1,
            node: host.meta.uuid,
            hub,
            server_name: "localhost".into(),
            uid_base,
            uid_count,
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
                let ns = netns_host(cp, host.meta.uuid, n)
                    .await
                    .with_context(|| format!("failed to set up {label}'s network"))?;
                let mut c = enjin_net::exec_prefix(&ns);
                c.extend(agent);
                c
            }
            _ => agent,
        };
        let id = ChildId::new(host.meta.uuid.to_string())?;
        specs.push(ring1_child(id, command, "info"));
    }
    std::fs::create_dir_all(root.join("logs"))
        .with_context(|| format!("failed to create {}", root.display()))?;
    let (obs_tx, mut obs_rx) = mpsc::channel(256);
    let supervisor = Supervisor::start(
        SupervisorConfig::new(root.join("supervisor")),
        Arc::new(ProcessLauncher::new(root.join("logs"))),
        obs_tx,
    )
    .await
    .context("failed to start the hosts' supervisor")?;
    specs.extend(also);
    supervisor.handle().set_desired(specs).await.context("failed to start the hosts' agents")?;
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
async fn netns_host(cp: &ControlPlane, host: Uuid, net: &HostsNetwork) -> Result<String> {
    let (interfaces, _) = cp.registry().list::<NetworkInterfaceSpec>(&ListQuery::default()).await?;
    let iface = match interfaces.into_iter().find(|i| i.spec.node == host && i.spec.network == net.network) {
        Some(i) => i,
        None => {
            let spec =
                NetworkInterfaceSpec { network: net.network, node: host, addresses: Vec::new(), mac: None };
            let req =
                CreateRequest { ring: Ring::INFRASTRUCTURE, label: None, labels: Default::default(), spec };
            cp.registry().create(req, Utc::now()).await?
        }
    };
    let address = *iface.spec.addresses.first().context("the host's interface has no address")?;
    let names = enjin_net::names(&host.to_string());
    let (ns, veth, bridge, gw, prefix) =
        (names.netns.clone(), names.veth, net.bridge.clone(), net.gateway, net.cidr.prefix);
    tokio::task::spawn_blocking(move || enjin_net::ensure_host(&ns, &veth, &bridge, address, prefix, gw))
        .await
        .context("namespace setup panicked")??;
    tracing::info!(%host, %address, netns = %names.netns, "host network ready");
    Ok(names.netns)
}
