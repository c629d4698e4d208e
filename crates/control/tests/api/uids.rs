//! Uids for instances: the control plane reserves one per ring 2 `unix-user` node with a run,
//! never the same one twice at once, never again soon after it is released, never one a caller
//! chose, and never a different one for the same node.

use std::collections::HashSet;

use enjin_control::uids::{self, RANGE};
use enjin_store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{machine, node};
use crate::harness::{TestServer, assert_problem, uuid_of};

/// A ring 2 instance under `host`, as `enjin node run` sends it.
pub fn instance(label: &str, host: &str) -> Value {
    json!({"ring": 2, "label": label, "spec": {
        "parent": host, "strategy": "unix-user", "run": {"command": ["/bin/sleep", "60"]}
    }})
}

fn uid_of(node: &Value) -> u32 {
    let uid = node["spec"]["run"]["uid"].as_u64().unwrap_or_else(|| panic!("node without a uid: {node}"));
    u32::try_from(uid).expect("a uid fits 32 bits")
}

async fn host(s: &TestServer) -> String {
    let m1 = s.create_id("nodes", machine("m1")).await;
    s.create_id("nodes", node(1, "h1", &m1)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_instances_get_distinct_uids_in_range() {
    let s = TestServer::start().await;
    let h1 = host(&s).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let req = s.request(Method::POST, "/v1/nodes").json(&instance(&format!("app-{i}"), &h1));
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.expect("send");
            (resp.status(), resp.json::<Value>().await.expect("json"))
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let uid = uid_of(&body);
        assert!(RANGE.contains(&uid), "uid {uid} outside {RANGE:?}");
        assert!(seen.insert(uid), "uid {uid} handed out twice");
        // What is stored is what was answered.
        assert_eq!(uid_of(&s.fetch("nodes", &uuid_of(&body)).await), uid);
    }
    // Handed out in order from the start of the range: more creates at once than a write is
    // retried for other conflicts, so losing the counter to another create must not use them up.
    let first = *RANGE.start();
    assert_eq!(seen, (first..first + 12).collect::<HashSet<u32>>());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_uid_is_not_handed_out_again() {
    let s = TestServer::start().await;
    let h1 = host(&s).await;
    let a = s.create("nodes", instance("a", &h1)).await;
    let b = s.create("nodes", instance("b", &h1)).await;
    let deleted = s.delete(&format!("/v1/nodes/{}", uuid_of(&a))).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    let c = s.create("nodes", instance("c", &h1)).await;
    assert_ne!(uid_of(&c), uid_of(&a), "the deleted node's uid came back at once");
    assert_eq!(uid_of(&c), uid_of(&b) + 1, "uids are handed out in order");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_instances_get_a_uid() {
    let s = TestServer::start().await;
    let h1 = host(&s).await;
    // No run: nothing to run as anyone.
    let bare = s.create("nodes", node(2, "bare", &h1)).await;
    assert!(bare["spec"].get("run").is_none(), "{bare}");
    // Not run as a user of its own.
    let mut plain = instance("plain", &h1);
    plain["spec"]["strategy"] = json!("process");
    let plain = s.create("nodes", plain).await;
    assert!(plain["spec"]["run"].get("uid").is_none(), "{plain}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_uid_sent_on_create_is_refused() {
    let s = TestServer::start().await;
    let h1 = host(&s).await;
    let mut body = instance("app", &h1);
    body["spec"]["run"]["uid"] = json!(*RANGE.start());
    let reply = s.post("/v1/nodes", &body).await;
    assert_problem(&reply, 422, Some("spec.run.uid"));
    assert!(reply.body["detail"].as_str().is_some_and(|d| d.contains("reserved")), "{}", reply.body);
    // Not even on a node that would not get one.
    body["spec"]["strategy"] = json!("process");
    assert_problem(&s.post("/v1/nodes", &body).await, 422, Some("spec.run.uid"));
    assert!(s.list("nodes", &[("ring", "2")]).await.0.is_empty(), "nothing was created");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_cannot_change_the_uid_and_keeps_it_when_left_out() {
    let s = TestServer::start().await;
    let h1 = host(&s).await;
    let app = s.create("nodes", instance("app", &h1)).await;
    let uid = uid_of(&app);
    let path = format!("/v1/nodes/{}", uuid_of(&app));
    let put = |object: &Value, spec: Value| json!({"revision": object["revision"], "label": object["label"], "spec": spec});

    let mut other = app["spec"].clone();
    other["run"]["uid"] = json!(uid + 1);
    let refused = s.put(&path, &put(&app, other)).await;
    assert_problem(&refused, 422, Some("spec.run.uid"));

    let mut no_run = app["spec"].clone();
    no_run.as_object_mut().expect("spec").remove("run");
    assert_problem(&s.put(&path, &put(&app, no_run)).await, 422, Some("spec.run.uid"));

    // A client that edits the spec it sent, without the uid, keeps working and keeps the uid.
    let mut edited = instance("app", &h1)["spec"].clone();
    edited["desired_state"] = json!("stopped");
    let updated = s.update("nodes", &app, edited).await;
    assert_eq!(uid_of(&updated), uid);
    assert_eq!(updated["spec"]["desired_state"], "stopped");
    // Sending it back unchanged is fine too.
    let same = s.update("nodes", &updated, updated["spec"].clone()).await;
    assert_eq!(uid_of(&same), uid);
    assert_eq!(uid_of(&s.fetch("nodes", &uuid_of(&app)).await), uid);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_becomes_an_instance_gets_a_uid() {
    let s = TestServer::start().await;
    let h1 = host(&s).await;
    let bare = s.create("nodes", node(2, "app", &h1)).await;
    let first = s.create("nodes", instance("first", &h1)).await;
    let updated = s.update("nodes", &bare, instance("app", &h1)["spec"].clone()).await;
    assert_eq!(uid_of(&updated), uid_of(&first) + 1);
    // And gives it back on delete: its key goes, and the next one goes on from the counter.
    let key = uids::key(uid_of(&updated));
    assert!(s.store().get(&key).await.expect("read").is_some(), "{key} is held");
    let deleted = s.delete(&format!("/v1/nodes/{}", uuid_of(&updated))).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(s.store().get(&key).await.expect("read").is_none(), "{key} is released");
    let next = s.create("nodes", instance("next", &h1)).await;
    assert_eq!(uid_of(&next), uid_of(&updated) + 1);
    s.stop().await;
}
