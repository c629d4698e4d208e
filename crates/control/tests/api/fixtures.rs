//! Valid request bodies for every kind, and the prerequisites each needs.

use serde_json::{Value, json};

use crate::harness::TestServer;

/// The 12 kinds as `(singular, plural)`, in the order of the API document.
pub const KINDS: [(&str, &str); 13] = [
    ("account", "accounts"),
    ("role", "roles"),
    ("membership", "memberships"),
    ("network", "networks"),
    ("network-interface", "network-interfaces"),
    ("access-rule-set", "access-rule-sets"),
    ("access-rule", "access-rules"),
    ("compartment", "compartments"),
    ("tier", "tiers"),
    ("node", "nodes"),
    ("node-observation", "node-observations"),
    ("task", "tasks"),
    ("release", "releases"),
];

pub fn account(label: &str) -> Value {
    json!({"ring": 0, "label": label, "spec": {"description": "a tenant"}})
}

pub fn role(label: &str) -> Value {
    json!({"ring": 0, "label": label, "spec": {"permissions": [{"verbs": ["get"], "resources": ["node"]}]}})
}

pub fn membership(principal: &str, account: &str, role: &str) -> Value {
    json!({"ring": 0, "spec": {"principal": principal, "account": account, "role": role}})
}

/// A ring-0 machine: no parent, no strategy.
pub fn machine(label: &str) -> Value {
    json!({"ring": 0, "label": label, "spec": {}})
}

/// A node of ring 1 (strategy `netns`) or 2 (strategy `unix-user`) under `parent`.
pub fn node(ring: u8, label: &str, parent: &str) -> Value {
    let strategy = if ring == 1 { "netns" } else { "unix-user" };
    json!({"ring": ring, "label": label, "spec": {"parent": parent, "strategy": strategy}})
}

/// A compartment; ring 2 ones must be of type `app-environment`.
pub fn compartment(ring: u8, label: &str, kind: &str, parents: &[&str]) -> Value {
    json!({"ring": ring, "label": label, "spec": {"type": kind, "parents": parents}})
}

pub fn tier(ring: u8, label: &str) -> Value {
    json!({"ring": ring, "label": label, "spec": {"description": format!("the {label} tier")}})
}

pub fn network(ring: u8, label: &str, cidr: &str) -> Value {
    json!({"ring": ring, "label": label, "spec": {"strategy": "local", "cidr": cidr, "compartments": []}})
}

pub fn interface(ring: u8, network: &str, node: &str, addresses: &[&str]) -> Value {
    json!({"ring": ring, "spec": {"network": network, "node": node, "addresses": addresses}})
}

pub fn rule_set(ring: u8, label: &str, network: &str) -> Value {
    json!({"ring": ring, "label": label, "spec": {"network": network}})
}

pub fn rule(ring: u8, rule_set: &str) -> Value {
    json!({"ring": ring, "spec": {
        "rule_set": rule_set, "action": "allow", "direction": "ingress", "protocol": "tcp", "ports": "80"
    }})
}

pub fn observation(ring: u8, node: &str) -> Value {
    json!({"ring": ring, "spec": {
        "node": node, "strategy": "process", "state": "running", "observed_at": "2026-01-01T00:00:00Z"
    }})
}

pub fn task(label: &str) -> Value {
    json!({"ring": 0, "label": label, "spec": {"type": "deploy", "state": "pending", "progress": {"done": 0, "total": 3}}})
}

/// One kind's CRUD case: a valid create body (prerequisites already created) and a different
/// valid spec to update it to.
#[derive(Debug)]
pub struct Case {
    pub singular: &'static str,
    pub create: Value,
    pub new_spec: Value,
}

