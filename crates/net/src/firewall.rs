//! A host's instance firewall: [`compile`] turns the control plane's [`HostFirewall`] into one
//! nftables transaction (the JSON of `man libnftables-json`) and [`apply`] hands it to
//! `nft -j -f -`. The transaction deletes and recreates enjin's own table, `inet enjin`, and
//! touches no other table: the kernel applies all of it or none of it.
//!
//! What the table does (the defaults of `docs/security.md`):
//!
//! - `forward` (policy accept; only traffic to or from an instance veth is judged):
//!   1. a packet from an instance's veth whose source is not the instance's address is dropped
//!      (`guard-*` chains), before anything else, established or not;
//!   2. established and related flows are accepted;
//!   3. a new flow from an instance goes through its `out-*` chain: DNS accepted, protected
//!      ranges dropped, the instance network let through (to be judged by the receiver),
//!      then the instance's egress rules in order, then drop;
//!   4. a new flow to an instance goes through its `in-*` chain: the edge to its port, then
//!      its ingress rules in order, then drop;
//!   5. anything else on an interface with the instance prefix (an instance this firewall does
//!      not know yet) is dropped.
//! - `input` (policy accept): from instance veths only DNS to the host (after the same source
//!   guard); everything else an instance sends to the host's own addresses is dropped. Other
//!   interfaces are not touched.
//!
//! Per-packet cost does not grow with the number of instances: the instance's chain is found
//! through a verdict map keyed by interface name, and each rule's peers are one set lookup.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use enjin_model::api::{FirewallInstance, FirewallRule, HostFirewall};
use enjin_model::kinds::{Action, Cidr, Protocol};
use serde_json::{Value, json};

use crate::{INSTANCE_PREFIX, NetError, check_name};

/// enjin's table; nothing else is ever changed.
pub const TABLE: &str = "enjin";
/// The nftables family of [`TABLE`]: `inet`, so that one table judges IPv4 and IPv6 alike.
pub const FAMILY: &str = "inet";

/// Compile a host's firewall into one nftables JSON transaction.
pub fn compile(fw: &HostFirewall) -> Value {
    let mut c = Compiler { cmds: Vec::new() };
    let table = json!({"family": FAMILY, "name": TABLE});
    // Adding first makes the delete succeed when the table does not exist yet; all three are
    // one transaction, so the old table stays until the new one is complete.
    c.cmds.push(json!({"add": {"table": table}}));
    c.cmds.push(json!({"delete": {"table": table}}));
    c.cmds.push(json!({"add": {"table": table}}));
    c.base_chain("forward", "forward");
    c.base_chain("input", "input");

    let mut guards = Vec::new();
    let mut outs = Vec::new();
    let mut ins = Vec::new();
    let mut to_host = Vec::new();
    for inst in &fw.instances {
        let iface = &inst.interface;
        let (guard, out, inn) = (format!("guard-{iface}"), format!("out-{iface}"), format!("in-{iface}"));
        c.chain(&guard);
        c.guard(&guard, inst);
        c.chain(&out);
        c.egress(&out, fw, inst);
        c.chain(&inn);
        c.ingress(&inn, fw, inst);
        guards.push(json!([iface, {"jump": {"target": guard}}]));
        outs.push(json!([iface, {"jump": {"target": out}}]));
        ins.push(json!([iface, {"jump": {"target": inn}}]));
        to_host.push(Value::String(iface.clone()));
    }

    let instance_ifaces = json!(format!("{INSTANCE_PREFIX}*"));
    if !guards.is_empty() {
        c.rule("forward", vec![vmap("iifname", guards.clone())]);
    }
    c.rule("forward", vec![ct_established(), verdict("accept")]);
    if !outs.is_empty() {
        c.rule("forward", vec![vmap("iifname", outs)]);
        c.rule("forward", vec![vmap("oifname", ins)]);
    }
    c.rule("forward", vec![eq(meta("iifname"), instance_ifaces.clone()), verdict("drop")]);
    c.rule("forward", vec![eq(meta("oifname"), instance_ifaces.clone()), verdict("drop")]);

    if !guards.is_empty() {
        c.rule("input", vec![vmap("iifname", guards)]);
    }
    c.rule("input", vec![ct_established(), verdict("accept")]);
    c.chain("host-from-instance");
    for dns in &fw.dns {
        for proto in ["udp", "tcp"] {
            c.rule(
                "host-from-instance",
                vec![
                    addr_match("daddr", dns.ip()),
                    eq(payload(proto, "dport"), json!(dns.port())),
                    verdict("accept"),
                ],
            );
        }
    }
    // An IPv6 instance finds its gateway (the host) by neighbour discovery.
    c.rule("host-from-instance", vec![neighbour_discovery(), verdict("accept")]);
    c.rule("host-from-instance", vec![verdict("drop")]);
    c.rule(
        "input",
        vec![eq(meta("iifname"), instance_ifaces), json!({"jump": {"target": "host-from-instance"}})],
    );
    json!({"nftables": c.cmds})
}

