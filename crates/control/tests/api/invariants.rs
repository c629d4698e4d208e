//! Every rule of the model, refused through the API with a problem document naming the field
//! at fault, and with nothing stored changed by the refused write.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fixtures::{
    account, compartment, interface, machine, membership, network, node, observation, role, rule, rule_set,
    task, tier,
};
use crate::harness::{
    Reply, Snapshot, TestServer, assert_problem, assert_problem_status, revision_of, send, uuid_of,
};

/// Sends a request that must be refused with `status`, whatever field it names, and checks
/// that nothing stored changed.
async fn refuse_status(s: &TestServer, rb: reqwest::RequestBuilder, status: u16) -> Reply {
    let before = Snapshot::take(s).await;
    let reply = send(rb).await;
    assert_problem_status(&reply, status);
    assert_eq!(Snapshot::take(s).await, before, "a refused write changed what is stored ({})", reply.body);
    reply
}

/// As [`refuse_status`], and the problem names `field`.
async fn refuse(s: &TestServer, rb: reqwest::RequestBuilder, status: u16, field: Option<&str>) -> Reply {
    let reply = refuse_status(s, rb, status).await;
    assert_problem(&reply, status, field);
    reply
}

async fn refuse_create(s: &TestServer, plural: &str, body: Value, status: u16, field: Option<&str>) -> Reply {
    refuse(s, s.request(Method::POST, &format!("/v1/{plural}")).json(&body), status, field).await
}

/// Refuses replacing `object`'s spec (label and labels kept) at its current revision.
async fn refuse_update(
    s: &TestServer,
    plural: &str,
    object: &Value,
    spec: Value,
    status: u16,
    field: Option<&str>,
) {
    let mut body = json!({"revision": object["revision"], "spec": spec});
    if let Some(label) = object.get("label") {
        body["label"] = label.clone();
    }
    let path = format!("/v1/{plural}/{}", uuid_of(object));
    refuse(s, s.request(Method::PUT, &path).json(&body), status, field).await;
}

async fn refuse_delete(s: &TestServer, plural: &str, uuid: &str) {
    let path = format!("/v1/{plural}/{uuid}");
    let reply = refuse(s, s.request(Method::DELETE, &path), 409, None).await;
    assert!(
        reply.body["detail"].as_str().is_some_and(|d| d.contains("referenced")),
        "the refusal says what still refers to it: {}",
        reply.body
    );
    s.fetch(plural, uuid).await;
}

async fn delete_ok(s: &TestServer, plural: &str, uuid: &str) {
    let reply = s.delete(&format!("/v1/{plural}/{uuid}")).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "delete {plural}/{uuid}: {}", reply.body);
}

async fn gone(s: &TestServer, plural: &str, uuid: &str) {
    assert_problem(&s.get(&format!("/v1/{plural}/{uuid}")).await, 404, None);
}

fn random() -> String {
    Uuid::new_v4().to_string()
}

