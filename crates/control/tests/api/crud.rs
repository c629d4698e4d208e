//! Create, get, list, update and delete for every kind, and every list filter.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{self, Case, assert_spec_holds, compartment, machine, node, observation, tier};
use crate::harness::{TestServer, assert_problem, revision_of, send, uuid_of};

/// The whole life of one object of the kind at `plural`.
async fn roundtrip(plural: &'static str) {
    let s = TestServer::start().await;
    let Case { singular, create, new_spec, .. } = fixtures::case(&s, plural).await;
    let ring = create["ring"].as_u64().expect("ring");
    let label = create.get("label").and_then(Value::as_str).map(str::to_string);
    let mut create = create;
    create["labels"] = json!({"suite": "crud", "case": plural});
    let (before, _) = s.list(plural, &[]).await;

    // Create: 201, a Location naming the new object, and the object as stored.
    let reply = s.post(&format!("/v1/{plural}"), &create).await;
    assert_eq!(reply.status, StatusCode::CREATED, "create {plural}: {}", reply.body);
    let created = reply.body.clone();
    let uuid = uuid_of(&created);
    let item = format!("/v1/{plural}/{uuid}");
    assert_eq!(reply.header("location"), Some(item.as_str()), "Location of the new {singular}");
    assert!(reply.content_type().starts_with("application/json"), "content type {}", reply.content_type());
    assert_eq!(created["kind"], json!(singular));
    assert_eq!(created["ring"].as_u64(), Some(ring));
    assert_eq!(created.get("label").and_then(Value::as_str), label.as_deref());
    assert_eq!(created["labels"], create["labels"]);
    assert_eq!(created["created_at"], created["updated_at"]);
    assert!(revision_of(&created) > 0, "a revision is stamped: {created}");
    assert_spec_holds(&create["spec"], &created["spec"]);

    // Get returns exactly what create returned.
    assert_eq!(s.fetch(plural, &uuid).await, created);

    // List: one more than before, and each filter that applies finds it.
    let (after, list_revision) = s.list(plural, &[]).await;
    assert_eq!(after.len(), before.len() + 1, "{plural} listed after the create");
    assert!(after.contains(&created), "the list holds the object as created");
    assert!(list_revision >= revision_of(&created), "a list is read at or after the create");
    let ring_s = ring.to_string();
    let other_ring = ((ring + 1) % 3).to_string();
    assert!(s.list_ids(plural, &[("ring", &ring_s)]).await.contains(&uuid), "ring filter");
    assert!(!s.list_ids(plural, &[("ring", &other_ring)]).await.contains(&uuid), "ring filter excludes");
    if let Some(label) = &label {
        assert_eq!(s.list_ids(plural, &[("label", label)]).await, vec![uuid.clone()], "label filter");
    }
    assert_eq!(s.list_ids(plural, &[("label", "no-such-label")]).await, Vec::<String>::new());
    assert_eq!(s.list_ids(plural, &[("selector", "suite=crud")]).await, vec![uuid.clone()], "selector");
    let both = format!("suite=crud,case={plural}");
    assert_eq!(s.list_ids(plural, &[("selector", &both)]).await, vec![uuid.clone()], "two-label selector");
    assert!(s.list_ids(plural, &[("selector", "suite=other")]).await.is_empty(), "selector excludes");
    assert!(
        s.list_ids(plural, &[("selector", "suite=crud,case=other")]).await.is_empty(),
        "all of a selector must match"
    );

    // Update at the current revision: 200, a later revision, the new spec and labels.
    let mut body = json!({"revision": created["revision"], "labels": {"suite": "crud", "phase": "updated"}, "spec": new_spec});
    if let Some(label) = &label {
        body["label"] = json!(label);
    }
    let reply = s.put(&item, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "update {plural}: {}", reply.body);
    let updated = reply.body.clone();
    assert!(revision_of(&updated) > revision_of(&created), "the revision increases: {updated}");
    assert_eq!(updated["uuid"], created["uuid"]);
    assert_eq!(updated["kind"], created["kind"]);
    assert_eq!(updated["ring"], created["ring"]);
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_eq!(updated["labels"], body["labels"]);
    assert!(
        updated["updated_at"].as_str() >= created["updated_at"].as_str(),
        "updated_at moves forward: {updated}"
    );
    assert_spec_holds(&body["spec"], &updated["spec"]);
    assert_eq!(s.fetch(plural, &uuid).await, updated);
    assert_eq!(s.list_ids(plural, &[("selector", "phase=updated")]).await, vec![uuid.clone()]);
    let old_label = format!("case={plural}");
    assert!(s.list_ids(plural, &[("selector", &old_label)]).await.is_empty(), "labels are replaced");

    // Update at a stale revision: 409 naming the revision, and nothing changes.
    let mut stale = body.clone();
    stale["revision"] = created["revision"].clone();
    assert_problem(&s.put(&item, &stale).await, 409, Some("revision"));
    assert_eq!(s.fetch(plural, &uuid).await, updated);

    // Delete at a stale revision is refused the same way; at the current one it is done.
    let stale_delete = format!("{item}?revision={}", revision_of(&created));
    assert_problem(&s.delete(&stale_delete).await, 409, Some("revision"));
    assert_eq!(s.fetch(plural, &uuid).await, updated);
    let reply = s.delete(&format!("{item}?revision={}", revision_of(&updated))).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "delete {plural}: {}", reply.body);
    assert_eq!(reply.body, Value::Null, "a 204 has no body");

    // Gone: get, update and delete answer 404; the list is as before.
    assert_problem(&s.get(&item).await, 404, None);
    let mut again = body.clone();
    again["revision"] = updated["revision"].clone();
    assert_problem(&s.put(&item, &again).await, 404, None);
    assert_problem(&s.delete(&item).await, 404, None);
    let (last, _) = s.list(plural, &[]).await;
    assert_eq!(last, before, "the list is back to what it was");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_accounts() {
    roundtrip("accounts").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_roles() {
    roundtrip("roles").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_memberships() {
    roundtrip("memberships").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_networks() {
    roundtrip("networks").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_network_interfaces() {
    roundtrip("network-interfaces").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_access_rule_sets() {
    roundtrip("access-rule-sets").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_access_rules() {
    roundtrip("access-rules").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_compartments() {
    roundtrip("compartments").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_tiers() {
    roundtrip("tiers").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_nodes() {
    roundtrip("nodes").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_node_observations() {
    roundtrip("node-observations").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_tasks() {
    roundtrip("tasks").await;
}

/// A list query, as `(name, value)` pairs.
type Query<'a> = Vec<(&'a str, &'a str)>;

/// Every list filter on a small topology: three rings of nodes in two regions serving two
/// tiers, with selector labels.
#[tokio::test(flavor = "multi_thread")]
async fn list_filters() {
    let s = TestServer::start().await;
    let eu = s.create_id("compartments", compartment(0, "eu", "region", &[])).await;
    let us = s.create_id("compartments", compartment(0, "us", "region", &[])).await;
    let dc1 = s.create_id("compartments", compartment(0, "dc1", "datacenter", &[&eu])).await;
    let dc2 = s.create_id("compartments", compartment(0, "dc2", "datacenter", &[&eu, &us])).await;
    let db = s.create_id("tiers", tier(0, "db")).await;
    let web = s.create_id("tiers", tier(0, "web")).await;

    let mut m1 = machine("m1");
    m1["spec"] = json!({"compartment": eu, "tiers": [db]});
    m1["labels"] = json!({"role": "db"});
    let m1 = s.create_id("nodes", m1).await;
    let mut m2 = machine("m2");
    m2["spec"] = json!({"compartment": us, "tiers": [web, db]});
    m2["labels"] = json!({"role": "web", "zone": "b"});
    let m2 = s.create_id("nodes", m2).await;
    let m3 = s.create_id("nodes", machine("m3")).await;
    let h1 = s.create_id("nodes", node(1, "h1", &m1)).await;
    let h2 = s.create_id("nodes", node(1, "h2", &m1)).await;
    let h3 = s.create_id("nodes", node(1, "h3", &m2)).await;
    let a1 = s.create_id("nodes", node(2, "a1", &h1)).await;

    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    let cases: Vec<(Query<'_>, Vec<String>)> = vec![
        (vec![("ring", "0")], sorted(vec![&m1, &m2, &m3])),
        (vec![("ring", "1")], sorted(vec![&h1, &h2, &h3])),
        (vec![("ring", "2")], sorted(vec![&a1])),
        (vec![("label", "h2")], sorted(vec![&h2])),
        (vec![("label", "nope")], vec![]),
        (vec![("compartment", &eu)], sorted(vec![&m1])),
        (vec![("compartment", &us)], sorted(vec![&m2])),
        (vec![("compartment", &dc1)], vec![]),
        (vec![("tier", &db)], sorted(vec![&m1, &m2])),
        (vec![("tier", &web)], sorted(vec![&m2])),
        (vec![("parent", &m1)], sorted(vec![&h1, &h2])),
        (vec![("parent", &h1)], sorted(vec![&a1])),
        (vec![("parent", &a1)], vec![]),
        (vec![("selector", "role=db")], sorted(vec![&m1])),
        (vec![("selector", "role=web,zone=b")], sorted(vec![&m2])),
        (vec![("selector", "role=web,zone=a")], vec![]),
        (vec![("ring", "1"), ("parent", &m1)], sorted(vec![&h1, &h2])),
        (vec![("ring", "1"), ("parent", &m2)], sorted(vec![&h3])),
        (vec![("tier", &db), ("compartment", &us)], sorted(vec![&m2])),
        (vec![("tier", &db), ("selector", "role=db")], sorted(vec![&m1])),
    ];
    for (query, expected) in cases {
        assert_eq!(s.list_ids("nodes", &query).await, expected, "nodes filtered by {query:?}");
    }

    // Lists come sorted by ring, then label.
    let (all, _) = s.list("nodes", &[]).await;
    let order: Vec<(u64, String)> = all
        .iter()
        .map(|o| (o["ring"].as_u64().unwrap_or(9), o["label"].as_str().unwrap_or("").to_string()))
        .collect();
    let mut expected_order = order.clone();
    expected_order.sort();
    assert_eq!(order, expected_order, "nodes are listed by ring and label");

    // A compartment's parent is its first parent; an observation's is its node.
    assert_eq!(s.list_ids("compartments", &[("parent", &eu)]).await, sorted(vec![&dc1, &dc2]));
    assert!(s.list_ids("compartments", &[("parent", &us)]).await.is_empty());
    let o1 = s.create_id("node-observations", observation(0, &m1)).await;
    let o2 = s.create_id("node-observations", observation(0, &m2)).await;
    assert_eq!(s.list_ids("node-observations", &[("parent", &m1)]).await, vec![o1]);
    assert_eq!(s.list_ids("node-observations", &[("parent", &m2)]).await, vec![o2]);

    // Malformed filters are the caller's fault.
    for query in [
        [("ring", "x")],
        [("ring", "-1")],
        [("compartment", "not-a-uuid")],
        [("tier", "42")],
        [("bogus", "1")],
    ] {
        let reply = send(s.request(Method::GET, "/v1/nodes").query(&query)).await;
        assert_problem(&reply, 400, None);
    }
    let reply = send(s.request(Method::GET, "/v1/nodes").query(&[("selector", "role")])).await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "a selector without '=' is a malformed query: {}",
        reply.body
    );
    assert_problem(&reply, 400, Some("selector"));
    s.stop().await;
}
