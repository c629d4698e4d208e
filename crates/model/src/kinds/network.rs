use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Spec, no_duplicates, reference, text};
use crate::{FieldError, OnDelete, Reference, Ring, RingRule, Target};

/// An address range such as `10.80.0.0/24` or `fd00::/64`; host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(with = "String", extend("pattern" = CIDR_PATTERN))]
pub struct Cidr {
    /// The range's first address; may have host bits set only until the write checks them.
    pub addr: IpAddr,
    /// The prefix length in bits: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub prefix: u8,
}

/// An IPv4 address as Rust parses one: four decimal octets without leading zeros.
macro_rules! ipv4_re {
    () => {
        r"((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    };
}

/// An IPv6 address in the hexadecimal forms (full, or with one `::`), without a zone.
macro_rules! ipv6_re {
    () => {
        concat!(
            r"(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}",
            r"|([0-9a-fA-F]{1,4}:){1,7}:",
            r"|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
            r"|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}",
            r"|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
            r"|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}",
            r"|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
            r"|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}",
            r"|:((:[0-9a-fA-F]{1,4}){1,7}|:))"
        )
    };
}

/// What [`Cidr`]'s parser takes, as a JSON Schema pattern: an IPv4 address and a prefix of
/// 0–32, or an IPv6 address and a prefix of 0–128, the prefix without leading zeros. That
/// host bits are zero is a rule checked on write (422), not part of the syntax.
pub const CIDR_PATTERN: &str =
    concat!("^(", ipv4_re!(), r"/(3[0-2]|[12]?[0-9])|", ipv6_re!(), r"/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$");

impl Cidr {
    /// Parses `addr/prefix` without the host-bits rule, as the API reads it: that rule is
    /// checked on write ([`Cidr::check_host_bits`]), naming the field.
    pub fn parse_syntax(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) =
            s.split_once('/').ok_or_else(|| format!("{s:?} is not an address range like 10.0.0.0/24"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let digits = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit());
        let prefix: u8 = Some(prefix)
            .filter(|p| digits && (*p == "0" || !p.starts_with('0')))
            .and_then(|p| p.parse().ok())
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix length {prefix:?} must be a number from 0 to {max}"))?;
        Ok(Cidr { addr, prefix })
    }

    /// The network address of the range: the address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Refuses a range whose address has host bits set (`10.0.0.1/24`).
    pub fn check_host_bits(&self) -> Result<(), String> {
        let network = self.network();
        if network != self.addr {
            return Err(format!("{self} has host bits set; did you mean {network}/{}?", self.prefix));
        }
        Ok(())
    }

    /// Whether the two ranges share an address (one contains the other's network).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Whether `ip` lies in the range; an address of the other family never does.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// The syntax and the host-bits rule together, for configuration and the command line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cidr = Cidr::parse_syntax(s)?;
        cidr.check_host_bits()?;
        Ok(cidr)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cidr::parse_syntax(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// How a network is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkStrategy {
    /// A bridge or segment on one machine.
    Local,
    /// An encrypted link between compartments.
    Vpn,
}

/// An address range on ring networks, with the compartments it spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// How the network is carried.
    pub strategy: NetworkStrategy,
    /// The range IPAM hands addresses out of.
    pub cidr: Cidr,
    /// Where the network is: one compartment for `local`, the linked ones (two or more) for
    /// `vpn`.
    #[serde(default)]
    pub compartments: Vec<Uuid>,
}

impl Spec for NetworkSpec {
    const KIND: Kind = Kind::Network;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        self.cidr.check_host_bits().map_err(|m| FieldError::new("spec.cidr", m))?;
        no_duplicates("spec.compartments", &self.compartments)?;
        match self.strategy {
            NetworkStrategy::Local if self.compartments.len() > 1 => Err(FieldError::new(
                "spec.compartments",
                "a local network lies in at most one compartment; use strategy vpn to link several",
            )),
            NetworkStrategy::Vpn if self.compartments.len() < 2 => {
                Err(FieldError::new("spec.compartments", "a vpn network links two or more compartments"))
            }
            _ => Ok(()),
        }
    }

    fn references(&self) -> Vec<Reference> {
        self.compartments
            .iter()
            .enumerate()
            .map(|(i, c)| {
                reference(
                    format!("spec.compartments[{i}]"),
                    Kind::Compartment,
                    *c,
                    RingRule::SameOrLower,
                    OnDelete::Restrict,
                )
            })
            .collect()
    }

    fn change_referrers_rely_on(&self, old: &Self) -> Option<&'static str> {
        (self.cidr != old.cidr).then_some("spec.cidr")
    }

    fn compartment(&self) -> Option<Uuid> {
        self.compartments.first().copied()
    }
}

