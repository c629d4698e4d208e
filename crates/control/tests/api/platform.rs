//! The platform's API without hosts: packages are stored once, bad deploys are refused naming
//! the field, a rollout with nowhere to run fails and leaves a failed release, and ports are
//! held by one node at a time.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{machine, node};
use crate::harness::{TestServer, send, uuid_of};

async fn upload(s: &TestServer, bytes: &[u8]) -> crate::harness::Reply {
    send(
        s.request(Method::POST, "/v1/packages")
            .header("Content-Type", "application/zstd")
            .body(bytes.to_vec()),
    )
    .await
}

fn manifest(name: &str, instances: u32) -> Value {
    json!({"name": name, "processes": {"web": {"command": "python3 app.py", "instances": instances}}})
}

#[tokio::test]
async fn packages_are_stored_once_by_content() {
    let s = TestServer::start().await;
    let first = upload(&s, b"some package bytes").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["existed"], false);
    let digest = first.body["package"]["digest"].as_str().expect("digest").to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert_eq!(first.body["package"]["size"], 18);
    let again = upload(&s, b"some package bytes").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["existed"], true);
    assert_eq!(again.body["package"]["digest"], digest.as_str());
    let empty = upload(&s, b"").await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn bad_deploys_are_refused_naming_the_field() {
    let s = TestServer::start().await;
    let package = upload(&s, b"pkg").await.body["package"].clone();
    let missing = json!({"digest": format!("sha256:{}", "0".repeat(64)), "size": 3});
    let r = s
        .post("/v1/apps/hello/deploys", &json!({"manifest": manifest("hello", 1), "package": missing}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["field"], "package.digest");
    let r = s
        .post("/v1/apps/hello/deploys", &json!({"manifest": manifest("hello", 1000), "package": package}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["field"], "manifest.processes.web.instances");
    let r = s
        .post("/v1/apps/other/deploys", &json!({"manifest": manifest("hello", 1), "package": package}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["field"], "manifest.name");
    let wrong_size = json!({"digest": package["digest"], "size": 4});
    let r = s
        .post("/v1/apps/hello/deploys", &json!({"manifest": manifest("hello", 1), "package": wrong_size}))
        .await;
    assert_eq!(r.body["field"], "package.size", "{}", r.body);
    // None of it made an app.
    assert_eq!(s.get("/v1/apps/hello").await.status, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn a_rollout_with_no_host_fails_and_leaves_a_failed_release() {
    let s = TestServer::start().await;
    let package = upload(&s, b"pkg").await.body["package"].clone();
    let r = s
        .post("/v1/apps/hello/deploys", &json!({"manifest": manifest("hello", 2), "package": package}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    let task = r.body["task"].as_str().expect("task").to_string();
    let mut state = Value::Null;
    for _ in 0..100 {
        let t = s.get(&format!("/v1/tasks/{task}")).await.body;
        state = t["spec"]["state"].clone();
        if state == "failed" {
            assert!(t["spec"]["error"].as_str().unwrap_or("").contains("no ring 1 host is up"), "{t}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state, "failed");
    let releases = s.get("/v1/apps/hello/releases").await;
    assert_eq!(releases.status, StatusCode::OK);
    assert_eq!(releases.body["items"][0]["spec"]["state"], "failed");
    let status = s.get("/v1/apps/hello").await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.body["version"], Value::Null, "nothing is live");
    // Nothing to scale, restart or roll back to; logs need the bus.
    assert_eq!(
        s.post("/v1/apps/hello/scale", &json!({"processes": {"web": 3}})).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(s.post("/v1/apps/hello/rollback", &json!({})).await.status, StatusCode::CONFLICT);
    assert_eq!(s.get("/v1/apps/hello/logs").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.get("/v1/apps/nope").await.status, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn a_port_is_held_by_one_node_until_it_goes() {
    let s = TestServer::start().await;
    let m = s.create_id("nodes", machine("m")).await;
    let host = s.create_id("nodes", node(1, "h", &m)).await;
    let with_port = |label: &str| {
        let mut n = node(2, label, &host);
        n["spec"]["run"] = json!({"command": ["sleep", "1"], "port": 20001});
        n
    };
    let first = s.create("nodes", with_port("a")).await;
    let r = s.post("/v1/nodes", &with_port("b")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["field"], "spec.run.port");
    assert!(r.body["detail"].as_str().unwrap_or("").contains(&uuid_of(&first)), "{}", r.body);
    // The port cannot be changed in place.
    let mut spec = first["spec"].clone();
    spec["run"]["port"] = json!(20002);
    let r = s
        .put(
            &format!("/v1/nodes/{}", uuid_of(&first)),
            &json!({"revision": first["revision"], "label": "a", "spec": spec}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(s.delete(&format!("/v1/nodes/{}", uuid_of(&first))).await.status, StatusCode::NO_CONTENT);
    s.create("nodes", with_port("b")).await;
    s.stop().await;
}

/// One task at a time changes an app, even when the check that none runs is raced: the task's
/// name is the app's slot in the store's unique index, so the second start fails its compare,
/// keeps no release, and a task that ended without giving up the name gives it up.
#[tokio::test]
async fn an_apps_running_name_admits_one_rollout_and_is_given_back() {
    let s = TestServer::start().await;
    let package = upload(&s, b"pkg").await.body["package"].clone();
    // A task holding the app's running name that the check does not see (no app label): what a
    // start racing this one on another server looks like from here.
    let holder = s
        .create(
            "tasks",
            json!({"ring": 2, "label": "hello-rollout", "spec": {"type": "deploy", "state": "running"}}),
        )
        .await;
    let deploy = json!({"manifest": manifest("hello", 1), "package": package});
    let r = s.post("/v1/apps/hello/deploys", &deploy).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap_or("").contains("already being changed"), "{}", r.body);
    let releases = s.get("/v1/apps/hello/releases").await;
    assert_eq!(
        releases.body["items"].as_array().map_or(0, Vec::len),
        0,
        "no release kept: {}",
        releases.body
    );

    // Ended without giving the name up (cancelled through the API): the next start takes it over.
    s.update("tasks", &holder, json!({"type": "deploy", "state": "cancelled"})).await;
    let r = s.post("/v1/apps/hello/deploys", &deploy).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let task = r.body["task"].as_str().expect("task").to_string();
    let old = s.fetch("tasks", &uuid_of(&holder)).await;
    assert_ne!(old["label"], "hello-rollout", "{old}");
    // The rollout fails (no host) and gives the name back with its end: the next one starts.
    let mut t = Value::Null;
    for _ in 0..100 {
        t = s.get(&format!("/v1/tasks/{task}")).await.body;
        if t["spec"]["state"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(t["spec"]["state"], "failed", "{t}");
    assert!(t["label"].as_str().is_some_and(|l| l.starts_with("hello-") && l != "hello-rollout"), "{t}");
    let r = s.post("/v1/apps/hello/deploys", &deploy).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    s.stop().await;
}

/// The task of `id` once it has ended.
async fn ended(s: &TestServer, id: &str) -> Value {
    let mut t = Value::Null;
    for _ in 0..200 {
        t = s.get(&format!("/v1/tasks/{id}")).await.body;
        if matches!(t["spec"]["state"].as_str(), Some("failed" | "succeeded" | "cancelled")) {
            return t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("task {id} did not end: {t}");
}

/// Rollouts are carried out by the rollout controller from what their tasks record alone: a
/// task a stopped run of the control plane had claimed is taken over by its step, a task no run
/// has claimed is run from its plan.
#[tokio::test(flavor = "multi_thread")]
async fn the_rollout_controller_runs_recorded_tasks_and_takes_over_a_stopped_runs() {
    let s = TestServer::start().await;
    let package = upload(&s, b"pkg").await.body["package"].clone();
    let r = s
        .post("/v1/apps/hello/deploys", &json!({"manifest": manifest("hello", 1), "package": package}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let release = r.body["release"].as_str().expect("release").to_string();
    let first = ended(&s, r.body["task"].as_str().expect("task")).await;
    assert_eq!(first["spec"]["state"], "failed", "{first}");
    // The plan the API recorded (the operator's app may run unsandboxed), and who ran it.
    assert_eq!(first["spec"]["rollout"], json!({"mode": "release", "isolation": "optional"}), "{first}");
    let run = first["spec"]["runner"].as_str().expect("the run that carried it out").to_string();

    // Cut at `starting` by a run that stopped: taken over, and undone.
    let stopped_run = uuid::Uuid::new_v4().to_string();
    let task = |runner: Option<&str>, subject: &str| {
        json!({"ring": 2, "label": "hello-rollout", "labels": {"enjin.dev/app": "hello"}, "spec": {
            "type": "deploy", "state": "running", "subject": subject, "step": "starting",
            "rollout": {"mode": "release", "isolation": "required"}, "runner": runner}})
    };
    let stale = s.create("tasks", task(Some(&stopped_run), &release)).await;
    let stale = ended(&s, &uuid_of(&stale)).await;
    assert_eq!(stale["spec"]["state"], "failed", "{stale}");
    assert!(stale["spec"]["error"].as_str().unwrap_or("").contains("interrupted"), "{stale}");
    assert_eq!(stale["spec"]["runner"], run.as_str(), "taken over by the current run: {stale}");
    assert_ne!(stale["label"], "hello-rollout", "the app's running name is given back: {stale}");

    // Never taken up: run from its plan (and, with no host, failed as a deploy is).
    let fresh = s.create("tasks", task(None, &release)).await;
    let fresh = ended(&s, &uuid_of(&fresh)).await;
    assert!(fresh["spec"]["error"].as_str().unwrap_or("").contains("no ring 1 host is up"), "{fresh}");

    s.stop().await;
}