struct Compiler {
    cmds: Vec<Value>,
}

impl Compiler {
    fn base_chain(&mut self, name: &str, hook: &str) {
        self.cmds.push(json!({"add": {"chain": {
            "family": FAMILY, "table": TABLE, "name": name,
            "type": "filter", "hook": hook, "prio": 0, "policy": "accept",
        }}}));
    }

    fn chain(&mut self, name: &str) {
        self.cmds.push(json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}}));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Value>) {
        self.cmds
            .push(json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}}}));
    }

    /// Anti-spoofing: only the instance's own address, only its family (and, for an IPv6
    /// instance, neighbour discovery from its link-local address, which never leaves the link).
    fn guard(&mut self, chain: &str, inst: &FirewallInstance) {
        let (field_proto, other) = match inst.address {
            IpAddr::V4(_) => ("ip", "ipv6"),
            IpAddr::V6(_) => ("ip6", "ipv4"),
        };
        if inst.address.is_ipv6() {
            let link_local = Cidr { addr: "fe80::".parse().unwrap_or(inst.address), prefix: 10 };
            self.rule(
                chain,
                vec![set_match("saddr", &[link_local]), neighbour_discovery(), verdict("return")],
            );
        }
        self.rule(
            chain,
            vec![ne(payload(field_proto, "saddr"), json!(inst.address.to_string())), verdict("drop")],
        );
        self.rule(chain, vec![eq(meta("nfproto"), json!(other)), verdict("drop")]);
    }

    fn egress(&mut self, chain: &str, fw: &HostFirewall, inst: &FirewallInstance) {
        for dns in &fw.dns {
            for proto in ["udp", "tcp"] {
                self.rule(
                    chain,
                    vec![
                        addr_match("daddr", dns.ip()),
                        eq(payload(proto, "dport"), json!(dns.port())),
                        verdict("accept"),
                    ],
                );
            }
        }
        for family in split(&fw.protected) {
            self.rule(chain, vec![set_match("daddr", &family), verdict("drop")]);
        }
        if let Some(net) = &fw.instance_network {
            self.rule(chain, vec![set_match("daddr", &[*net]), verdict("return")]);
        }
        for r in &inst.egress {
            self.access_rule(chain, "daddr", r);
        }
        self.rule(chain, vec![verdict("drop")]);
    }

    fn ingress(&mut self, chain: &str, fw: &HostFirewall, inst: &FirewallInstance) {
        if let Some(port) = inst.port {
            let edge: Vec<Cidr> = fw.edge.iter().map(|a| host_cidr(*a)).collect();
            for family in split(&edge) {
                self.rule(
                    chain,
                    vec![
                        set_match("saddr", &family),
                        eq(payload("tcp", "dport"), json!(port)),
                        verdict("accept"),
                    ],
                );
            }
        }
        for r in &inst.ingress {
            self.access_rule(chain, "saddr", r);
        }
        self.rule(chain, vec![verdict("drop")]);
    }

    /// One access rule: a rule per address family of its peers (one when it has none).
    fn access_rule(&mut self, chain: &str, field: &str, r: &FirewallRule) {
        let action = match r.action {
            Action::Allow => "accept",
            Action::Deny => "drop",
        };
        let mut proto = Vec::new();
        match (r.protocol, r.ports) {
            (Protocol::Tcp | Protocol::Udp, Some(p)) => {
                let name = if r.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                let ports =
                    if p.first == p.last { json!(p.first) } else { json!({"range": [p.first, p.last]}) };
                proto.push(eq(payload(name, "dport"), ports));
            }
            (Protocol::Tcp, None) => proto.push(eq(meta("l4proto"), json!("tcp"))),
            (Protocol::Udp, None) => proto.push(eq(meta("l4proto"), json!("udp"))),
            (Protocol::Icmp, _) => proto.push(eq(meta("l4proto"), json!({"set": ["icmp", "ipv6-icmp"]}))),
            (Protocol::Any, _) => {}
        }
        if r.peers.is_empty() {
            let mut expr = proto;
            expr.push(verdict(action));
            self.rule(chain, expr);
            return;
        }
        for family in split(&r.peers) {
            let mut expr = vec![set_match(field, &family)];
            expr.extend(proto.iter().cloned());
            expr.push(verdict(action));
            self.rule(chain, expr);
        }
    }
}