/// A node's attachment to a network, with the addresses IPAM gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceSpec {
    /// The network the interface is attached to, in the same ring; it cannot be deleted while the
    /// interface exists.
    pub network: Uuid,
    /// The node the interface belongs to, in the same ring; the interface is deleted with the node
    /// and its addresses go back to the network.
    pub node: Uuid,
    /// The interface's addresses, each inside the network's range and listed once; empty until
    /// IPAM gives it one.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// A MAC address such as `02:00:00:00:00:01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"))]
    pub mac: Option<String>,
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Spec for NetworkInterfaceSpec {
    const KIND: Kind = Kind::NetworkInterface;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        for (i, a) in self.addresses.iter().enumerate() {
            if self.addresses[..i].contains(a) {
                return Err(FieldError::new(format!("spec.addresses[{i}]"), format!("{a} is listed twice")));
            }
        }
        match &self.mac {
            Some(mac) if !valid_mac(mac) => Err(FieldError::new(
                "spec.mac",
                format!("{mac:?} is not a MAC address like 02:00:00:00:00:01"),
            )),
            _ => Ok(()),
        }
    }

    fn references(&self) -> Vec<Reference> {
        vec![
            reference("spec.network", Kind::Network, self.network, RingRule::Same, OnDelete::Restrict),
            // An interface is part of its node: it goes (and its addresses return) with it.
            reference("spec.node", Kind::Node, self.node, RingRule::Same, OnDelete::Cascade),
        ]
    }

    fn check_targets(&self, _ring: Ring, targets: &[(Reference, Target)]) -> Result<(), FieldError> {
        let Some((_, network)) = targets.iter().find(|(r, _)| r.kind == Kind::Network) else {
            return Ok(());
        };
        let spec: NetworkSpec = serde_json::from_value(network.spec.clone())
            .map_err(|e| FieldError::new("spec.network", format!("network is unreadable: {e}")))?;
        for (i, a) in self.addresses.iter().enumerate() {
            if !spec.cidr.contains(*a) {
                return Err(FieldError::new(
                    format!("spec.addresses[{i}]"),
                    format!("{a} is outside the network's range {}", spec.cidr),
                ));
            }
        }
        Ok(())
    }
}

/// A set of access rules for one network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleSetSpec {
    /// The network the rules apply to, in the same ring.
    pub network: Uuid,
    /// What the set is for, for people; at most 1,024 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = super::TEXT_PATTERN))]
    pub description: String,
}

impl Spec for AccessRuleSetSpec {
    const KIND: Kind = Kind::AccessRuleSet;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        text("spec.description", &self.description, 1024)
    }

    fn references(&self) -> Vec<Reference> {
        vec![reference("spec.network", Kind::Network, self.network, RingRule::Same, OnDelete::Restrict)]
    }
}

/// What a rule does to the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Drop it.
    Deny,
}

/// Which way the traffic of a rule flows, seen from the instances the rule is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic arriving at the instances.
    Ingress,
    /// Traffic the instances send.
    Egress,
}

/// The IP protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Every protocol (the default); no ports may be given.
    Any,
    /// TCP, optionally on `ports`.
    Tcp,
    /// UDP, optionally on `ports`.
    Udp,
    /// ICMP (and ICMPv6); no ports may be given.
    Icmp,
}

/// A port or an inclusive range: `443` or `8000-8100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String", extend("pattern" = PORT_RANGE_PATTERN))]
pub struct PortRange {
    /// The first port of the range, at least 1.
    pub first: u16,
    /// The last port, inclusive; equal to `first` for a single port, never below it once written.
    pub last: u16,
}

/// A port from 1 to 65535 in decimal without leading zeros.
macro_rules! port_re {
    () => {
        r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
    };
}

/// What [`PortRange`]'s parser takes, as a JSON Schema pattern: a port or `first-last`. That
/// the range does not run backwards is a rule checked on write (422).
pub const PORT_RANGE_PATTERN: &str = concat!("^", port_re!(), "(-", port_re!(), ")?$");

