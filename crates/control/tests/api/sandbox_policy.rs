//! Instances are recorded with the strategy their host really runs them by, and only the
//! operator's system account may run them unsandboxed: a tenant's deploy, scale or restart
//! that would start instances where no host can sandbox is refused (409 `no-sandbox`), and a
//! tenant's instances go only to hosts that sandbox.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{account, machine, membership};
use crate::harness::{PATIENCE, Reply, TestServer, assert_problem_status, send, uuid_of};

/// A ring 1 host under `machine` that says whether it sandboxes, with a live heartbeat.
async fn host(s: &TestServer, machine: &str, label: &str, sandbox: &str) -> String {
    let body = json!({"ring": 1, "label": label, "labels": {"enjin.dev/sandbox": sandbox},
        "spec": {"parent": machine, "strategy": "process"}});
    let host = s.create_id("nodes", body).await;
    observe(s, 1, &host, "heartbeat").await;
    host
}

async fn observe(s: &TestServer, ring: u8, node: &str, strategy: &str) {
    s.create(
        "node-observations",
        json!({"ring": ring, "spec": {
            "node": node, "strategy": strategy, "state": "running", "observed_at": chrono::Utc::now()
        }}),
    )
    .await;
}

/// A manifest whose instances are healthy as soon as their process runs.
fn manifest(name: &str, instances: u32) -> Value {
    json!({"name": name, "processes": {"web": {
        "command": "sleep 1000", "instances": instances, "health": {"type": "process"}
    }}})
}

/// A principal of the tenant account `acme` with the admin role: it may deploy.
async fn tenant_token(s: &TestServer) -> String {
    let acme = s.create_id("accounts", account("acme")).await;
    let (roles, _) = s.list("roles", &[("label", "admin")]).await;
    let admin = uuid_of(&roles[0]);
    s.create("memberships", membership("alice", &acme, &admin)).await;
    s.issue("alice").await["token"].as_str().expect("token").to_string()
}

async fn as_tenant(s: &TestServer, token: &str, path: &str, body: &Value) -> Reply {
    send(s.http.request(Method::POST, s.url(path)).bearer_auth(token).json(body)).await
}

/// The app's instance nodes, once there are `count`.
async fn instances(s: &TestServer, app: &str, count: usize) -> Vec<Value> {
    let selector = format!("enjin.dev/app={app}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (nodes, _) = s.list("nodes", &[("ring", "2"), ("selector", &selector)]).await;
        if nodes.len() >= count {
            return nodes;
        }
        assert!(tokio::time::Instant::now() < deadline, "{app} has {} instances, not {count}", nodes.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn task_done(s: &TestServer, task: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let t = s.fetch("tasks", task).await;
        match t["spec"]["state"].as_str() {
            Some("succeeded") => return t,
            Some("failed") => panic!("task {task} failed: {t}"),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "task {task} not done: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[track_caller]
fn assert_no_sandbox(r: &Reply, change: &str, app: &str) {
    assert_problem_status(r, 409);
    assert_eq!(r.body["type"], "urn:enjin:problem:no-sandbox", "{}", r.body);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    for part in [
        &format!("app {app}: {change} refused"),
        "no ring 1 host can sandbox",
        "as plain processes",
        "principal alice is not one",
        "system account",
    ] {
        assert!(detail.contains(part), "{part:?} not in {detail:?}");
    }
}

#[tokio::test]
async fn tenants_are_refused_where_no_host_can_sandbox_and_the_operator_runs_plain_processes() {
    let s = TestServer::start().await;
    let m = s.create_id("nodes", machine("m")).await;
    let plain = host(&s, &m, "h-plain", "none").await;
    let alice = tenant_token(&s).await;
    let upload = |token: Option<&str>| {
        let rb = match token {
            Some(t) => s.http.request(Method::POST, s.url("/v1/packages")).bearer_auth(t),
            None => s.request(Method::POST, "/v1/packages"),
        };
        rb.header("Content-Type", "application/zstd").body(b"pkg".to_vec())
    };
    // Each account uploads its own: a package belongs to the account that uploaded it.
    let package = send(upload(Some(&alice))).await.body["package"].clone();
    send(upload(None)).await;

    // A tenant's deploy: refused, and nothing made.
    let deploy = json!({"manifest": manifest("hello", 1), "package": package});
    let r = as_tenant(&s, &alice, "/v1/apps/hello/deploys", &deploy).await;
    assert_no_sandbox(&r, "deploy", "hello");
    assert_eq!(s.get("/v1/apps/hello").await.status, StatusCode::NOT_FOUND);

    // The system account's deploy runs, as plain processes, and says so.
    let r = s.post("/v1/apps/hello/deploys", &deploy).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let task = r.body["task"].as_str().expect("task").to_string();
    let nodes = instances(&s, "hello", 1).await;
    assert_eq!(nodes[0]["spec"]["strategy"], "process", "{}", nodes[0]);
    assert_eq!(nodes[0]["spec"]["parent"], plain.as_str());
    observe(&s, 2, &uuid_of(&nodes[0]), "process").await;
    let t = task_done(&s, &task).await;
    let said = t["spec"]["progress"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("not isolated") && said.contains("plain processes"), "{said}");
    let status = s.get("/v1/apps/hello").await.body;
    assert_eq!(status["instances"][0]["strategy"], "process", "{status}");

    // The operator's app is not the tenant's to see, let alone scale.
    let r = as_tenant(&s, &alice, "/v1/apps/hello/scale", &json!({"processes": {"web": 2}})).await;
    assert_problem_status(&r, 404);

    // With a host that sandboxes, the tenant's instances run there, and only there.
    let sandboxing = host(&s, &m, "h-sandbox", "unix-user").await;
    let r = as_tenant(
        &s,
        &alice,
        "/v1/apps/shop/deploys",
        &json!({"manifest": manifest("shop", 2), "package": package}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let shop = instances(&s, "shop", 2).await;
    for n in &shop {
        assert_eq!(n["spec"]["strategy"], "unix-user", "{n}");
        assert_eq!(n["spec"]["parent"], sandboxing.as_str(), "{n}");
        observe(&s, 2, &uuid_of(n), "process").await;
    }
    task_done(&s, r.body["task"].as_str().expect("task")).await;

    // Once no host sandboxes any more, the tenant may not start more of them; the change
    // is refused before anything starts.
    let h = s.fetch("nodes", &sandboxing).await;
    let req = json!({"revision": h["revision"], "label": h["label"],
        "labels": {"enjin.dev/sandbox": "none"}, "spec": h["spec"]});
    assert_eq!(s.put(&format!("/v1/nodes/{sandboxing}"), &req).await.status, StatusCode::OK);
    let r = as_tenant(&s, &alice, "/v1/apps/shop/scale", &json!({"processes": {"web": 3}})).await;
    assert_no_sandbox(&r, "scale", "shop");
    let r = as_tenant(&s, &alice, "/v1/apps/shop/restart", &json!({})).await;
    assert_no_sandbox(&r, "restart", "shop");
    assert_eq!(instances(&s, "shop", 2).await.len(), 2, "nothing was started");
    s.stop().await;
}
