//! A host's desired set as the control plane publishes it: its children, each instance with a
//! network of its own given its address and names, and the host's firewall computed from the
//! model (see `platform/network.rs` for the instance network and `docs/security.md` for the
//! defaults the firewall keeps).

use std::net::IpAddr;

use enjin_model::Object;
use enjin_model::api::{
    ChildNetwork, DesiredChild, DesiredChildren, FirewallInstance, HostFirewall, ListQuery,
};
use enjin_model::kinds::{Cidr, DesiredState, NetworkInterfaceSpec, NodeSpec};
use uuid::Uuid;

use crate::platform::network;
use crate::registry::{Registry, RegistryError};

/// The base of every host's firewall: who the edge is, what instances may never reach.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirewallBase {
    pub edge: Vec<IpAddr>,
    pub protected: Vec<Cidr>,
    pub instance_network: Option<Cidr>,
}

/// What one read of the store says about the instance network.
#[derive(Debug)]
pub struct NetworkView {
    pub base: FirewallBase,
    pub instances_network: Option<Uuid>,
    pub interfaces: Vec<Object<NetworkInterfaceSpec>>,
}

impl NetworkView {
    pub async fn read(registry: &Registry) -> Result<NetworkView, RegistryError> {
        let (interfaces, _) = registry.list::<NetworkInterfaceSpec>(&ListQuery::default()).await?;
        let Some((instances, hosts)) = network::networks(registry).await? else {
            return Ok(NetworkView { base: FirewallBase::default(), instances_network: None, interfaces });
        };
        // The router reaches instances from the machine's address on the hosts network (the
        // bridge's, the hosts' gateway); everything of rings 0 and 1 is on that network.
        let edge = crate::ipam::gateway(&hosts.spec.cidr).into_iter().collect();
        let base = FirewallBase {
            edge,
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

/// The names an instance's network goes by on its host.
pub fn child_network(node: Uuid, address: IpAddr) -> ChildNetwork {
    let names = enjin_net::instance::instance_names(&node.to_string());
    ChildNetwork { address, interface: names.veth, netns: names.netns }
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
            let net = child_network(n.meta.uuid, address);
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
    let firewall = view.instances_network.is_some().then(|| HostFirewall {
        edge: view.base.edge.clone(),
        dns: Vec::new(),
        protected: view.base.protected.clone(),
        instance_network: view.base.instance_network,
        instances,
    });
    Ok(DesiredChildren { node: host, revision, children, firewall })
}
