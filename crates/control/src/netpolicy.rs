//! A host's desired set as the control plane publishes it: its children, each instance with a
//! network of its own given its address and names, and the host's firewall computed from the
//! model (see `platform/network.rs` for the instance network and `docs/security.md` for the
//! defaults the firewall keeps).

use std::net::{IpAddr, SocketAddr};

use enjin_model::Object;
use enjin_model::api::{
    ChildNetwork, DesiredChild, DesiredChildren, FirewallInstance, HostFirewall, ListQuery,
};
use enjin_model::kinds::{
    AccessRuleSetSpec, AccessRuleSpec, Cidr, DesiredState, NetworkInterfaceSpec, NodeSpec,
};
use uuid::Uuid;

use crate::firewall::FirewallBase;
use crate::platform::network;
use crate::registry::{Registry, RegistryError};

/// What one read of the store says about the instance network.
#[derive(Debug)]
pub struct NetworkView {
    /// What every host's firewall shares; empty (default) when there is no instance network yet.
    pub base: FirewallBase,
    /// The instance network's uuid; `None` until the platform has made it.
    pub instances_network: Option<Uuid>,
    /// Every network interface in the store, on any network and ring.
    pub interfaces: Vec<Object<NetworkInterfaceSpec>>,
}

impl NetworkView {
    /// Read the instance network, the hosts network and every interface from the registry.
    /// Without both networks the view is empty but not an error: nothing has an address yet.
    pub async fn read(registry: &Registry) -> Result<NetworkView, RegistryError> {
        let (interfaces, _) = registry.list::<NetworkInterfaceSpec>(&ListQuery::default()).await?;
        let Some((instances, hosts)) = network::networks(registry).await? else {
            return Ok(NetworkView { base: FirewallBase::default(), instances_network: None, interfaces });
        };
        // The router reaches instances from the machine's address on the hosts network (the
        // bridge's, the hosts' gateway); everything of rings 0 and 1 is on that network.
        let gateway = crate::ipam::gateway(&hosts.spec.cidr);
        let edge = gateway.into_iter().collect();
        // The edge's DNS also listens on that address, port 53, for instances.
        let dns = gateway.map(|ip| SocketAddr::new(ip, DNS_PORT)).into_iter().collect();
        let base = FirewallBase {
            network: Some(instances.meta.uuid),
            edge,
            dns,
            protected: vec![hosts.spec.cidr, loopback()],
            instance_network: Some(instances.spec.cidr),
        };
        Ok(NetworkView { base, instances_network: Some(instances.meta.uuid), interfaces })
    }

    /// The address of an instance with a network of its own, if it has been given one.
    pub fn address(&self, node: Uuid) -> Option<IpAddr> {
        network::instance_address(node, self.instances_network?, &self.interfaces)
    }
}

fn loopback() -> Cidr {
    Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 }
}

/// The port instances query DNS on (resolv.conf has no port).
pub const DNS_PORT: u16 = 53;

/// The names an instance's network goes by on its host, and the resolvers it is given.
pub fn child_network(node: Uuid, address: IpAddr, dns: &[SocketAddr]) -> ChildNetwork {
    let names = enjin_net::instance::instance_names(&node.to_string());
    let nameservers = dns.iter().filter(|d| d.port() == DNS_PORT).map(SocketAddr::ip).collect();
    ChildNetwork { address, interface: names.veth, netns: names.netns, nameservers }
}

/// The desired set of `host`: its running children, an instance with a network of its own only
/// once it has its address, and, where the cloud has an instance network, the host's firewall.
pub async fn desired_children(registry: &Registry, host: Uuid) -> Result<DesiredChildren, RegistryError> {
    let q = ListQuery { parent: Some(host), ..ListQuery::default() };
    let (nodes, revision) = registry.list::<NodeSpec>(&q).await?;
    let view = NetworkView::read(registry).await?;
    let mut children = Vec::new();
    let mut instances = Vec::new();
    for n in nodes.iter().filter(|n| n.spec.desired_state == DesiredState::Running) {
        let (Some(strategy), Some(run)) = (n.spec.strategy, n.spec.run.clone()) else { continue };
        let network = if run.own_network {
            // Never started without its network: it would share the host's.
            let Some(address) = view.address(n.meta.uuid) else { continue };
            let net = child_network(n.meta.uuid, address, &view.base.dns);
            instances.push(FirewallInstance {
                node: n.meta.uuid,
                account: n.meta.account,
                address,
                interface: net.interface.clone(),
                port: run.port,
                ingress: Vec::new(),
                egress: Vec::new(),
            });
            Some(net)
        } else {
            None
        };
        children.push(DesiredChild {
            uuid: n.meta.uuid,
            label: n.meta.label.clone().unwrap_or_default(),
            strategy,
            run,
            resources: n.spec.resources.clone(),
            network,
        });
    }
    let firewall = match view.instances_network {
        None => None,
        Some(network) => {
            // Rules resolve against every instance of the cloud (a peer may be on another host).
            let endpoints = crate::firewall::instance_endpoints(registry).await?;
            let (rules, _) = registry.list::<AccessRuleSpec>(&ListQuery::default()).await?;
            let (sets, _) = registry.list::<AccessRuleSetSpec>(&ListQuery::default()).await?;
            let base = FirewallBase { network: Some(network), ..view.base.clone() };
            let mut fw: HostFirewall = crate::firewall::host_firewall(host, base, &endpoints, &rules, &sets);
            // Instances no app owns (made by hand) get the defaults: the edge to their port.
            for i in instances {
                if !fw.instances.iter().any(|f| f.node == i.node) {
                    fw.instances.push(i);
                }
            }
            Some(fw)
        }
    };
    Ok(DesiredChildren { node: host, revision, children, firewall })
}