/// Ranges split by address family (nftables sets hold one type), IPv4 first; empty families
/// are left out.
fn split(cidrs: &[Cidr]) -> Vec<Vec<Cidr>> {
    let (v4, v6): (Vec<Cidr>, Vec<Cidr>) = cidrs.iter().partition(|c| c.addr.is_ipv4());
    [v4, v6].into_iter().filter(|f| !f.is_empty()).collect()
}

fn host_cidr(a: IpAddr) -> Cidr {
    Cidr { addr: a, prefix: if a.is_ipv4() { 32 } else { 128 } }
}

fn cidr_value(c: &Cidr) -> Value {
    let full = if c.addr.is_ipv4() { 32 } else { 128 };
    if c.prefix == full {
        json!(c.addr.to_string())
    } else {
        json!({"prefix": {"addr": c.network().to_string(), "len": c.prefix}})
    }
}

/// `ip daddr { … }` (or `ip6`), for ranges all of one family.
fn set_match(field: &str, family: &[Cidr]) -> Value {
    let proto = if family[0].addr.is_ipv4() { "ip" } else { "ip6" };
    let right = if family.len() == 1 {
        cidr_value(&family[0])
    } else {
        json!({"set": family.iter().map(cidr_value).collect::<Vec<_>>()})
    };
    eq(payload(proto, field), right)
}

fn addr_match(field: &str, a: IpAddr) -> Value {
    set_match(field, &[host_cidr(a)])
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

/// ICMPv6 router and neighbour solicitations and advertisements.
fn neighbour_discovery() -> Value {
    eq(
        payload("icmpv6", "type"),
        json!({"set": ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"]}),
    )
}

fn ct_established() -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}})
}

fn verdict(v: &str) -> Value {
    json!({ v: null })
}

fn vmap(key: &str, pairs: Vec<Value>) -> Value {
    json!({"vmap": {"key": meta(key), "data": {"set": pairs}}})
}

/// Why a firewall was not applied.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// An instance's interface name is not [`INSTANCE_PREFIX`] and at most 11 letters, digits,
    /// '-' or '_' (it becomes a chain name and a map key); nothing was applied.
    #[error(
        "instance {node}: invalid interface name {interface:?}: {INSTANCE_PREFIX} and at most 11 more \
         letters, digits, '-' and '_'"
    )]
    BadInterface {
        /// The instance's node uuid.
        node: uuid::Uuid,
        /// The name as the control plane sent it.
        interface: String,
    },
    /// Two instances have the same interface name (their uuids start with the same 8 letters
    /// and digits, or the control plane erred); nothing was applied.
    #[error("instances {first} and {second} both have interface {interface}")]
    DuplicateInterface {
        /// The name both have.
        interface: String,
        /// The instance listed first with it.
        first: uuid::Uuid,
        /// The instance listed next with it.
        second: uuid::Uuid,
    },
    /// `nft` (or, inside a namespace, `nsenter`) could not be started or handed the document:
    /// nftables is not installed, or not on `PATH`. The old table, if any, stays in force.
    #[error("failed to run nft: {0}")]
    Spawn(std::io::Error),
    /// nft refused the transaction, so the kernel applied none of it and the old table, if any,
    /// stays in force.
    #[error("nft refused the firewall of table {FAMILY} {TABLE}: {stderr}")]
    Refused {
        /// nft's error lines (at most five, joined by `; `), with the first command it refuses
        /// appended when one is found.
        stderr: String,
    },
}