impl PortRange {
    /// Parses `port` or `first-last` without the order rule, as the API reads it: that rule is
    /// checked on write ([`PortRange::check_order`]), naming the field.
    pub fn parse_syntax(s: &str) -> Result<PortRange, String> {
        let port = |p: &str| {
            Some(p)
                .filter(|p| !p.is_empty() && !p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| format!("{p:?} is not a port from 1 to 65535"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        Ok(PortRange { first, last })
    }

    /// Refuses a range that runs backwards (`90-80`).
    pub fn check_order(&self) -> Result<(), String> {
        if self.first > self.last {
            return Err(format!("port range {}-{} runs backwards", self.first, self.last));
        }
        Ok(())
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    /// The syntax and the order rule together, for the command line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let range = PortRange::parse_syntax(s.trim())?;
        range.check_order()?;
        Ok(range)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PortRange::parse_syntax(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Some instances of an app, by name: `app` (every process type) or `app:process`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[schemars(with = "String", extend("pattern" = APP_SELECTOR_PATTERN))]
pub struct AppSelector {
    /// The app's name.
    pub app: String,
    /// The process type (`web`, `worker`); none selects every process type of the app.
    pub process: Option<String>,
}

/// What [`AppSelector`]'s parser takes: an app name, optionally `:` and a process type, each a
/// label (lowercase letters, digits, `-`, `_`, `.`).
pub const APP_SELECTOR_PATTERN: &str =
    "^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(:[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?)?$";

impl AppSelector {
    /// Whether an instance of `app`, process type `process`, is selected.
    pub fn matches(&self, app: &str, process: &str) -> bool {
        self.app == app && self.process.as_deref().is_none_or(|p| p == process)
    }

    /// Whether some instance could be selected by both.
    pub fn overlaps(&self, other: &AppSelector) -> bool {
        self.app == other.app
            && match (&self.process, &other.process) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for AppSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.process {
            Some(p) => write!(f, "{}:{p}", self.app),
            None => write!(f, "{}", self.app),
        }
    }
}

impl std::str::FromStr for AppSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (app, process) = match s.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        crate::validate_label(app).map_err(|m| format!("app name {app:?} {m}"))?;
        if let Some(p) = process {
            crate::validate_label(p).map_err(|m| format!("process type {p:?} {m}"))?;
        }
        Ok(AppSelector { app: app.to_string(), process: process.map(str::to_string) })
    }
}

impl Serialize for AppSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AppSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Who may reach what on a ring network; the agent of the ring that contains the network turns
/// these into kernel firewall rules. On the instance network a rule is for the instances of
/// its own account (`target`, or all of them), and its other end is an address range (`peer`)
/// or instances of an app of the same account (`peer_app`), never both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleSpec {
    /// The rule set the rule belongs to, in the same ring; the rule is deleted with it.
    pub rule_set: Uuid,
    /// Whether matching traffic is let through or dropped.
    pub action: Action,
    /// Whether the rule is about traffic to the instances or from them.
    pub direction: Direction,
    /// The protocol matched; any by default.
    #[serde(default = "any_protocol")]
    pub protocol: Protocol,
    /// The ports matched, for tcp and udp only; absent means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// The other end; absent (with no `peer_app`) means anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Cidr>,
    /// The other end as instances of an app (and process type) of the rule's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_app: Option<AppSelector>,
    /// The instances the rule is for: absent means every instance of the rule's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<AppSelector>,
    /// Lower numbers are evaluated first; at the same priority a deny comes before an allow.
    #[serde(default = "default_priority")]
    pub priority: u32,
}

fn any_protocol() -> Protocol {
    Protocol::Any
}

fn default_priority() -> u32 {
    1000
}

/// The other end of a rule, for comparing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer<'a> {
    /// Neither `peer` nor `peer_app`: any address.
    Anywhere,
    /// An address range (`peer`).
    Range(&'a Cidr),
    /// Instances of an app (`peer_app`).
    App(&'a AppSelector),
}

impl AccessRuleSpec {
    /// The rule's other end; `peer` wins if both are set (which validation refuses).
    pub fn peer_of(&self) -> Peer<'_> {
        match (&self.peer, &self.peer_app) {
            (Some(c), _) => Peer::Range(c),
            (None, Some(a)) => Peer::App(a),
            (None, None) => Peer::Anywhere,
        }
    }

    /// Why `self` contradicts `other`, a rule of the same rule set, if it does: opposite
    /// actions at the same priority and direction over traffic both could match (targets,
    /// peers, protocols and ports that overlap). At one priority the deny would always win,
    /// so the allow would be dead; the caller is asked to order them by priority instead. An
    /// address range and an app selector are not compared (an app's addresses change).
    pub fn contradiction(&self, other: &AccessRuleSpec) -> Option<&'static str> {
        if self.rule_set != other.rule_set
            || self.action == other.action
            || self.direction != other.direction
            || self.priority != other.priority
        {
            return None;
        }
        let targets = match (&self.target, &other.target) {
            (Some(a), Some(b)) => a.overlaps(b),
            _ => true,
        };
        let peers = match (self.peer_of(), other.peer_of()) {
            (Peer::Anywhere, _) | (_, Peer::Anywhere) => true,
            (Peer::Range(a), Peer::Range(b)) => a.overlaps(b),
            (Peer::App(a), Peer::App(b)) => a.overlaps(b),
            _ => false,
        };
        let protocols = self.protocol == other.protocol
            || self.protocol == Protocol::Any
            || other.protocol == Protocol::Any;
        let ports = match (self.ports, other.ports) {
            (Some(a), Some(b)) => a.first <= b.last && b.first <= a.last,
            _ => true,
        };
        if !(targets && peers && protocols && ports) {
            return None;
        }
        // The field that makes them collide most specifically names what to change.
        Some("spec.priority")
    }
}

impl Spec for AccessRuleSpec {
    const KIND: Kind = Kind::AccessRule;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        if self.ports.is_some() && !matches!(self.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(FieldError::new("spec.ports", "ports need protocol tcp or udp"));
        }
        if let Some(ports) = &self.ports {
            ports.check_order().map_err(|m| FieldError::new("spec.ports", m))?;
        }
        if let Some(peer) = &self.peer {
            peer.check_host_bits().map_err(|m| FieldError::new("spec.peer", m))?;
        }
        if self.peer.is_some() && self.peer_app.is_some() {
            return Err(FieldError::new(
                "spec.peer_app",
                "a rule's other end is an address range (peer) or an app (peer_app), not both",
            ));
        }
        Ok(())
    }

    fn references(&self) -> Vec<Reference> {
        vec![reference(
            "spec.rule_set",
            Kind::AccessRuleSet,
            self.rule_set,
            RingRule::Same,
            OnDelete::Cascade,
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.80.0.0/24".parse().expect("valid");
        assert!(c.contains("10.80.0.7".parse().expect("ip")));
        assert!(!c.contains("10.80.1.7".parse().expect("ip")));
        assert!(!c.contains("fd00::1".parse().expect("ip")));
        assert!("10.80.0.1/24".parse::<Cidr>().is_err());
        assert!("10.80.0.0/33".parse::<Cidr>().is_err());
        assert!("banana".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        let v6: Cidr = "fd00::/64".parse().expect("valid");
        assert!(v6.contains("fd00::5".parse().expect("ip")));
    }

    #[test]
    fn port_ranges() {
        assert_eq!("80".parse::<PortRange>(), Ok(PortRange { first: 80, last: 80 }));
        assert_eq!("8000-8100".parse::<PortRange>(), Ok(PortRange { first: 8000, last: 8100 }));
        assert!("9-1".parse::<PortRange>().is_err());
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }

    fn rule(action: Action) -> AccessRuleSpec {
        AccessRuleSpec {
            rule_set: Uuid::nil(),
            action,
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            ports: Some("9000".parse().expect("ports")),
            peer: None,
            peer_app: Some("web".parse().expect("selector")),
            target: Some("api:worker".parse().expect("selector")),
            priority: 1000,
        }
    }

    #[test]
    fn app_selectors_parse_and_refuse_bad_names() {
        let s: AppSelector = "web:worker".parse().expect("selector");
        assert_eq!(s, AppSelector { app: "web".into(), process: Some("worker".into()) });
        assert_eq!(s.to_string(), "web:worker");
        assert!(s.matches("web", "worker") && !s.matches("web", "api") && !s.matches("webx", "worker"));
        let all: AppSelector = "web".parse().expect("selector");
        assert!(all.matches("web", "anything") && all.overlaps(&s));
        for bad in ["", "Web", "web:", ":worker", "web:worker:x", "web app", "-web"] {
            assert!(bad.parse::<AppSelector>().is_err(), "{bad:?} parsed");
        }
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json, serde_json::json!("web:worker"));
        assert!(serde_json::from_value::<AppSelector>(serde_json::json!("web:Bad")).is_err());
    }

    #[test]
    fn old_stored_rules_still_read() {
        let old = serde_json::json!({
            "rule_set": Uuid::nil(), "action": "allow", "direction": "ingress", "peer": "10.0.0.0/8"
        });
        let r: AccessRuleSpec = serde_json::from_value(old).expect("old rule");
        assert_eq!((r.target, r.peer_app, r.priority, r.protocol), (None, None, 1000, Protocol::Any));
    }

    #[test]
    fn rules_refuse_both_peers_and_bad_ports() {
        let mut r = rule(Action::Allow);
        assert!(r.validate(Ring::PLATFORM).is_ok());
        r.peer = Some("10.0.0.0/8".parse().expect("cidr"));
        assert_eq!(r.validate(Ring::PLATFORM).map_err(|e| e.field), Err("spec.peer_app".into()));
        let mut r = rule(Action::Allow);
        r.ports = Some(PortRange { first: 90, last: 80 });
        assert_eq!(r.validate(Ring::PLATFORM).map_err(|e| e.field), Err("spec.ports".into()));
        let bad: Result<AccessRuleSpec, _> = serde_json::from_value(serde_json::json!({
            "rule_set": Uuid::nil(), "action": "allow", "direction": "ingress", "protocol": "tcp", "ports": "0"
        }));
        assert!(bad.is_err(), "port 0 is refused on read");
    }

    #[test]
    fn contradictions_are_opposite_actions_over_overlapping_traffic_at_one_priority() {
        let allow = rule(Action::Allow);
        let deny = rule(Action::Deny);
        assert_eq!(deny.contradiction(&allow), Some("spec.priority"));
        assert_eq!(allow.contradiction(&allow), None, "same action is no contradiction");
        let mut later = deny.clone();
        later.priority = 2000;
        assert_eq!(later.contradiction(&allow), None, "another priority orders them");
        let mut other_port = deny.clone();
        other_port.ports = Some("9001-9010".parse().expect("ports"));
        assert_eq!(other_port.contradiction(&allow), None);
        let mut wide = deny.clone();
        wide.ports = Some("8000-9000".parse().expect("ports"));
        assert_eq!(wide.contradiction(&allow), Some("spec.priority"), "overlapping ports");
        let mut udp = deny.clone();
        udp.protocol = Protocol::Udp;
        assert_eq!(udp.contradiction(&allow), None);
        let mut any = deny.clone();
        any.protocol = Protocol::Any;
        any.ports = None;
        assert_eq!(any.contradiction(&allow), Some("spec.priority"), "any protocol overlaps tcp");
        let mut other_target = deny.clone();
        other_target.target = Some("api:web".parse().expect("selector"));
        assert_eq!(other_target.contradiction(&allow), None);
        let mut every = deny.clone();
        every.target = None;
        assert_eq!(every.contradiction(&allow), Some("spec.priority"), "no target is every instance");
        let mut egress = deny.clone();
        egress.direction = Direction::Egress;
        assert_eq!(egress.contradiction(&allow), None);
        let mut cidr_a = allow.clone();
        cidr_a.peer_app = None;
        cidr_a.peer = Some("10.1.0.0/16".parse().expect("cidr"));
        let mut cidr_d = deny.clone();
        cidr_d.peer_app = None;
        cidr_d.peer = Some("10.0.0.0/8".parse().expect("cidr"));
        assert_eq!(cidr_d.contradiction(&cidr_a), Some("spec.priority"), "nested ranges overlap");
        cidr_d.peer = Some("10.2.0.0/16".parse().expect("cidr"));
        assert_eq!(cidr_d.contradiction(&cidr_a), None, "disjoint ranges");
    }

    #[test]
    fn vpn_needs_two_compartments() {
        let spec = NetworkSpec {
            strategy: NetworkStrategy::Vpn,
            cidr: "10.0.0.0/16".parse().expect("valid"),
            compartments: vec![Uuid::new_v4()],
        };
        assert_eq!(spec.validate(Ring::META).map_err(|e| e.field), Err("spec.compartments".into()));
    }
}
