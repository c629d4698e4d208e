//! Which access rules apply to which instance, resolved to addresses: the pure half of the
//! instance firewall. [`host_firewall`] computes what one host's agent compiles into nftables
//! (`enjin_net::firewall`); [`effective`] is the same answer for one instance, for
//! `GET /v1/nodes/{uuid}/effective-rules` and `enjin access-rule effective`.
//!
//! Rules:
//! - a rule applies only to instances of its own account (the rule's `meta.account`), and
//!   only when its rule set exists and is on the instance network;
//! - `target` (absent: every instance of the account) picks the instances it is for;
//! - `peer_app` resolves to the addresses of that app's (and process type's) instances in the
//!   same account, on any host; a selector that matches no instance makes the rule match
//!   nothing (it is left out), never "anywhere";
//! - order: priority, then deny before allow, then the rule's uuid (stable output).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use enjin_model::api::{
    EffectiveRule, EffectiveRules, FirewallInstance, FirewallRule, HostFirewall, ListQuery,
};
use enjin_model::kinds::{
    AccessRuleSetSpec, AccessRuleSpec, Action, Cidr, Direction, NetworkInterfaceSpec, NetworkSpec, NodeSpec,
    Peer,
};
use enjin_model::{Object, Ring};
use uuid::Uuid;

use crate::platform::{APP_LABEL, PROCESS_LABEL};
use crate::registry::{Registry, RegistryError};

/// The label of the cloud-wide ring 2 network every instance has an address on.
pub const INSTANCE_NETWORK_LABEL: &str = crate::platform::network::INSTANCES;

/// What every host's firewall shares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirewallBase {
    /// The instance network's object: only rule sets on it count (`None`: every rule set).
    pub network: Option<Uuid>,
    /// The addresses the routers connect from: admitted to every instance's `port`.
    pub edge: Vec<IpAddr>,
    /// The DNS servers every instance may query (UDP and TCP).
    pub dns: Vec<SocketAddr>,
    /// Ranges no instance may connect to, whatever a rule says (the hosts network of rings 0
    /// and 1, and loopback).
    pub protected: Vec<Cidr>,
    /// The instance network's range; `None` when there is no instance network.
    pub instance_network: Option<Cidr>,
}

/// One instance on the instance network, anywhere in the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEndpoint {
    /// The instance's node.
    pub node: Uuid,
    /// The host that runs it (the node's parent; the nil uuid if it has none).
    pub host: Uuid,
    /// The account the instance belongs to: only that account's rules apply to it.
    pub account: Uuid,
    /// The app it runs (its app label), which `peer_app` selectors match.
    pub app: String,
    /// Its process type (its process label); empty when the node has none.
    pub process: String,
    /// Its address on the instance network (the first of its interface's).
    pub address: IpAddr,
    /// The port it serves, which the edge may reach; `None` if it serves none.
    pub port: Option<u16>,
    /// The host-side veth, whose name is derived from the node's uuid.
    pub interface: String,
}

/// The firewall of `host`: its instances, each with its rules.
pub fn host_firewall(
    host: Uuid,
    base: FirewallBase,
    instances: &[InstanceEndpoint],
    rules: &[Object<AccessRuleSpec>],
    rule_sets: &[Object<AccessRuleSetSpec>],
) -> HostFirewall {
    let rules = ordered(base.network, rules, rule_sets);
    let instances = instances
        .iter()
        .filter(|i| i.host == host)
        .map(|i| firewall_instance(i, &applied(i, instances, &rules)))
        .collect();
    HostFirewall {
        edge: base.edge,
        dns: base.dns,
        protected: base.protected,
        instance_network: base.instance_network,
        instances,
    }
}

/// One instance's rules, as its host's firewall has them; `None` if `node` is not among
/// `instances`.
pub fn effective(
    node: Uuid,
    network: Option<Uuid>,
    instances: &[InstanceEndpoint],
    rules: &[Object<AccessRuleSpec>],
    rule_sets: &[Object<AccessRuleSetSpec>],
) -> Option<FirewallInstance> {
    let i = instances.iter().find(|i| i.node == node)?;
    Some(firewall_instance(i, &applied(i, instances, &ordered(network, rules, rule_sets))))
}