/// Build the case for `plural`, creating what its object refers to.
pub async fn case(s: &TestServer, plural: &'static str) -> Case {
    let singular = KINDS.iter().find(|(_, p)| *p == plural).map(|(k, _)| *k).expect("a known kind");
    let (create, new_spec) = match plural {
        "accounts" => (account("acme"), json!({"description": "a bigger tenant"})),
        "roles" => (
            role("node-reader"),
            json!({"permissions": [{"verbs": ["get", "list"], "resources": ["node", "tier"]}], "description": "reads"}),
        ),
        "memberships" => {
            let account = s.create_id("accounts", account("acme")).await;
            let role = s.create_id("roles", role("node-reader")).await;
            let create = membership("carol", &account, &role);
            (create, json!({"principal": "dave", "account": account, "role": role}))
        }
        "networks" => {
            let region = s.create_id("compartments", compartment(0, "eu", "region", &[])).await;
            (
                network(1, "backplane", "10.80.0.0/24"),
                json!({"strategy": "local", "cidr": "10.81.0.0/24", "compartments": [region]}),
            )
        }
        "network-interfaces" => {
            let m1 = s.create_id("nodes", machine("m1")).await;
            let h1 = s.create_id("nodes", node(1, "h1", &m1)).await;
            let net = s.create_id("networks", network(1, "backplane", "10.80.0.0/24")).await;
            let mut create = interface(1, &net, &h1, &["10.80.0.5"]);
            create["spec"]["mac"] = json!("02:00:00:00:00:01");
            (create, json!({"network": net, "node": h1, "addresses": ["10.80.0.6", "10.80.0.7"]}))
        }
        "access-rule-sets" => {
            let net = s.create_id("networks", network(1, "backplane", "10.80.0.0/24")).await;
            (rule_set(1, "web-in", &net), json!({"network": net, "description": "web traffic"}))
        }
        "access-rules" => {
            let net = s.create_id("networks", network(1, "backplane", "10.80.0.0/24")).await;
            let set = s.create_id("access-rule-sets", rule_set(1, "web-in", &net)).await;
            let new_spec = json!({
                "rule_set": set, "action": "deny", "direction": "egress", "protocol": "udp",
                "ports": "8000-8100", "peer": "192.0.2.0/24", "priority": 10
            });
            (rule(1, &set), new_spec)
        }
        "compartments" => {
            let eu = s.create_id("compartments", compartment(0, "eu", "region", &[])).await;
            let us = s.create_id("compartments", compartment(0, "us", "region", &[])).await;
            (compartment(0, "dc1", "datacenter", &[&eu]), json!({"type": "datacenter", "parents": [us, eu]}))
        }
        "tiers" => {
            (tier(2, "web"), json!({"description": "web processes", "hooks": {"promote": "/bin/true"}}))
        }
        "nodes" => {
            let m1 = s.create_id("nodes", machine("m1")).await;
            let h1 = s.create_id("nodes", node(1, "h1", &m1)).await;
            let new_spec = json!({
                "parent": h1, "strategy": "unix-user", "desired_state": "stopped",
                "resources": {"cpu_millis": 500, "memory_bytes": 1_073_741_824u64}
            });
            (node(2, "app-1", &h1), new_spec)
        }
        "node-observations" => {
            let m1 = s.create_id("nodes", machine("m1")).await;
            let new_spec = json!({
                "node": m1, "strategy": "heartbeat", "state": "exited",
                "observed_at": "2026-01-01T00:01:00Z", "message": "exit status 0"
            });
            (observation(0, &m1), new_spec)
        }
        "tasks" => (
            task("deploy-1"),
            json!({"type": "deploy", "state": "running", "progress": {"done": 1, "total": 3}}),
        ),
        other => panic!("no CRUD case for {other}"),
    };
    Case { singular, create, new_spec }
}

/// Asserts that every field of `sent` appears in `stored` with the same value (the server may
/// add defaults).
#[track_caller]
pub fn assert_spec_holds(sent: &Value, stored: &Value) {
    let sent = sent.as_object().unwrap_or_else(|| panic!("spec is an object: {sent}"));
    for (key, value) in sent {
        assert_eq!(stored.get(key), Some(value), "spec field {key} in {stored}");
    }
}
