//! The instance network: one ring 2 network of the system account (label [`INSTANCES`], by
//! default `10.252.0.0/16`) from which every instance on a host that isolates instances gets an
//! address of its own, as every Kubernetes pod gets one from the cluster's pod network.
//!
//! Each host owns a block of it (a /24, like a Kubernetes node's pod CIDR), derived from the
//! host's address on the hosts network: the host at offset `n` of the hosts range owns the `n`th
//! /24 of the instance range. So the machine and the other hosts need one route per host, and an
//! instance's address says which host it is on. Accounts are not separated by address ranges:
//! addresses are only addresses, and the host's firewall (default deny, access rules) is what
//! keeps one account's instances from another's — Kubernetes' model, not a VPC per tenant.
//!
//! An instance's address is a `NetworkInterface` of its node, created right after the node (the
//! address held in the same transaction as the interface, by IPAM's `/ipam/<network>/<address>`
//! keys); the host's desired set leaves out an instance with a network of its own until its
//! interface exists, so it never starts without it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use chrono::Utc;
use enjin_model::api::{CreateRequest, ListQuery};
use enjin_model::kinds::{AccessRuleSetSpec, AccountSpec, Cidr, NetworkInterfaceSpec, NetworkSpec};
use enjin_model::{Object, Ring};
use uuid::Uuid;

use super::PlatformError;
use crate::ipam;
use crate::registry::{Registry, RegistryError};

/// The label of the instance network.
pub const INSTANCES: &str = "instances";
/// The label of the ring 1 hosts' network.
pub const HOSTS: &str = "hosts";
/// The port every instance with a network of its own is given (`PORT`), unless its manifest
/// names one: each has its own namespace, so they may all use the same.
pub const INSTANCE_PORT: u16 = 8080;
/// The prefix of one host's block.
pub const BLOCK_PREFIX: u8 = 24;

/// The block of the instance range owned by the host at `host` on the hosts range: the
/// `n`th /24 for the host at offset `n`. `None` when either is not IPv4, the instance range is
/// narrower than a /24, or the offset has no block.
pub fn host_block(instances: &Cidr, hosts: &Cidr, host: IpAddr) -> Option<Cidr> {
    let (IpAddr::V4(inst), IpAddr::V4(net), IpAddr::V4(host)) = (instances.addr, hosts.addr, host) else {
        return None;
    };
    if !hosts.contains(IpAddr::V4(host)) || instances.prefix > BLOCK_PREFIX {
        return None;
    }
    let offset = u32::from(host).checked_sub(u32::from(net))?;
    let blocks = 1u32 << (BLOCK_PREFIX - instances.prefix);
    if offset >= blocks {
        return None;
    }
    let base = u32::from(inst) + (offset << (32 - u32::from(BLOCK_PREFIX)));
    Some(Cidr { addr: IpAddr::V4(Ipv4Addr::from(base)), prefix: BLOCK_PREFIX })
}

/// The instance network and the hosts network, if this cloud has both (an `enjin up` as root
/// makes them; without them instances share their host's network, with ports claimed
/// cloud-wide).
pub async fn networks(
    registry: &Registry,
) -> Result<Option<(Object<NetworkSpec>, Object<NetworkSpec>)>, RegistryError> {
    let find = |ring: Ring, label: &str| ListQuery {
        ring: Some(ring),
        label: Some(label.into()),
        ..ListQuery::default()
    };
    let Some(instances) = crate::firewall::instance_network(registry).await? else { return Ok(None) };
    let (hosts, _) = registry.list::<NetworkSpec>(&find(Ring::INFRASTRUCTURE, HOSTS)).await?;
    Ok(hosts.into_iter().next().map(|h| (instances, h)))
}

/// The label of each account's own rule set on the instance network, which `enjin access-rule
/// create` adds rules to by default.
pub const DEFAULT_RULE_SET: &str = "default";