/// [`effective`] with the rules' names and how they named their other end, for people.
pub fn effective_rules(
    node: Uuid,
    network: Option<Uuid>,
    instances: &[InstanceEndpoint],
    rules: &[Object<AccessRuleSpec>],
    rule_sets: &[Object<AccessRuleSetSpec>],
) -> Option<EffectiveRules> {
    let i = instances.iter().find(|i| i.node == node)?;
    let applied = applied(i, instances, &ordered(network, rules, rule_sets));
    let described = |dir: Direction| {
        applied
            .iter()
            .filter(|(r, _)| r.spec.direction == dir)
            .map(|(r, peers)| EffectiveRule {
                rule: r.meta.uuid,
                label: r.meta.label.clone(),
                action: r.spec.action,
                protocol: r.spec.protocol,
                ports: r.spec.ports,
                priority: r.spec.priority,
                peer: match r.spec.peer_of() {
                    Peer::Anywhere => "anywhere".into(),
                    Peer::Range(c) => c.to_string(),
                    Peer::App(a) => a.to_string(),
                },
                peers: peers.clone(),
            })
            .collect()
    };
    Some(EffectiveRules {
        node: i.node,
        account: i.account,
        app: i.app.clone(),
        process: i.process.clone(),
        address: i.address,
        port: i.port,
        ingress: described(Direction::Ingress),
        egress: described(Direction::Egress),
    })
}

/// The rules whose rule set is on the network, in evaluation order.
fn ordered<'a>(
    network: Option<Uuid>,
    rules: &'a [Object<AccessRuleSpec>],
    rule_sets: &[Object<AccessRuleSetSpec>],
) -> Vec<&'a Object<AccessRuleSpec>> {
    let sets: BTreeMap<Uuid, &Object<AccessRuleSetSpec>> =
        rule_sets.iter().map(|s| (s.meta.uuid, s)).collect();
    let mut out: Vec<&Object<AccessRuleSpec>> = rules
        .iter()
        .filter(|r| sets.get(&r.spec.rule_set).is_some_and(|s| network.is_none_or(|n| s.spec.network == n)))
        .collect();
    out.sort_by_key(|r| (r.spec.priority, r.spec.action == Action::Allow, r.meta.uuid));
    out
}

/// The rules that apply to `i`, each with its other end's addresses (empty: anywhere).
fn applied<'a>(
    i: &InstanceEndpoint,
    instances: &[InstanceEndpoint],
    rules: &[&'a Object<AccessRuleSpec>],
) -> Vec<(&'a Object<AccessRuleSpec>, Vec<Cidr>)> {
    rules
        .iter()
        .filter(|r| r.meta.account == i.account)
        .filter(|r| r.spec.target.as_ref().is_none_or(|t| t.matches(&i.app, &i.process)))
        .filter_map(|r| {
            let peers = match r.spec.peer_of() {
                Peer::Anywhere => Vec::new(),
                Peer::Range(c) => vec![*c],
                Peer::App(sel) => {
                    let mut addrs: Vec<Cidr> = instances
                        .iter()
                        .filter(|p| p.account == r.meta.account && sel.matches(&p.app, &p.process))
                        .map(|p| host_cidr(p.address))
                        .collect();
                    addrs.sort_by_key(|c| (c.addr, c.prefix));
                    addrs.dedup();
                    if addrs.is_empty() {
                        return None;
                    }
                    addrs
                }
            };
            Some((*r, peers))
        })
        .collect()
}

fn firewall_instance(
    i: &InstanceEndpoint,
    applied: &[(&Object<AccessRuleSpec>, Vec<Cidr>)],
) -> FirewallInstance {
    let compiled = |dir: Direction| {
        applied
            .iter()
            .filter(|(r, _)| r.spec.direction == dir)
            .map(|(r, peers)| FirewallRule {
                action: r.spec.action,
                protocol: r.spec.protocol,
                ports: r.spec.ports,
                peers: peers.clone(),
                rule: Some(r.meta.uuid),
            })
            .collect()
    };
    FirewallInstance {
        node: i.node,
        account: i.account,
        address: i.address,
        interface: i.interface.clone(),
        port: i.port,
        ingress: compiled(Direction::Ingress),
        egress: compiled(Direction::Egress),
    }
}

fn host_cidr(a: IpAddr) -> Cidr {
    Cidr { addr: a, prefix: if a.is_ipv4() { 32 } else { 128 } }
}

/// The instance network: the ring 2 network labelled [`INSTANCE_NETWORK_LABEL`].
pub async fn instance_network(registry: &Registry) -> Result<Option<Object<NetworkSpec>>, RegistryError> {
    let q = ListQuery {
        ring: Some(Ring::PLATFORM),
        label: Some(INSTANCE_NETWORK_LABEL.into()),
        ..ListQuery::default()
    };
    let (mut found, _) = registry.list::<NetworkSpec>(&q).await?;
    // Only the operator's network counts: a tenant cannot name a network into this role.
    let system = registry.system_account().await.ok();
    found.retain(|n| system.is_none_or(|s| n.meta.account == s));
    Ok(found.into_iter().next())
}