fn with_spec(mut body: Value, spec: Value) -> Value {
    body["spec"] = spec;
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn node_parents_follow_the_rings() {
    let s = TestServer::start().await;
    let m1 = s.create_id("nodes", machine("m1")).await;
    let m2 = s.create_id("nodes", machine("m2")).await;
    let h1 = s.create("nodes", node(1, "h1", &m1)).await;
    let h1_id = uuid_of(&h1);
    let a1 = s.create_id("nodes", node(2, "a1", &h1_id)).await;

    // A ring-N node's parent is a ring-(N-1) node.
    refuse_create(&s, "nodes", node(1, "x", &h1_id), 422, Some("spec.parent")).await;
    refuse_create(&s, "nodes", node(1, "x", &a1), 422, Some("spec.parent")).await;
    refuse_create(&s, "nodes", node(2, "x", &m1), 422, Some("spec.parent")).await;
    refuse_create(&s, "nodes", node(2, "x", &a1), 422, Some("spec.parent")).await;
    // Rings 1 and 2 need a parent; ring 0 has none.
    let orphan = json!({"ring": 1, "label": "x", "spec": {"strategy": "netns"}});
    refuse_create(&s, "nodes", orphan, 422, Some("spec.parent")).await;
    let orphan = json!({"ring": 2, "label": "x", "spec": {"strategy": "unix-user"}});
    refuse_create(&s, "nodes", orphan, 422, Some("spec.parent")).await;
    let parented = json!({"ring": 0, "label": "x", "spec": {"parent": m1}});
    refuse_create(&s, "nodes", parented, 422, Some("spec.parent")).await;
    // The strategy must suit the ring.
    let run_by = json!({"ring": 0, "label": "x", "spec": {"strategy": "process"}});
    refuse_create(&s, "nodes", run_by, 422, Some("spec.strategy")).await;
    let wrong = json!({"ring": 1, "label": "x", "spec": {"parent": m1, "strategy": "unix-user"}});
    refuse_create(&s, "nodes", wrong, 422, Some("spec.strategy")).await;
    let none = json!({"ring": 2, "label": "x", "spec": {"parent": h1_id}});
    refuse_create(&s, "nodes", none, 422, Some("spec.strategy")).await;
    // Rings are 0 to 2.
    refuse_create(&s, "nodes", json!({"ring": 3, "label": "x", "spec": {}}), 400, Some("ring")).await;

    // The same rules hold on update: a move to another machine is fine, to a ring-1 node not.
    refuse_update(&s, "nodes", &h1, json!({"parent": a1, "strategy": "netns"}), 422, Some("spec.parent"))
        .await;
    refuse_update(&s, "nodes", &h1, json!({"parent": h1_id, "strategy": "netns"}), 422, Some("spec.parent"))
        .await;
    refuse_update(&s, "nodes", &h1, json!({"strategy": "netns"}), 422, Some("spec.parent")).await;
    let moved = s.update("nodes", &h1, json!({"parent": m2, "strategy": "netns"})).await;
    assert_eq!(moved["spec"]["parent"], json!(m2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn references_must_exist_in_the_right_ring() {
    let s = TestServer::start().await;
    let t0 = s.create_id("tiers", tier(0, "db")).await;
    let t1 = s.create_id("tiers", tier(1, "db")).await;
    let z0 = s.create_id("compartments", compartment(0, "eu", "region", &[])).await;
    let z1 = s.create_id("compartments", compartment(1, "zone-a", "zone", &[&z0])).await;
    let m1 = s.create("nodes", machine("m1")).await;
    let m1_id = uuid_of(&m1);
    let h1 = s.create_id("nodes", node(1, "h1", &m1_id)).await;

    // A node's tiers and compartment are in its own ring.
    let body = with_spec(machine("x"), json!({"tiers": [t1]}));
    refuse_create(&s, "nodes", body, 422, Some("spec.tiers[0]")).await;
    let body = with_spec(machine("x"), json!({"tiers": [t0, t1]}));
    refuse_create(&s, "nodes", body, 422, Some("spec.tiers[1]")).await;
    let body = with_spec(machine("x"), json!({"compartment": z1}));
    refuse_create(&s, "nodes", body, 422, Some("spec.compartment")).await;
    let body = with_spec(machine("x"), json!({"tiers": [t0, t0]}));
    refuse_create(&s, "nodes", body, 422, Some("spec.tiers[1]")).await;
    refuse_update(&s, "nodes", &m1, json!({"tiers": [t1]}), 422, Some("spec.tiers[0]")).await;
    refuse_update(&s, "nodes", &m1, json!({"compartment": z1}), 422, Some("spec.compartment")).await;
    let placed = s.update("nodes", &m1, json!({"tiers": [t0], "compartment": z0})).await;
    assert_eq!(placed["spec"]["tiers"], json!([t0]));

    // A reference to nothing, or to an object of another kind, is refused.
    let body = with_spec(machine("x"), json!({"tiers": [random()]}));
    refuse_create(&s, "nodes", body, 422, Some("spec.tiers[0]")).await;
    let body = with_spec(machine("x"), json!({"compartment": random()}));
    refuse_create(&s, "nodes", body, 422, Some("spec.compartment")).await;
    refuse_create(&s, "nodes", node(1, "x", &random()), 422, Some("spec.parent")).await;
    refuse_create(&s, "nodes", node(1, "x", &t0), 422, Some("spec.parent")).await;
    let sys = s.list("accounts", &[("label", "system")]).await.0;
    let sys = uuid_of(&sys[0]);
    let viewer = s.list("roles", &[("label", "viewer")]).await.0;
    let viewer = uuid_of(&viewer[0]);
    refuse_create(&s, "memberships", membership("bob", &random(), &viewer), 422, Some("spec.account")).await;
    refuse_create(&s, "memberships", membership("bob", &sys, &random()), 422, Some("spec.role")).await;
    refuse_create(&s, "memberships", membership("bob", &viewer, &sys), 422, Some("spec.account")).await;
    refuse_create(&s, "node-observations", observation(0, &random()), 422, Some("spec.node")).await;
    refuse_create(&s, "network-interfaces", interface(1, &random(), &h1, &[]), 422, Some("spec.network"))
        .await;
    refuse_create(&s, "access-rule-sets", rule_set(1, "x", &random()), 422, Some("spec.network")).await;
    refuse_create(&s, "access-rules", rule(1, &random()), 422, Some("spec.rule_set")).await;
    let body = compartment(0, "x", "datacenter", &[&random()]);
    refuse_create(&s, "compartments", body, 422, Some("spec.parents[0]")).await;

    // Networks and what hangs off them stay in one ring.
    let net1 = s.create_id("networks", network(1, "backplane", "10.80.0.0/24")).await;
    refuse_create(&s, "network-interfaces", interface(1, &net1, &m1_id, &[]), 422, Some("spec.node")).await;
    refuse_create(&s, "network-interfaces", interface(0, &net1, &m1_id, &[]), 422, Some("spec.network"))
        .await;
    refuse_create(&s, "access-rule-sets", rule_set(2, "x", &net1), 422, Some("spec.network")).await;
    let set1 = s.create_id("access-rule-sets", rule_set(1, "web-in", &net1)).await;
    refuse_create(&s, "access-rules", rule(0, &set1), 422, Some("spec.rule_set")).await;
    refuse_create(&s, "node-observations", observation(1, &m1_id), 422, Some("spec.node")).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compartments_form_a_dag() {
    let s = TestServer::start().await;
    let a = s.create("compartments", compartment(0, "a", "region", &[])).await;
    let a_id = uuid_of(&a);
    let b = s.create("compartments", compartment(0, "b", "datacenter", &[&a_id])).await;
    let b_id = uuid_of(&b);
    let c = s.create("compartments", compartment(0, "c", "rack", &[&b_id])).await;
    let c_id = uuid_of(&c);

    // Closing a cycle, long or short, and a self-parent are refused.
    refuse_update(
        &s,
        "compartments",
        &a,
        json!({"type": "region", "parents": [c_id]}),
        422,
        Some("spec.parents"),
    )
    .await;
    refuse_update(
        &s,
        "compartments",
        &a,
        json!({"type": "region", "parents": [b_id]}),
        422,
        Some("spec.parents"),
    )
    .await;
    refuse_update(
        &s,
        "compartments",
        &a,
        json!({"type": "region", "parents": [a_id]}),
        422,
        Some("spec.parents"),
    )
    .await;
    refuse_update(
        &s,
        "compartments",
        &b,
        json!({"type": "datacenter", "parents": [c_id]}),
        422,
        Some("spec.parents"),
    )
    .await;
    refuse_update(
        &s,
        "compartments",
        &c,
        json!({"type": "rack", "parents": [b_id, c_id]}),
        422,
        Some("spec.parents"),
    )
    .await;
    // A second parent that closes a cycle through the first is refused as well.
    let d = s.create("compartments", compartment(0, "d", "zone", &[&a_id])).await;
    let d_id = uuid_of(&d);
    refuse_update(
        &s,
        "compartments",
        &a,
        json!({"type": "region", "parents": [d_id]}),
        422,
        Some("spec.parents"),
    )
    .await;
    // Listing a parent twice is refused, naming the second.
    refuse_update(
        &s,
        "compartments",
        &c,
        json!({"type": "rack", "parents": [b_id, b_id]}),
        422,
        Some("spec.parents[1]"),
    )
    .await;

    // Diamonds are fine.
    let c2 = s.update("compartments", &c, json!({"type": "rack", "parents": [b_id, d_id, a_id]})).await;
    assert_eq!(c2["spec"]["parents"], json!([b_id, d_id, a_id]));
    s.create("compartments", compartment(0, "e", "rack", &[&c_id, &b_id])).await;

    // Parents are in the same ring or below; the ring-2 compartments are the app environments.
    let z1 = s.create_id("compartments", compartment(1, "z1", "zone", &[&a_id])).await;
    let body = compartment(0, "x", "zone", &[&z1]);
    refuse_create(&s, "compartments", body, 422, Some("spec.parents[0]")).await;
    refuse_create(&s, "compartments", compartment(2, "x", "region", &[]), 422, Some("spec.type")).await;
    refuse_create(&s, "compartments", compartment(0, "x", "app-environment", &[]), 422, Some("spec.type"))
        .await;
    refuse_create(&s, "compartments", compartment(1, "x", "app-environment", &[]), 422, Some("spec.type"))
        .await;
    s.create("compartments", compartment(2, "shop-prod", "app-environment", &[&z1])).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_are_unique_among_siblings() {
    let s = TestServer::start().await;
    // Tiers: per ring.
    let web = s.create_id("tiers", tier(0, "web")).await;
    refuse_create(&s, "tiers", tier(0, "web"), 409, Some("label")).await;
    s.create("tiers", tier(1, "web")).await;
    s.create("tiers", tier(2, "web")).await;

    // Nodes: per ring and compartment.
    let eu = s.create_id("compartments", compartment(0, "eu", "region", &[])).await;
    let us = s.create_id("compartments", compartment(0, "us", "region", &[])).await;
    let in_eu = with_spec(machine("m1"), json!({"compartment": eu}));
    let in_us = with_spec(machine("m1"), json!({"compartment": us}));
    let m1_eu = s.create_id("nodes", in_eu.clone()).await;
    refuse_create(&s, "nodes", in_eu.clone(), 409, Some("label")).await;
    let m1_us = s.create("nodes", in_us).await;
    let m1 = s.create_id("nodes", machine("m1")).await;
    refuse_create(&s, "nodes", machine("m1"), 409, Some("label")).await;
    s.create("nodes", node(1, "m1", &m1)).await;
    // Moving a node into a compartment where its label is taken is refused.
    refuse_update(&s, "nodes", &m1_us, json!({"compartment": eu}), 409, Some("label")).await;

    // Compartments: per ring and primary parent.
    s.create("compartments", compartment(0, "dc1", "datacenter", &[&eu])).await;
    refuse_create(&s, "compartments", compartment(0, "dc1", "datacenter", &[&eu, &us]), 409, Some("label"))
        .await;
    s.create("compartments", compartment(0, "dc1", "datacenter", &[&us, &eu])).await;
    refuse_create(&s, "compartments", compartment(0, "eu", "region", &[]), 409, Some("label")).await;

    // Renaming onto a taken label is refused; renaming frees the old label.
    let db = s.create("tiers", tier(0, "db")).await;
    let path = format!("/v1/tiers/{}", uuid_of(&db));
    let rename = |label: &str| json!({"revision": db["revision"], "label": label, "spec": db["spec"]});
    refuse(&s, s.request(Method::PUT, &path).json(&rename("web")), 409, Some("label")).await;
    let reply = s.put(&path, &rename("db2")).await;
    assert_eq!(reply.status, StatusCode::OK, "rename: {}", reply.body);
    s.create("tiers", tier(0, "db")).await;
    // Deleting frees a label.
    delete_ok(&s, "tiers", &web).await;
    s.create("tiers", tier(0, "web")).await;
    delete_ok(&s, "nodes", &m1_eu).await;
    s.create("nodes", in_eu).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_have_a_syntax() {
    let s = TestServer::start().await;
    let long = "a".repeat(64);
    for bad in ["Web", "-web", "web-", "a b", "", "web/1", long.as_str()] {
        refuse_create(&s, "tiers", tier(0, bad), 422, Some("label")).await;
    }
    // Named kinds need a label; unnamed ones may go without.
    refuse_create(&s, "tiers", json!({"ring": 0, "spec": {}}), 422, Some("label")).await;
    refuse_create(&s, "nodes", json!({"ring": 0, "spec": {}}), 422, Some("label")).await;
    refuse_create(&s, "tasks", json!({"ring": 0, "spec": {"type": "backup"}}), 422, Some("label")).await;
    let t = s.create("tiers", tier(0, "web")).await;
    let path = format!("/v1/tiers/{}", uuid_of(&t));
    let body = json!({"revision": t["revision"], "label": "Not Valid", "spec": {}});
    refuse(&s, s.request(Method::PUT, &path).json(&body), 422, Some("label")).await;
    let body = json!({"revision": t["revision"], "spec": {}});
    refuse(&s, s.request(Method::PUT, &path).json(&body), 422, Some("label")).await;

    // Selector labels: keys like labels (with prefixes), short printable values.
    let mut body = tier(0, "x");
    body["labels"] = json!({"Bad Key": "v"});
    refuse_create(&s, "tiers", body.clone(), 422, Some("labels.Bad Key")).await;
    body["labels"] = json!({"k": "v".repeat(64)});
    refuse_create(&s, "tiers", body.clone(), 422, Some("labels.k")).await;
    body["labels"] = json!({"enjin.dev/app": "shop", "tier": "web"});
    s.create("tiers", body).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interface_addresses_lie_in_the_network() {
    let s = TestServer::start().await;
    let m1 = s.create_id("nodes", machine("m1")).await;
    let h1 = s.create_id("nodes", node(1, "h1", &m1)).await;
    let net = s.create_id("networks", network(1, "backplane", "10.80.0.0/24")).await;
    let v6 = s.create_id("networks", network(1, "v6", "fd00::/64")).await;

    let cases: [(&[&str], &str); 5] = [
        (&["10.80.1.5"], "spec.addresses[0]"),
        (&["10.80.0.5", "10.81.0.1"], "spec.addresses[1]"),
        (&["fd00::1"], "spec.addresses[0]"),
        (&["10.80.0.5", "10.80.0.5"], "spec.addresses[1]"),
        (&["10.79.255.255"], "spec.addresses[0]"),
    ];
    for (addresses, field) in cases {
        refuse_create(&s, "network-interfaces", interface(1, &net, &h1, addresses), 422, Some(field)).await;
    }
    refuse_create(
        &s,
        "network-interfaces",
        interface(1, &v6, &h1, &["10.80.0.5"]),
        422,
        Some("spec.addresses[0]"),
    )
    .await;
    let ok = s.create("network-interfaces", interface(1, &net, &h1, &["10.80.0.0", "10.80.0.255"])).await;
    s.create("network-interfaces", interface(1, &v6, &h1, &["fd00::1"])).await;
    refuse_update(
        &s,
        "network-interfaces",
        &ok,
        json!({"network": net, "node": h1, "addresses": ["10.80.0.1", "10.80.2.1"]}),
        422,
        Some("spec.addresses[1]"),
    )
    .await;
    // The range cannot move away from the interfaces that rely on it.
    let network_obj = s.fetch("networks", &net).await;
    refuse_update(
        &s,
        "networks",
        &network_obj,
        json!({"strategy": "local", "cidr": "192.168.0.0/24"}),
        422,
        Some("spec.cidr"),
    )
    .await;
    let mut bad_mac = interface(1, &net, &h1, &["10.80.0.9"]);
    bad_mac["spec"]["mac"] = json!("02:00:00:00:00");
    refuse_create(&s, "network-interfaces", bad_mac, 422, Some("spec.mac")).await;
    // No range at all does not decode; a range with host bits set is well formed (the API
    // document's pattern allows it) but breaks a rule.
    refuse_create(&s, "networks", network(1, "x", "10.80.0.1/24"), 422, Some("spec.cidr")).await;
    refuse_create(&s, "networks", network(1, "x", "banana"), 400, Some("spec.cidr")).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn referenced_objects_cannot_be_deleted() {
    let s = TestServer::start().await;
    let web = s.create_id("tiers", tier(0, "web")).await;
    let eu = s.create_id("compartments", compartment(0, "eu", "region", &[])).await;
    let dc1 = s.create_id("compartments", compartment(0, "dc1", "datacenter", &[&eu])).await;
    let m1 = s.create("nodes", with_spec(machine("m1"), json!({"tiers": [web], "compartment": dc1}))).await;
    let m1_id = uuid_of(&m1);
    let h1 = s.create_id("nodes", node(1, "h1", &m1_id)).await;

    // A tier used by a node, a node with children, a compartment with children or nodes.
    refuse_delete(&s, "tiers", &web).await;
    refuse_delete(&s, "nodes", &m1_id).await;
    refuse_delete(&s, "compartments", &eu).await;
    refuse_delete(&s, "compartments", &dc1).await;

    // Networks with interfaces or rule sets; accounts and roles with members.
    let net = s.create_id("networks", network(1, "backplane", "10.80.0.0/24")).await;
    let nic = s.create_id("network-interfaces", interface(1, &net, &h1, &["10.80.0.2"])).await;
    refuse_delete(&s, "networks", &net).await;
    delete_ok(&s, "network-interfaces", &nic).await;
    // An interface is part of its node: it goes with it, and its address is free again.
    let h9 = s.create_id("nodes", node(1, "h9", &m1_id)).await;
    let nic = s.create_id("network-interfaces", interface(1, &net, &h9, &["10.80.0.2"])).await;
    delete_ok(&s, "nodes", &h9).await;
    assert_eq!(
        s.get(&format!("/v1/network-interfaces/{nic}")).await.status,
        404,
        "the interface went with its node"
    );
    let h9 = s.create_id("nodes", node(1, "h9", &m1_id)).await;
    let nic = s.create_id("network-interfaces", interface(1, &net, &h9, &["10.80.0.2"])).await;
    delete_ok(&s, "network-interfaces", &nic).await;
    delete_ok(&s, "nodes", &h9).await;
    let set = s.create_id("access-rule-sets", rule_set(1, "web-in", &net)).await;
    refuse_delete(&s, "networks", &net).await;
    delete_ok(&s, "access-rule-sets", &set).await;
    delete_ok(&s, "networks", &net).await;
    let acme = s.create_id("accounts", account("acme")).await;
    let reader = s.create_id("roles", role("reader")).await;
    let member = s.create_id("memberships", membership("carol", &acme, &reader)).await;
    refuse_delete(&s, "accounts", &acme).await;
    refuse_delete(&s, "roles", &reader).await;
    delete_ok(&s, "memberships", &member).await;
    delete_ok(&s, "roles", &reader).await;
    delete_ok(&s, "accounts", &acme).await;
    // The bootstrapped admin role and system account hold the admin's membership.
    let admin = s.list("roles", &[("label", "admin")]).await.0;
    refuse_delete(&s, "roles", &uuid_of(&admin[0])).await;
    let system = s.list("accounts", &[("label", "system")]).await.0;
    refuse_delete(&s, "accounts", &uuid_of(&system[0])).await;

    // Once nothing refers to them any more, they go.
    refuse_delete(&s, "nodes", &m1_id).await;
    delete_ok(&s, "nodes", &h1).await;
    let m1 = s.update("nodes", &m1, json!({"compartment": dc1})).await;
    delete_ok(&s, "tiers", &web).await;
    refuse_delete(&s, "compartments", &dc1).await;
    s.update("nodes", &m1, json!({})).await;
    refuse_delete(&s, "compartments", &eu).await;
    delete_ok(&s, "compartments", &dc1).await;
    delete_ok(&s, "compartments", &eu).await;
    delete_ok(&s, "nodes", &m1_id).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_cascade_to_observations_and_rules() {
    let s = TestServer::start().await;
    let m1 = s.create_id("nodes", machine("m1")).await;
    let m2 = s.create_id("nodes", machine("m2")).await;
    let o1 = s.create_id("node-observations", observation(0, &m1)).await;
    let mut tcp = observation(0, &m1);
    tcp["spec"]["strategy"] = json!("tcp");
    let o2 = s.create_id("node-observations", tcp).await;
    let other = s.create_id("node-observations", observation(0, &m2)).await;

    // A node still supervising another keeps its observations too.
    let h1 = s.create_id("nodes", node(1, "h1", &m1)).await;
    refuse_delete(&s, "nodes", &m1).await;
    s.fetch("node-observations", &o1).await;
    delete_ok(&s, "nodes", &h1).await;

    let before = s.model_revision().await;
    delete_ok(&s, "nodes", &m1).await;
    assert_eq!(s.model_revision().await, before + 1, "the node and its observations go in one transaction");
    gone(&s, "nodes", &m1).await;
    gone(&s, "node-observations", &o1).await;
    gone(&s, "node-observations", &o2).await;
    assert!(s.list_ids("node-observations", &[("parent", &m1)]).await.is_empty());
    assert_eq!(
        s.list_ids("node-observations", &[]).await,
        vec![other.clone()],
        "other nodes' observations stay"
    );

    // A rule set takes its rules with it.
    let net = s.create_id("networks", network(1, "backplane", "10.80.0.0/24")).await;
    let set = s.create_id("access-rule-sets", rule_set(1, "web-in", &net)).await;
    let r1 = s.create_id("access-rules", rule(1, &set)).await;
    let r2 = s.create_id("access-rules", rule(1, &set)).await;
    delete_ok(&s, "access-rule-sets", &set).await;
    gone(&s, "access-rules", &r1).await;
    gone(&s, "access-rules", &r2).await;
    // And nothing refers to the network any more.
    delete_ok(&s, "networks", &net).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_follow_their_state_machine() {
    let s = TestServer::start().await;
    let t = s.create("tasks", task("deploy-1")).await;
    let spec = |state: &str, done: u64| json!({"type": "deploy", "state": state, "progress": {"done": done, "total": 3}});

    refuse_update(&s, "tasks", &t, spec("succeeded", 3), 422, Some("spec.state")).await;
    refuse_update(&s, "tasks", &t, spec("failed", 0), 422, Some("spec.state")).await;
    refuse_update(&s, "tasks", &t, json!({"type": "backup", "state": "pending"}), 422, Some("spec.type"))
        .await;
    refuse_update(&s, "tasks", &t, spec("running", 4), 422, Some("spec.progress.done")).await;
    let mut failing = spec("running", 1);
    failing["error"] = json!("disk full");
    refuse_update(&s, "tasks", &t, failing, 422, Some("spec.error")).await;

    let running = s.update("tasks", &t, spec("running", 1)).await;
    let running = s.update("tasks", &running, spec("running", 2)).await;
    refuse_update(&s, "tasks", &running, spec("pending", 2), 422, Some("spec.state")).await;
    let done = s.update("tasks", &running, spec("succeeded", 3)).await;
    assert!(revision_of(&done) > revision_of(&running));
    refuse_update(&s, "tasks", &done, spec("running", 3), 422, Some("spec.state")).await;
    refuse_update(&s, "tasks", &done, spec("failed", 3), 422, Some("spec.state")).await;
    refuse_update(&s, "tasks", &done, spec("succeeded", 2), 422, Some("spec.state")).await;

    // Cancelling works from pending; a cancelled task is final.
    let t2 = s.create("tasks", task("deploy-2")).await;
    let cancelled = s.update("tasks", &t2, spec("cancelled", 0)).await;
    refuse_update(&s, "tasks", &cancelled, spec("running", 0), 422, Some("spec.state")).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_refused() {
    let s = TestServer::start().await;
    let t = s.create("tiers", tier(0, "web")).await;
    let item = format!("/v1/tiers/{}", uuid_of(&t));
    let post = || s.request(Method::POST, "/v1/tiers");
    let put = || s.request(Method::PUT, &item);

    // An unknown field anywhere is refused, naming where it was found.
    let body = json!({"ring": 0, "label": "x", "spec": {"description": "d", "colour": "red"}});
    let reply = refuse_status(&s, post().json(&body), 400).await;
    let field = reply.body["field"].as_str().unwrap_or("");
    assert!(
        field == "spec" || field.starts_with("spec."),
        "the unknown field is placed in the spec: {}",
        reply.body
    );
    assert!(reply.body["detail"].as_str().is_some_and(|d| d.contains("colour")), "and named: {}", reply.body);
    let body = json!({"ring": 0, "label": "x", "spec": {}, "colour": "red"});
    refuse(&s, post().json(&body), 400, Some("colour")).await;
    // The ring cannot change: an update has no such field.
    let body = json!({"revision": t["revision"], "label": "web", "ring": 1, "spec": {}});
    refuse(&s, put().json(&body), 400, Some("ring")).await;
    // Wrong types and missing fields.
    refuse(&s, post().json(&json!({"ring": 0, "label": "x", "spec": 5})), 400, Some("spec")).await;
    refuse(&s, post().json(&json!({"ring": "zero", "label": "x", "spec": {}})), 400, Some("ring")).await;
    refuse(&s, post().json(&json!({"ring": 0, "label": "x"})), 400, None).await;
    refuse(&s, put().json(&json!({"label": "web", "spec": {}})), 400, None).await;
    let body = json!({"ring": 0, "label": "x", "spec": {"description": 7}});
    refuse(&s, post().json(&body), 400, Some("spec.description")).await;

    // Bodies that are not JSON, or not declared as JSON.
    for bad in ["{", "", "null", "[]", "{\"ring\": 0,}", "ring=0"] {
        refuse_status(&s, post().header(CONTENT_TYPE, "application/json").body(bad), 400).await;
        refuse_status(&s, put().header(CONTENT_TYPE, "application/json").body(bad), 400).await;
    }
    let valid = json!({"ring": 0, "label": "x", "spec": {}}).to_string();
    for ct in ["text/plain", "application/x-www-form-urlencoded", "application/xml"] {
        refuse(&s, post().header(CONTENT_TYPE, ct).body(valid.clone()), 415, None).await;
        refuse(&s, put().header(CONTENT_TYPE, ct).body(valid.clone()), 415, None).await;
    }
    let tokens = s.request(Method::POST, "/v1/tokens");
    refuse(&s, tokens.header(CONTENT_TYPE, "text/plain").body("{}"), 415, None).await;

    // A body over 1 MiB, even a valid one.
    let huge = json!({"ring": 0, "label": "x", "spec": {"description": "d".repeat(1024 * 1024)}});
    refuse(&s, post().json(&huge), 413, None).await;
    let huge =
        json!({"revision": t["revision"], "label": "web", "spec": {"description": "d".repeat(1024 * 1024)}});
    refuse(&s, put().json(&huge), 413, None).await;
    // Just under the limit is decoded (and then refused for its too long description).
    let near = json!({"ring": 0, "label": "x", "spec": {"description": "d".repeat(1024 * 1024 - 100)}});
    refuse(&s, post().json(&near), 422, Some("spec.description")).await;

    // A path that is not a uuid names no object.
    refuse(
        &s,
        s.request(Method::PUT, "/v1/tiers/not-a-uuid").json(&json!({"revision": 1, "spec": {}})),
        404,
        None,
    )
    .await;
    refuse(&s, s.request(Method::DELETE, "/v1/tiers/not-a-uuid"), 404, None).await;
    refuse(&s, s.request(Method::DELETE, &format!("{item}?revision=abc")), 400, None).await;
    s.stop().await;
}

/// A long run of refused writes of every kind leaves every list and the store revision as
/// they were.
#[tokio::test(flavor = "multi_thread")]
async fn refused_writes_change_nothing() {
    let s = TestServer::start().await;
    let m1 = s.create_id("nodes", machine("m1")).await;
    let web = s.create_id("tiers", tier(1, "web")).await;
    let net = s.create_id("networks", network(0, "n", "10.80.0.0/24")).await;
    let t = s.create("tasks", task("t")).await;
    let before = Snapshot::take(&s).await;

    let attempts: Vec<(&str, Value)> = vec![
        ("nodes", machine("m1")),
        ("nodes", node(1, "h", &random())),
        ("nodes", with_spec(machine("x"), json!({"tiers": [web]}))),
        ("tiers", tier(1, "web")),
        ("tiers", tier(0, "Web")),
        ("network-interfaces", interface(0, &net, &m1, &["192.0.2.1"])),
        ("compartments", compartment(2, "x", "rack", &[])),
        ("memberships", membership("Bob", &random(), &random())),
        ("node-observations", observation(0, &random())),
        ("access-rules", rule(0, &random())),
        ("accounts", json!({"ring": 0, "label": "x", "spec": {"description": "\u{7}"}})),
        (
            "roles",
            json!({"ring": 0, "label": "x", "spec": {"permissions": [{"verbs": [], "resources": ["node"]}]}}),
        ),
        ("networks", json!({"ring": 0, "label": "x", "spec": {"strategy": "vpn", "cidr": "10.0.0.0/8"}})),
    ];
    for (plural, body) in attempts {
        let reply = s.post(&format!("/v1/{plural}"), &body).await;
        assert!(
            reply.status.is_client_error(),
            "{plural} {body} was refused: {} {}",
            reply.status,
            reply.body
        );
        assert!(reply.content_type().starts_with("application/problem+json"));
    }
    let spec = json!({"type": "deploy", "state": "succeeded"});
    let reply = s
        .put(
            &format!("/v1/tasks/{}", uuid_of(&t)),
            &json!({"revision": t["revision"], "label": "t", "spec": spec}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.body);
    for (plural, uuid) in [("nodes", &m1), ("networks", &net)] {
        let stale = s.delete(&format!("/v1/{plural}/{uuid}?revision=1")).await;
        assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    }
    s.create("network-interfaces", interface(0, &net, &m1, &["10.80.0.1"])).await;
    let after_one_write = Snapshot::take(&s).await;
    assert_eq!(after_one_write.revision, before.revision + 1, "only the accepted write moved the revision");
    let refused = s.delete(&format!("/v1/networks/{net}")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(Snapshot::take(&s).await, after_one_write);
    s.stop().await;
}