/// Give every tenant account (or only `account`) its default rule set on the instance network,
/// where it has none: a tenant cannot see the operator's network to make one itself. Nothing
/// to do without an instance network.
pub async fn ensure_default_rule_sets(
    registry: &Registry,
    account: Option<Uuid>,
) -> Result<(), RegistryError> {
    // The operator's: a tenant can name a network of its own `instances` too.
    let Some(network) = crate::firewall::instance_network(registry).await? else { return Ok(()) };
    let system = registry.system_account().await?;
    let accounts: Vec<Uuid> = match account {
        Some(a) => vec![a],
        None => registry
            .list::<AccountSpec>(&ListQuery::default())
            .await?
            .0
            .into_iter()
            .map(|a| a.meta.uuid)
            .collect(),
    };
    for account in accounts.into_iter().filter(|a| *a != system) {
        let q = ListQuery {
            account: Some(account),
            label: Some(DEFAULT_RULE_SET.into()),
            ..ListQuery::default()
        };
        let (sets, _) = registry.list::<AccessRuleSetSpec>(&q).await?;
        if sets.iter().any(|s| s.spec.network == network.meta.uuid) {
            continue;
        }
        let req = CreateRequest {
            account: Some(account),
            ring: Ring::PLATFORM,
            label: Some(DEFAULT_RULE_SET.into()),
            labels: Default::default(),
            spec: AccessRuleSetSpec {
                network: network.meta.uuid,
                description: "the account's rules on the instance network".into(),
            },
        };
        match registry.create(req, Utc::now()).await {
            Ok(_) | Err(RegistryError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The block of `host`, from its interface on the hosts network.
pub fn block_of(
    host: Uuid,
    instances: &Object<NetworkSpec>,
    hosts: &Object<NetworkSpec>,
    interfaces: &[Object<NetworkInterfaceSpec>],
) -> Option<Cidr> {
    let address = interfaces
        .iter()
        .find(|i| i.spec.node == host && i.spec.network == hosts.meta.uuid)
        .and_then(|i| i.spec.addresses.first().copied())?;
    host_block(&instances.spec.cidr, &hosts.spec.cidr, address)
}

/// The address of an instance with a network of its own: its interface on the instance network.
pub fn instance_address(
    node: Uuid,
    instances: Uuid,
    interfaces: &[Object<NetworkInterfaceSpec>],
) -> Option<IpAddr> {
    interfaces
        .iter()
        .find(|i| i.spec.node == node && i.spec.network == instances)
        .and_then(|i| i.spec.addresses.first().copied())
}

/// Give `node` an address in `block`: a `NetworkInterface` on the instance network. An address
/// taken meanwhile by another instance is chosen again.
pub async fn attach(
    registry: &Registry,
    node: &Object<enjin_model::kinds::NodeSpec>,
    instances: Uuid,
    block: &Cidr,
) -> Result<IpAddr, PlatformError> {
    for _ in 0..16 {
        let held = registry.store().range(&ipam::prefix(instances)).await.map_err(RegistryError::from)?;
        let used: HashSet<IpAddr> = held.kvs.iter().filter_map(|kv| ipam::address_of(&kv.key)).collect();
        let Some(address) = ipam::first_free(block, &used) else {
            return Err(PlatformError::Unavailable(format!("the host's instance block {block} is full")));
        };
        let req = CreateRequest {
            account: Some(registry.system_account().await?),
            ring: Ring::PLATFORM,
            label: None,
            labels: Default::default(),
            spec: NetworkInterfaceSpec {
                network: instances,
                node: node.meta.uuid,
                addresses: vec![address],
                mac: None,
            },
        };
        match registry.create(req, Utc::now()).await {
            Ok(_) => return Ok(address),
            Err(RegistryError::Invalid(e)) if e.field.starts_with("spec.addresses") => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(PlatformError::Unavailable(format!("no address in {block} could be held; try again")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn each_host_owns_the_block_at_its_offset() {
        let (inst, hosts) = (cidr("10.251.0.0/16"), cidr("10.250.0.0/24"));
        let b = |h: &str| host_block(&inst, &hosts, h.parse().expect("ip"));
        assert_eq!(b("10.250.0.2"), Some(cidr("10.251.2.0/24")));
        assert_eq!(b("10.250.0.254"), Some(cidr("10.251.254.0/24")));
        assert_eq!(b("10.249.0.2"), None, "outside the hosts range");
        assert_eq!(
            host_block(&cidr("10.251.0.0/23"), &hosts, "10.250.0.2".parse().expect("ip")),
            None,
            "only two blocks"
        );
        assert_eq!(
            host_block(&cidr("10.251.0.0/25"), &hosts, "10.250.0.0".parse().expect("ip")),
            None,
            "narrower than a block"
        );
        assert_eq!(host_block(&cidr("fd00::/48"), &hosts, "10.250.0.2".parse().expect("ip")), None);
    }

    #[test]
    fn blocks_of_different_hosts_never_overlap() {
        let (inst, hosts) = (cidr("10.64.0.0/12"), cidr("10.250.0.0/20"));
        let mut seen = HashSet::new();
        for i in 0..4096u32 {
            let h = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + i));
            let block = host_block(&inst, &hosts, h).expect("a block");
            assert!(inst.contains(block.addr));
            assert!(seen.insert(block.addr), "block {block} given twice");
        }
    }
}
