//! A backend the way instances run since they have networks of their own: a host namespace on
//! a bridge, an instance namespace inside it on a routed veth pair (`enjin_net::instance`), the
//! machine routing the instance's block through the host. The backend's listening socket is
//! made inside the instance's namespace (a thread joins it, binds, and ends); the router stays
//! on the machine, as the edge does, and the host's nftables firewall admits it to the
//! instance's port, as on a real host. The host runs the agent's eBPF fast path
//! (`enjin_net::fastpath`) for that instance; a second instance on the same host is left out of
//! it, to show what the ordinary path through the host's stack costs. Everything is removed on
//! drop.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use enjin_model::api::{FirewallInstance, HostFirewall};
use enjin_model::kinds::Cidr;
use enjin_net::instance::{InstanceNames, ensure_instance, instance_names, prepare_host, remove_instance};

const GATEWAY: &str = "10.196.7.1";
const HOST: &str = "10.196.7.2";
const BLOCK: &str = "10.195.2.0/24";
const INSTANCE: &str = "10.195.2.2";
/// The instance left on the ordinary path.
const PLAIN: &str = "10.195.2.3";
pub const PORT: u16 = 8080;

pub struct InstanceBackend {
    bridge: String,
    host: (String, String),
    instance: InstanceNames,
    plain: InstanceNames,
    route: bool,
    /// The host's fast path, holding the first instance.
    fast: Option<enjin_net::fastpath::FastPath>,
    pub listener: Option<std::net::TcpListener>,
    pub addr: SocketAddr,
    /// The instance on the ordinary path.
    pub plain_listener: Option<std::net::TcpListener>,
    /// A backend in the host's own namespace, at the host's address: how instances ran before
    /// they had namespaces of their own (the comparison's anchor).
    pub host_listener: Option<std::net::TcpListener>,
}

/// Whether this process may make namespaces (root).
pub fn possible() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

/// Run `f` on a thread that has joined the namespace `/run/netns/<ns>` (processes it starts
/// inherit it; the namespace is per thread).
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = enjin_net::instance::netns_path(ns);
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).with_context(|| format!("failed to open {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

impl InstanceBackend {
    pub fn make() -> anyhow::Result<InstanceBackend> {
        let tag = format!("{:04x}", std::process::id() % 0xffff);
        let mut b = InstanceBackend {
            bridge: format!("ejbB{tag}"),
            host: (format!("ejnsB{tag}"), format!("ejvB{tag}")),
            instance: instance_names(&format!("b{tag}bench")),
            plain: instance_names(&format!("p{tag}bench")),
            route: false,
            fast: None,
            listener: None,
            addr: SocketAddr::new(INSTANCE.parse().context("address")?, PORT),
            plain_listener: None,
            host_listener: None,
        };
        let (gw, host): (IpAddr, IpAddr) = (GATEWAY.parse()?, HOST.parse()?);
        enjin_net::ensure_bridge(&b.bridge, gw, 24)?;
        enjin_net::ensure_host(&b.host.0, &b.host.1, &b.bridge, host, 24, gw)?;
        let (names, plain) = (b.instance.clone(), b.plain.clone());
        let address = b.addr.ip();
        let plain_address: IpAddr = PLAIN.parse()?;
        in_ns(&b.host.0, move || {
            prepare_host()?;
            ensure_instance(&names, address)?;
            ensure_instance(&plain, plain_address)?;
            Ok(())
        })?;
        enjin_net::route_replace(None, BLOCK, host)?;
        b.route = true;
        // The host's firewall as the control plane would give it: the edge (the bridge's
        // address) to the instance's port, nothing else; so the row pays for nftables too.
        let firewall = HostFirewall {
            edge: vec![gw],
            dns: Vec::new(),
            protected: vec![Cidr { addr: gw, prefix: 24 }],
            instance_network: Some(BLOCK.parse().map_err(anyhow::Error::msg)?),
            instances: [(address, &b.instance), (plain_address, &b.plain)]
                .into_iter()
                .map(|(address, names)| FirewallInstance {
                    node: uuid::Uuid::new_v4(),
                    account: uuid::Uuid::new_v4(),
                    address,
                    interface: names.veth.clone(),
                    port: Some(PORT),
                    ingress: Vec::new(),
                    egress: Vec::new(),
                })
                .collect(),
        };
        let mut fast_only = firewall.clone();
        fast_only.instances.truncate(1);
        b.fast = in_ns(&b.host.0, move || {
            enjin_net::firewall::apply(&firewall)?;
            let mut fast = enjin_net::fastpath::FastPath::new()?
                .context("the bench host has no uplink veth for the fast path")?;
            fast.sync(&fast_only)?;
            Ok(Some(fast))
        })?;
        let addr = b.addr;
        let listener = in_ns(&b.instance.netns, move || {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("failed to bind {addr} in the instance"))
        })?;
        listener.set_nonblocking(true)?;
        b.listener = Some(listener);
        let plain_addr = SocketAddr::new(plain_address, PORT);
        let listener = in_ns(&b.plain.netns, move || {
            std::net::TcpListener::bind(plain_addr)
                .with_context(|| format!("failed to bind {plain_addr} in the second instance"))
        })?;
        listener.set_nonblocking(true)?;
        b.plain_listener = Some(listener);
        let at_host = SocketAddr::new(host, PORT);
        let listener = in_ns(&b.host.0, move || {
            std::net::TcpListener::bind(at_host)
                .with_context(|| format!("failed to bind {at_host} in the host"))
        })?;
        listener.set_nonblocking(true)?;
        b.host_listener = Some(listener);
        Ok(b)
    }
}

impl Drop for InstanceBackend {
    fn drop(&mut self) {
        self.listener = None;
        self.plain_listener = None;
        self.host_listener = None;
        self.fast = None;
        if self.route {
            let _ = std::process::Command::new("ip").args(["route", "del", BLOCK]).status();
        }
        let _ = remove_instance(&self.instance);
        let _ = remove_instance(&self.plain);
        let _ = enjin_net::remove_host(&self.host.0, &self.host.1);
        let _ = enjin_net::remove_bridge(&self.bridge);
    }
}