impl From<FirewallError> for NetError {
    fn from(e: FirewallError) -> Self {
        NetError::Firewall(Box::new(e))
    }
}

/// Check what nftables cannot (interface names become chain names and map keys).
pub fn check(fw: &HostFirewall) -> Result<(), FirewallError> {
    let mut seen = std::collections::HashMap::new();
    for inst in &fw.instances {
        if check_name(&inst.interface).is_err() || !inst.interface.starts_with(INSTANCE_PREFIX) {
            return Err(FirewallError::BadInterface { node: inst.node, interface: inst.interface.clone() });
        }
        if let Some(first) = seen.insert(inst.interface.as_str(), inst.node) {
            return Err(FirewallError::DuplicateInterface {
                interface: inst.interface.clone(),
                first,
                second: inst.node,
            });
        }
    }
    Ok(())
}

/// Compile and apply `fw` in the current network namespace, in one nftables transaction.
pub fn apply(fw: &HostFirewall) -> Result<(), NetError> {
    apply_with(&[], fw)
}

/// [`apply`] inside the network namespace `netns` (under `/run/netns`).
pub fn apply_in(netns: &str, fw: &HostFirewall) -> Result<(), NetError> {
    check_name(netns)?;
    apply_with(&crate::exec_prefix(netns), fw)
}

fn apply_with(prefix: &[String], fw: &HostFirewall) -> Result<(), NetError> {
    check(fw)?;
    let doc = compile(fw);
    run_nft(prefix, &doc)?;
    tracing::debug!(instances = fw.instances.len(), "applied the instance firewall");
    Ok(())
}

/// Feed an nftables JSON document to `nft -j -f -`. When nft refuses it, the error names the
/// first command it refuses (found by checking ever longer prefixes of the document with
/// `nft -c`, which changes nothing), since nft's own message does not say which.
pub fn run_nft(prefix: &[String], doc: &Value) -> Result<(), FirewallError> {
    match nft(prefix, doc, false) {
        Ok(()) => Ok(()),
        Err(FirewallError::Refused { stderr }) => {
            let culprit = culprit(prefix, doc).map(|c| format!(" (at {c})")).unwrap_or_default();
            Err(FirewallError::Refused { stderr: format!("{stderr}{culprit}") })
        }
        Err(e) => Err(e),
    }
}

/// The first command of `doc` that nft refuses on its own, described.
fn culprit(prefix: &[String], doc: &Value) -> Option<String> {
    let cmds = doc["nftables"].as_array()?;
    let refuses = |n: usize| nft(prefix, &json!({"nftables": &cmds[..n]}), true).is_err();
    if !refuses(cmds.len()) {
        return None;
    }
    // The shortest refused prefix: its last command is the culprit.
    let (mut lo, mut hi) = (0, cmds.len());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if refuses(mid) { hi = mid } else { lo = mid }
    }
    let cmd = &cmds[hi - 1];
    let (verb, body) = cmd.as_object()?.iter().next()?;
    let (what, obj) = body.as_object()?.iter().next()?;
    let name = obj.get("chain").or_else(|| obj.get("name")).and_then(Value::as_str).unwrap_or("?");
    let mut text = cmd.to_string();
    if text.len() > 300 {
        text.truncate(300);
        text.push('…');
    }
    Some(format!("command {hi} of {}: {verb} {what} in {name}: {text}", cmds.len()))
}

