//! IP address assignment, a ring 0 service: each address of a network is held by at most one
//! interface, through one store key per address (`/ipam/<network>/<address>`) written in the
//! same transaction as the interface — so an address is never handed out twice, even by two
//! servers at once, and is released when its interface goes.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use enjin_model::kinds::Cidr;
use uuid::Uuid;

/// The store key that holds `address` in `network` (`/ipam/<network>/<address>`): it exists
/// exactly while an interface has that address.
pub fn key(network: Uuid, address: IpAddr) -> String {
    format!("/ipam/{network}/{address}")
}

/// The prefix of every address key of `network`, to list the addresses it has handed out.
pub fn prefix(network: Uuid) -> String {
    format!("/ipam/{network}/")
}

/// The address a key holds.
pub fn address_of(key: &str) -> Option<IpAddr> {
    key.rsplit('/').next()?.parse().ok()
}

/// How many addresses are looked at before giving up on a nearly full (or huge) range.
const SCAN_LIMIT: u128 = 1 << 20;

/// The first free address for a host in `cidr`: never the network address, the first host
/// (the gateway: the bridge on the supervising host) or, for IPv4, the broadcast address.
pub fn first_free(cidr: &Cidr, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    match cidr.addr {
        IpAddr::V4(net) => {
            let size = 1u64 << (32 - u32::from(cidr.prefix));
            if size < 4 {
                return None;
            }
            let base = u64::from(u32::from(net));
            (2..size - 1)
                .take(SCAN_LIMIT as usize)
                .map(|i| IpAddr::V4(Ipv4Addr::from((base + i) as u32)))
                .find(|a| !used.contains(a))
        }
        IpAddr::V6(net) => {
            let bits = 128 - u32::from(cidr.prefix);
            let size = if bits >= 127 { u128::MAX } else { 1u128 << bits };
            if size < 4 {
                return None;
            }
            let base = u128::from(net);
            (2..size.min(SCAN_LIMIT))
                .map(|i| IpAddr::V6(Ipv6Addr::from(base + i)))
                .find(|a| !used.contains(a))
        }
    }
}

/// The gateway address of a range: its first host.
pub fn gateway(cidr: &Cidr) -> Option<IpAddr> {
    match cidr.addr {
        IpAddr::V4(net) if cidr.prefix <= 30 => Some(IpAddr::V4(Ipv4Addr::from(u32::from(net) + 1))),
        IpAddr::V6(net) if cidr.prefix <= 126 => Some(IpAddr::V6(Ipv6Addr::from(u128::from(net) + 1))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn skips_network_gateway_broadcast_and_used() {
        let c = cidr("10.80.0.0/29");
        let mut used = HashSet::new();
        let mut got = Vec::new();
        while let Some(a) = first_free(&c, &used) {
            used.insert(a);
            got.push(a.to_string());
        }
        assert_eq!(got, ["10.80.0.2", "10.80.0.3", "10.80.0.4", "10.80.0.5", "10.80.0.6"]);
        assert_eq!(gateway(&c).map(|g| g.to_string()), Some("10.80.0.1".into()));
        assert_eq!(first_free(&cidr("10.0.0.0/31"), &HashSet::new()), None);
        assert_eq!(
            first_free(&cidr("fd00::/64"), &HashSet::new()).map(|a| a.to_string()),
            Some("fd00::2".into())
        );
        assert_eq!(address_of(&key(Uuid::nil(), "10.0.0.9".parse().expect("ip"))), "10.0.0.9".parse().ok());
    }
}