/// Every instance on the instance network: ring 2 nodes with an app label and an interface on
/// that network (its first address), with the host-side veth named from the node's uuid.
pub async fn instance_endpoints(registry: &Registry) -> Result<Vec<InstanceEndpoint>, RegistryError> {
    let Some(network) = instance_network(registry).await? else { return Ok(Vec::new()) };
    let q = ListQuery { ring: Some(Ring::PLATFORM), ..ListQuery::default() };
    let (interfaces, _) = registry.list::<NetworkInterfaceSpec>(&q).await?;
    let addresses: BTreeMap<Uuid, IpAddr> = interfaces
        .iter()
        .filter(|i| i.spec.network == network.meta.uuid)
        .filter_map(|i| i.spec.addresses.first().map(|a| (i.spec.node, *a)))
        .collect();
    let (nodes, _) = registry.list::<NodeSpec>(&q).await?;
    Ok(nodes
        .iter()
        .filter_map(|n| {
            let app = n.meta.labels.get(APP_LABEL)?;
            let address = addresses.get(&n.meta.uuid)?;
            Some(InstanceEndpoint {
                node: n.meta.uuid,
                host: n.spec.parent.unwrap_or_default(),
                account: n.meta.account,
                app: app.clone(),
                process: n.meta.labels.get(PROCESS_LABEL).cloned().unwrap_or_default(),
                address: *address,
                port: n.spec.run.as_ref().and_then(|r| r.port),
                interface: enjin_net::instance_interface(n.meta.uuid),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use enjin_model::kinds::{AppSelector, Protocol};
    use enjin_model::{Kind, ObjectMeta};

    use super::*;

    fn obj<S>(kind: Kind, account: Uuid, label: &str, spec: S) -> Object<S> {
        Object {
            meta: ObjectMeta {
                uuid: Uuid::new_v4(),
                kind,
                ring: Ring::PLATFORM,
                account,
                label: Some(label.into()),
                labels: BTreeMap::new(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
                revision: 1,
            },
            spec,
        }
    }

    struct World {
        network: Uuid,
        set_a: Object<AccessRuleSetSpec>,
        set_b: Object<AccessRuleSetSpec>,
        acct_a: Uuid,
        acct_b: Uuid,
        host1: Uuid,
        instances: Vec<InstanceEndpoint>,
    }

    fn endpoint(host: Uuid, account: Uuid, app: &str, process: &str, addr: &str) -> InstanceEndpoint {
        let node = Uuid::new_v4();
        InstanceEndpoint {
            node,
            host,
            account,
            app: app.into(),
            process: process.into(),
            address: addr.parse().expect("ip"),
            port: Some(8000),
            interface: enjin_net::instance_interface(node),
        }
    }

    fn world() -> World {
        let network = Uuid::new_v4();
        let (acct_a, acct_b) = (Uuid::new_v4(), Uuid::new_v4());
        let (host1, host2) = (Uuid::new_v4(), Uuid::new_v4());
        let set = |account| {
            obj(
                Kind::AccessRuleSet,
                account,
                "default",
                AccessRuleSetSpec { network, description: String::new() },
            )
        };
        World {
            network,
            set_a: set(acct_a),
            set_b: set(acct_b),
            acct_a,
            acct_b,
            host1,
            instances: vec![
                endpoint(host1, acct_a, "shop", "web", "10.251.1.2"),
                endpoint(host1, acct_a, "shop", "worker", "10.251.1.3"),
                endpoint(host2, acct_a, "shop", "web", "10.251.2.2"),
                endpoint(host2, acct_a, "db", "main", "10.251.2.3"),
                endpoint(host1, acct_b, "shop", "web", "10.251.1.9"),
            ],
        }
    }

    fn rule(
        w: &World,
        account: Uuid,
        set: Uuid,
        f: impl FnOnce(&mut AccessRuleSpec),
    ) -> Object<AccessRuleSpec> {
        let _ = w;
        let mut spec = AccessRuleSpec {
            rule_set: set,
            action: Action::Allow,
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            ports: Some("5432".parse().expect("ports")),
            peer: None,
            peer_app: None,
            target: None,
            priority: 1000,
        };
        f(&mut spec);
        obj(Kind::AccessRule, account, "r", spec)
    }

    fn sel(s: &str) -> Option<AppSelector> {
        Some(s.parse().expect("selector"))
    }

    fn base(w: &World) -> FirewallBase {
        FirewallBase { network: Some(w.network), ..FirewallBase::default() }
    }

    #[test]
    fn app_selectors_resolve_to_the_accounts_instances_on_every_host() {
        let w = world();
        let db_from_web = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| {
            r.target = sel("db");
            r.peer_app = sel("shop:web");
        });
        let db = w.instances[3].node;
        let fi = effective(db, Some(w.network), &w.instances, &[db_from_web], std::slice::from_ref(&w.set_a))
            .expect("db");
        assert_eq!(fi.ingress.len(), 1);
        let peers: Vec<String> = fi.ingress[0].peers.iter().map(ToString::to_string).collect();
        // Both hosts' web instances of account a, not b's "shop:web" nor a's worker.
        assert_eq!(peers, ["10.251.1.2/32", "10.251.2.2/32"]);
        // The rule targets db only.
        let web = w.instances[0].node;
        let db_from_web = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| {
            r.target = sel("db");
            r.peer_app = sel("shop:web");
        });
        let fi =
            effective(web, Some(w.network), &w.instances, &[db_from_web], std::slice::from_ref(&w.set_a))
                .expect("web");
        assert!(fi.ingress.is_empty());
    }

    #[test]
    fn rules_of_another_account_never_apply_even_in_a_shared_rule_set() {
        let w = world();
        // Account b writes a rule without a target into a's rule set and into its own.
        let into_a =
            rule(&w, w.acct_b, w.set_a.meta.uuid, |r| r.peer = Some("0.0.0.0/0".parse().expect("cidr")));
        let into_b =
            rule(&w, w.acct_b, w.set_b.meta.uuid, |r| r.peer = Some("0.0.0.0/0".parse().expect("cidr")));
        let fw = host_firewall(
            w.host1,
            base(&w),
            &w.instances,
            &[into_a, into_b],
            &[w.set_a.clone(), w.set_b.clone()],
        );
        assert_eq!(fw.instances.len(), 3, "the host's three instances, no others");
        for i in &fw.instances {
            if i.account == w.acct_a {
                assert!(i.ingress.is_empty(), "b's rules reach a's instance {}", i.address);
            } else {
                assert_eq!(i.ingress.len(), 2, "b's own instance gets both of b's rules");
            }
        }
    }

    #[test]
    fn a_selector_of_another_accounts_app_or_no_instances_matches_nothing_not_anywhere() {
        let w = world();
        // Account b names "db", which only account a runs: it must not resolve to a's db.
        let r = rule(&w, w.acct_b, w.set_b.meta.uuid, |r| r.peer_app = sel("db"));
        let bweb = w.instances[4].node;
        let fi = effective(bweb, Some(w.network), &w.instances, &[r], std::slice::from_ref(&w.set_b))
            .expect("b web");
        assert!(fi.ingress.is_empty(), "an empty selector must not become 'anywhere': {:?}", fi.ingress);
    }

    #[test]
    fn order_is_priority_then_deny_first_and_other_networks_do_not_count() {
        let w = world();
        let allow = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| r.priority = 100);
        let deny = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| {
            r.priority = 100;
            r.action = Action::Deny;
            r.ports = Some("5433".parse().expect("ports"));
        });
        let first = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| r.priority = 10);
        let egress = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| r.direction = Direction::Egress);
        let elsewhere_set = obj(
            Kind::AccessRuleSet,
            w.acct_a,
            "other",
            AccessRuleSetSpec { network: Uuid::new_v4(), description: String::new() },
        );
        let elsewhere = rule(&w, w.acct_a, elsewhere_set.meta.uuid, |_| {});
        let orphan = rule(&w, w.acct_a, Uuid::new_v4(), |_| {});
        let want = [first.meta.uuid, deny.meta.uuid, allow.meta.uuid];
        let node = w.instances[0].node;
        let fi = effective(
            node,
            Some(w.network),
            &w.instances,
            &[allow, egress.clone(), deny, elsewhere, orphan, first],
            &[w.set_a.clone(), elsewhere_set],
        )
        .expect("instance");
        let got: Vec<Uuid> = fi.ingress.iter().filter_map(|r| r.rule).collect();
        assert_eq!(got, want);
        assert_eq!(fi.egress.len(), 1);
        assert_eq!(fi.egress[0].rule, Some(egress.meta.uuid));
        assert_eq!(fi.port, Some(8000));
    }

    #[test]
    fn effective_rules_describe_the_peer_as_written() {
        let w = world();
        let r = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| r.peer_app = sel("shop:worker"));
        let anywhere = rule(&w, w.acct_a, w.set_a.meta.uuid, |r| {
            r.direction = Direction::Egress;
            r.ports = Some("443".parse().expect("ports"));
        });
        let node = w.instances[3].node;
        let e = effective_rules(
            node,
            Some(w.network),
            &w.instances,
            &[r, anywhere],
            std::slice::from_ref(&w.set_a),
        )
        .expect("instance");
        assert_eq!((e.app.as_str(), e.process.as_str()), ("db", "main"));
        assert_eq!(e.ingress[0].peer, "shop:worker");
        assert_eq!(e.ingress[0].peers, vec!["10.251.1.3/32".parse::<Cidr>().expect("cidr")]);
        assert_eq!(e.egress[0].peer, "anywhere");
        assert!(e.egress[0].peers.is_empty());
        assert!(effective_rules(Uuid::new_v4(), None, &w.instances, &[], &[]).is_none());
    }
}