fn nft(prefix: &[String], doc: &Value, check_only: bool) -> Result<(), FirewallError> {
    let mut argv: Vec<String> = prefix.to_vec();
    argv.push("nft".into());
    if check_only {
        argv.push("-c".into());
    }
    argv.extend(["-j".into(), "-f".into(), "-".into()]);
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::Spawn)?;
    let body = doc.to_string();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes()).map_err(FirewallError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(FirewallError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // nft repeats the whole JSON command under its error line; the error lines say what
        // it refused and why.
        let lines: Vec<&str> =
            stderr.lines().filter(|l| l.starts_with("Error") || l.contains("rror:")).take(5).collect();
        let stderr = if lines.is_empty() { stderr.trim().to_string() } else { lines.join("; ") };
        return Err(FirewallError::Refused { stderr });
    }
    Ok(())
}

/// Strict reverse-path filtering on an instance's host-side veth in the current namespace: a
/// packet whose source would not be routed back out of the same interface is dropped by the
/// kernel, under the firewall's own source check.
pub fn set_rp_filter(interface: &str) -> Result<(), NetError> {
    set_rp_filter_with(&[], interface)
}

/// [`set_rp_filter`] inside `netns`.
pub fn set_rp_filter_in(netns: &str, interface: &str) -> Result<(), NetError> {
    check_name(netns)?;
    set_rp_filter_with(&crate::exec_prefix(netns), interface)
}

fn set_rp_filter_with(prefix: &[String], interface: &str) -> Result<(), NetError> {
    check_name(interface)?;
    let mut argv: Vec<String> = prefix.to_vec();
    argv.extend([
        "sysctl".into(),
        "-q".into(),
        "-w".into(),
        format!("net.ipv4.conf.{interface}.rp_filter=1"),
    ]);
    let joined = argv.join(" ");
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| NetError::Spawn { args: joined.clone(), source: e })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use enjin_model::kinds::PortRange;
    use uuid::Uuid;

    fn inst(iface: &str, addr: &str, port: Option<u16>) -> FirewallInstance {
        FirewallInstance {
            node: Uuid::new_v4(),
            account: Uuid::new_v4(),
            address: addr.parse().expect("ip"),
            interface: iface.into(),
            port,
            ingress: vec![],
            egress: vec![],
        }
    }

    fn base() -> HostFirewall {
        HostFirewall {
            edge: vec!["10.250.0.1".parse().expect("ip")],
            dns: vec!["10.250.0.53:53".parse().expect("sa")],
            protected: vec!["10.240.0.0/16".parse().expect("cidr"), "fd00:1::/64".parse().expect("cidr")],
            instance_network: Some("10.251.0.0/16".parse().expect("cidr")),
            instances: vec![],
        }
    }

    fn cmds(doc: &Value) -> &Vec<Value> {
        doc["nftables"].as_array().expect("nftables array")
    }

    fn rules_of(doc: &Value, chain: &str) -> Vec<Value> {
        cmds(doc)
            .iter()
            .filter_map(|c| c.get("add").and_then(|a| a.get("rule")))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn recreates_only_its_own_table_in_one_document() {
        let doc = compile(&base());
        let c = cmds(&doc);
        assert_eq!(c[0], json!({"add": {"table": {"family": "inet", "name": "enjin"}}}));
        assert_eq!(c[1], json!({"delete": {"table": {"family": "inet", "name": "enjin"}}}));
        assert_eq!(c[2], json!({"add": {"table": {"family": "inet", "name": "enjin"}}}));
        for cmd in c {
            let body = cmd.as_object().and_then(|o| o.values().next()).expect("command");
            let (what, obj) = body.as_object().and_then(|o| o.iter().next()).expect("object");
            let table = if what == "table" { &obj["name"] } else { &obj["table"] };
            assert_eq!(table, "enjin", "{cmd}");
            assert_eq!(obj["family"], "inet", "{cmd}");
            assert!(cmd.get("flush").is_none(), "never flushes the ruleset: {cmd}");
        }
        // Both hooks, policy accept: traffic that involves no instance is not judged.
        for hook in ["forward", "input"] {
            let chain = c
                .iter()
                .find(|x| x["add"]["chain"]["hook"] == hook)
                .unwrap_or_else(|| panic!("no {hook} chain"));
            assert_eq!(chain["add"]["chain"]["policy"], "accept");
        }
    }

    #[test]
    fn forward_guards_first_then_established_then_instance_chains_then_drops_the_prefix() {
        let mut fw = base();
        fw.instances = vec![inst("eji-aaaa", "10.251.1.2", Some(8080)), inst("eji-bbbb", "10.251.1.3", None)];
        let doc = compile(&fw);
        let fwd = rules_of(&doc, "forward");
        assert_eq!(fwd.len(), 6, "{fwd:?}");
        assert_eq!(fwd[0][0]["vmap"]["key"], meta("iifname"));
        assert_eq!(
            fwd[0][0]["vmap"]["data"]["set"][1],
            json!(["eji-bbbb", {"jump": {"target": "guard-eji-bbbb"}}])
        );
        assert_eq!(fwd[1], json!([ct_established(), {"accept": null}]));
        assert_eq!(fwd[2][0]["vmap"]["data"]["set"][0][1]["jump"]["target"], "out-eji-aaaa");
        assert_eq!(fwd[3][0]["vmap"]["key"], meta("oifname"));
        assert_eq!(fwd[3][0]["vmap"]["data"]["set"][0][1]["jump"]["target"], "in-eji-aaaa");
        assert_eq!(fwd[4], json!([eq(meta("iifname"), json!("eji-*")), {"drop": null}]));
        assert_eq!(fwd[5], json!([eq(meta("oifname"), json!("eji-*")), {"drop": null}]));

        // The guard drops any other source and the other family.
        let guard = rules_of(&doc, "guard-eji-aaaa");
        assert_eq!(guard[0], json!([ne(payload("ip", "saddr"), json!("10.251.1.2")), {"drop": null}]));
        assert_eq!(guard[1], json!([eq(meta("nfproto"), json!("ipv6")), {"drop": null}]));
    }

    #[test]
    fn egress_orders_dns_protected_instance_network_rules_and_drop() {
        let mut fw = base();
        let mut a = inst("eji-aaaa", "10.251.1.2", None);
        a.egress = vec![FirewallRule {
            action: Action::Allow,
            protocol: Protocol::Tcp,
            ports: Some(PortRange { first: 443, last: 443 }),
            peers: vec!["0.0.0.0/0".parse().expect("cidr")],
            rule: None,
        }];
        fw.instances = vec![a];
        let doc = compile(&fw);
        let out = rules_of(&doc, "out-eji-aaaa");
        let verdicts: Vec<&str> = out
            .iter()
            .map(|r| {
                r.as_array()
                    .and_then(|a| a.last())
                    .and_then(|v| v.as_object())
                    .and_then(|o| o.keys().next())
                    .map(String::as_str)
                    .unwrap_or("?")
            })
            .collect();
        // dns udp, dns tcp, protected v4, protected v6, instance network, the rule, default.
        assert_eq!(verdicts, ["accept", "accept", "drop", "drop", "return", "accept", "drop"]);
        assert_eq!(out[0][1], eq(payload("udp", "dport"), json!(53)));
        assert_eq!(
            out[2][0],
            eq(payload("ip", "daddr"), json!({"prefix": {"addr": "10.240.0.0", "len": 16}}))
        );
        assert_eq!(
            out[3][0],
            eq(payload("ip6", "daddr"), json!({"prefix": {"addr": "fd00:1::", "len": 64}}))
        );
        assert_eq!(out[5][1], eq(payload("tcp", "dport"), json!(443)));
        assert_eq!(out[6], json!([{"drop": null}]));
    }

    #[test]
    fn ingress_admits_the_edge_to_the_port_only_then_rules_in_order() {
        let mut fw = base();
        fw.edge.push("fd00:e::1".parse().expect("ip"));
        let mut a = inst("eji-aaaa", "10.251.1.2", Some(8080));
        let peer: Cidr = "10.251.2.7/32".parse().expect("cidr");
        a.ingress = vec![
            FirewallRule {
                action: Action::Deny,
                protocol: Protocol::Udp,
                ports: None,
                peers: vec![peer, "fd00:2::/64".parse().expect("cidr")],
                rule: None,
            },
            FirewallRule {
                action: Action::Allow,
                protocol: Protocol::Tcp,
                ports: Some(PortRange { first: 9000, last: 9010 }),
                peers: vec![peer],
                rule: None,
            },
        ];
        fw.instances = vec![a];
        let doc = compile(&fw);
        let inn = rules_of(&doc, "in-eji-aaaa");
        assert_eq!(
            inn[0],
            json!([eq(payload("ip", "saddr"), json!("10.250.0.1")), eq(payload("tcp", "dport"), json!(8080)), {"accept": null}])
        );
        assert_eq!(inn[1][0], eq(payload("ip6", "saddr"), json!("fd00:e::1")));
        // The deny splits by family, before the allow.
        assert_eq!(
            inn[2],
            json!([eq(payload("ip", "saddr"), json!("10.251.2.7")), eq(meta("l4proto"), json!("udp")), {"drop": null}])
        );
        assert_eq!(
            inn[3][0],
            eq(payload("ip6", "saddr"), json!({"prefix": {"addr": "fd00:2::", "len": 64}}))
        );
        assert_eq!(inn[4][1], eq(payload("tcp", "dport"), json!({"range": [9000, 9010]})));
        assert_eq!(inn[5], json!([{"drop": null}]));

        // Without a port the edge gets nothing.
        let mut fw = base();
        fw.instances = vec![inst("eji-bbbb", "10.251.1.3", None)];
        let doc = compile(&fw);
        assert_eq!(rules_of(&doc, "in-eji-bbbb"), vec![json!([{"drop": null}])]);
    }

    #[test]
    fn input_admits_only_dns_from_instances() {
        let mut fw = base();
        fw.instances = vec![inst("eji-aaaa", "10.251.1.2", None)];
        let doc = compile(&fw);
        let input = rules_of(&doc, "input");
        assert_eq!(input.last().expect("rule")[0], eq(meta("iifname"), json!("eji-*")));
        let host = rules_of(&doc, "host-from-instance");
        assert_eq!(host.len(), 4);
        assert_eq!(host[0][0], eq(payload("ip", "daddr"), json!("10.250.0.53")));
        assert_eq!(host[2], json!([neighbour_discovery(), {"accept": null}]));
        assert_eq!(host[3], json!([{"drop": null}]));
    }

    #[test]
    fn an_ipv6_instance_keeps_neighbour_discovery_and_nothing_else_of_other_sources() {
        let mut fw = base();
        fw.instances = vec![inst("eji-cccc", "fd00:251::5", None)];
        let doc = compile(&fw);
        let guard = rules_of(&doc, "guard-eji-cccc");
        assert_eq!(
            guard[0],
            json!([eq(payload("ip6", "saddr"), json!({"prefix": {"addr": "fe80::", "len": 10}})), neighbour_discovery(), {"return": null}])
        );
        assert_eq!(guard[1], json!([ne(payload("ip6", "saddr"), json!("fd00:251::5")), {"drop": null}]));
        assert_eq!(guard[2], json!([eq(meta("nfproto"), json!("ipv4")), {"drop": null}]));
    }

    #[test]
    fn an_empty_firewall_still_drops_unknown_instance_interfaces() {
        let doc = compile(&HostFirewall::default());
        let fwd = rules_of(&doc, "forward");
        assert_eq!(fwd.len(), 3);
        assert_eq!(fwd[1][1], json!({"drop": null}));
    }

    #[test]
    fn bad_interface_names_are_refused_before_nft() {
        let mut fw = base();
        fw.instances = vec![inst("eji-; flush ruleset", "10.251.1.2", None)];
        let e = check(&fw).expect_err("refused");
        assert!(e.to_string().contains("invalid interface name"), "{e}");
        // Another prefix would escape the catch-all drop of unknown instance interfaces.
        fw.instances = vec![inst("ejv-aaaa", "10.251.1.2", None)];
        assert!(matches!(check(&fw), Err(FirewallError::BadInterface { .. })));
        fw.instances = vec![inst("eji-aaaa", "10.251.1.2", None), inst("eji-aaaa", "10.251.1.3", None)];
        let e = check(&fw).expect_err("refused");
        assert!(e.to_string().contains("both have interface eji-aaaa"), "{e}");
    }
}
