//! Accounts, tried as a hostile tenant and a greedy principal would: nobody reads, watches or
//! changes another account's objects, and nobody grants, mints or derives more than they hold.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{account, machine, membership, network};
use crate::harness::{PATIENCE, Reply, TestServer, assert_problem_status, call, send, uuid_of};

async fn role_id(s: &TestServer, label: &str) -> String {
    let (roles, _) = s.list("roles", &[("label", label)]).await;
    uuid_of(&roles[0])
}

/// A role of the system account (the operator's) with `permissions`.
async fn system_role(s: &TestServer, label: &str, permissions: Value) -> String {
    s.create_id("roles", json!({"ring": 0, "label": label, "spec": {"permissions": permissions}})).await
}

async fn system_account(s: &TestServer) -> String {
    let (accounts, _) = s.list("accounts", &[("label", "system")]).await;
    uuid_of(&accounts[0])
}

/// A token for `principal`, made by the admin.
async fn token_for(s: &TestServer, principal: &str) -> String {
    s.issue(principal).await["token"].as_str().expect("a token").to_string()
}

/// A tenant account whose principal `<label>-admin` holds the built-in admin role in it.
async fn tenant(s: &TestServer, label: &str) -> (String, String) {
    let id = s.create_id("accounts", account(label)).await;
    let admin = role_id(s, "admin").await;
    let principal = format!("{label}-admin");
    s.create("memberships", membership(&principal, &id, &admin)).await;
    (id, token_for(s, &principal).await)
}

/// A ring 1 host `h` that sandboxes instances (`enjin.dev/sandbox=unix-user`), on a new
/// machine; its uuid.
async fn sandbox_host(s: &TestServer) -> String {
    let m = s.create_id("nodes", machine("m")).await;
    let host = json!({"ring": 1, "label": "h", "labels": {"enjin.dev/sandbox": "unix-user"},
        "spec": {"parent": m, "strategy": "process"}});
    s.create_id("nodes", host).await
}

/// Give `account` (labelled as `tenant` labels it) this quota, as the operator.
async fn set_quota(s: &TestServer, account: &str, quota: Value) {
    let acct = s.fetch("accounts", account).await;
    let body = json!({"revision": acct["revision"], "label": acct["label"], "spec": {"quota": quota}});
    assert_eq!(s.put(&format!("/v1/accounts/{account}"), &body).await.status, StatusCode::OK);
}

/// Upload `bytes` as a package with `token`; the package's reference.
async fn upload_as(s: &TestServer, token: &str, bytes: &[u8]) -> Value {
    let r = send(
        s.http
            .post(s.url("/v1/packages"))
            .bearer_auth(token)
            .header("Content-Type", "application/zstd")
            .body(bytes.to_vec()),
    )
    .await;
    assert!(r.status.is_success(), "upload: {}", r.body);
    r.body["package"].clone()
}

fn ids(r: &Reply) -> Vec<String> {
    r.body["items"].as_array().map(|a| a.iter().map(uuid_of).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_that_may_create_tokens_cannot_mint_an_admin() {
    let s = TestServer::start().await;
    let maker = system_role(&s, "token-maker", json!([{"verbs": ["create"], "resources": ["token"]}])).await;
    let system = system_account(&s).await;
    s.create("memberships", membership("bob", &system, &maker)).await;
    let bob = token_for(&s, "bob").await;

    // A token for the admin principal holds no more than bob does …
    let r = call(&s, &bob, Method::POST, "/v1/tokens", Some(&json!({"principal": "admin"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let minted = r.body["token"].as_str().expect("token").to_string();
    assert_eq!(r.body["ceiling"], json!({"*": ["create token"]}), "{}", r.body);
    for path in ["/v1/nodes", "/v1/tokens", "/v1/roles", "/v1/apps"] {
        let r = call(&s, &minted, Method::GET, path, None).await;
        assert_problem_status(&r, 403);
    }
    let r = call(&s, &minted, Method::POST, "/v1/roles", Some(&json!({"ring": 0, "label": "x", "spec": {}})))
        .await;
    assert_problem_status(&r, 403);
    // … and asking for the admin role outright is refused, naming what bob lacks.
    let admin = role_id(&s, "admin").await;
    let r =
        call(&s, &bob, Method::POST, "/v1/tokens", Some(&json!({"principal": "admin", "role": admin}))).await;
    assert_problem_status(&r, 403);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("may not grant what it does not hold") && detail.contains("every account"),
        "{detail}"
    );
    // The minted token cannot mint its way back up either.
    let r =
        call(&s, &minted, Method::POST, "/v1/tokens", Some(&json!({"principal": "admin", "role": admin})))
            .await;
    assert_problem_status(&r, 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_memberships_grant_only_what_their_writer_holds() {
    let s = TestServer::start().await;
    let (acme, _) = tenant(&s, "acme").await;
    // Carol manages people in acme: she may write roles and memberships and read nodes there.
    let manager = s
        .create_id(
            "roles",
            json!({"ring": 0, "label": "people", "account": acme, "spec": {"permissions": [
                {"verbs": ["create", "update", "get", "list"], "resources": ["role", "membership"]},
                {"verbs": ["get", "list"], "resources": ["node"]}
            ]}}),
        )
        .await;
    s.create("memberships", membership("carol", &acme, &manager)).await;
    let carol = token_for(&s, "carol").await;

    // A role with what she holds: made. One with more: refused, and nothing is made.
    let reader = json!({"ring": 0, "label": "reader", "spec": {"permissions": [
        {"verbs": ["get"], "resources": ["node"]}]}});
    let r = call(&s, &carol, Method::POST, "/v1/roles", Some(&reader)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["account"], acme.as_str(), "made in her own account");
    let reader_id = uuid_of(&r.body);
    let writer = json!({"ring": 0, "label": "writer", "spec": {"permissions": [
        {"verbs": ["*"], "resources": ["node"]}]}});
    let r = call(&s, &carol, Method::POST, "/v1/roles", Some(&writer)).await;
    assert_problem_status(&r, 403);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("create node"), "{}", r.body);

    // Widening a role she can update past what she holds: refused.
    let role = call(&s, &carol, Method::GET, &format!("/v1/roles/{reader_id}"), None).await.body;
    let wider = json!({"revision": role["revision"], "label": "reader", "spec": {"permissions": [
        {"verbs": ["get", "delete"], "resources": ["node"]}]}});
    let r = call(&s, &carol, Method::PUT, &format!("/v1/roles/{reader_id}"), Some(&wider)).await;
    assert_problem_status(&r, 403);

    // Binding the built-in admin role: refused; binding her reader role: made.
    let admin = role_id(&s, "admin").await;
    let r = call(&s, &carol, Method::POST, "/v1/memberships", Some(&membership("dave", &acme, &admin))).await;
    assert_problem_status(&r, 403);
    let r =
        call(&s, &carol, Method::POST, "/v1/memberships", Some(&membership("dave", &acme, &reader_id))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Memberships in the system account would hold everywhere: refused, as is binding a role
    // of acme there.
    let system = system_account(&s).await;
    let r = call(&s, &carol, Method::POST, "/v1/memberships", Some(&membership("dave", &system, &reader_id)))
        .await;
    assert!(r.status == StatusCode::FORBIDDEN || r.status == StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_neither_see_nor_touch_each_other() {
    let s = TestServer::start().await;
    let (acme, a) = tenant(&s, "acme").await;
    let (globex, g) = tenant(&s, "globex").await;
    let tier = |label: &str| json!({"ring": 2, "label": label, "spec": {"description": "x"}});

    // The same names in two accounts do not collide, and say nothing about each other.
    let r = call(&s, &a, Method::POST, "/v1/tiers", Some(&tier("web"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let acme_web = uuid_of(&r.body);
    let r = call(&s, &g, Method::POST, "/v1/tiers", Some(&tier("web"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let globex_web = uuid_of(&r.body);

    // Lists show one's own; gets, updates and deletes of the other's answer 404.
    let listed = ids(&call(&s, &a, Method::GET, "/v1/tiers", None).await);
    assert_eq!(listed, vec![acme_web.clone()]);
    let r = call(&s, &a, Method::GET, &format!("/v1/tiers/{globex_web}"), None).await;
    assert_problem_status(&r, 404);
    let missing = call(&s, &a, Method::GET, &format!("/v1/tiers/{}", uuid::Uuid::new_v4()), None).await;
    assert_eq!(r.body["title"], missing.body["title"]);
    let update = json!({"revision": 1, "label": "web", "spec": {"description": "mine now"}});
    let r = call(&s, &a, Method::PUT, &format!("/v1/tiers/{globex_web}"), Some(&update)).await;
    assert_problem_status(&r, 404);
    let r = call(&s, &a, Method::DELETE, &format!("/v1/tiers/{globex_web}"), None).await;
    assert_problem_status(&r, 404);
    assert_eq!(s.fetch("tiers", &globex_web).await["spec"]["description"], "x");

    // Objects cannot be made in, or refer into, the other's account.
    let mut into = tier("sneaky");
    into["account"] = json!(globex);
    let r = call(&s, &a, Method::POST, "/v1/tiers", Some(&into)).await;
    assert_problem_status(&r, 403);
    let m = s.create_id("nodes", machine("m")).await;
    let host = json!({"ring": 1, "label": "h", "labels": {"enjin.dev/sandbox": "unix-user"},
        "spec": {"parent": m, "strategy": "process"}});
    let h = s.create_id("nodes", host).await;
    let node = json!({"ring": 2, "label": "n", "spec": {"parent": h, "strategy": "unix-user",
        "tiers": [globex_web], "run": {"command": ["true"]}}});
    let r = call(&s, &a, Method::POST, "/v1/nodes", Some(&node)).await;
    assert_problem_status(&r, 422);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("does not exist"), "{}", r.body);
    // Nor the operator's infrastructure rings.
    let r =
        call(&s, &a, Method::POST, "/v1/tiers", Some(&json!({"ring": 1, "label": "t", "spec": {}}))).await;
    assert_problem_status(&r, 422);
    // Accounts: a tenant reads its own, and cannot raise its quota.
    let accounts = ids(&call(&s, &a, Method::GET, "/v1/accounts", None).await);
    assert_eq!(accounts, vec![acme.clone()]);
    let mine = call(&s, &a, Method::GET, &format!("/v1/accounts/{acme}"), None).await.body;
    let raise =
        json!({"revision": mine["revision"], "label": "acme", "spec": {"quota": {"instances": 1000}}});
    let r = call(&s, &a, Method::PUT, &format!("/v1/accounts/{acme}"), Some(&raise)).await;
    assert_problem_status(&r, 403);

    // A watch of everything carries only the watcher's account's objects.
    let from = s.revision().await + 1;
    let r = call(&s, &g, Method::POST, "/v1/tiers", Some(&tier("api"))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = call(&s, &a, Method::POST, "/v1/tiers", Some(&tier("api"))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let acme_api = uuid_of(&r.body);
    let seen = watched(&s, &a, from, 2).await;
    assert_eq!(seen, vec![acme_api], "acme's watch carries acme's tier only");
    s.stop().await;
}

/// A host that has just reported in, so that placement uses it.
async fn heartbeat(s: &TestServer, host: &str) {
    let body = json!({"ring": 1, "spec": {"node": host, "strategy": "heartbeat", "state": "running",
        "observed_at": chrono::Utc::now()}});
    s.create("node-observations", body).await;
}

/// The uuids of objects a watch from `from` carries, reading `batches` batches.
async fn watched(s: &TestServer, token: &str, from: i64, batches: usize) -> Vec<String> {
    let resp = s
        .streaming
        .get(s.url(&format!("/v1/watch?from={from}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("watch");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while text.matches("event: batch").count() < batches {
        use futures_util::StreamExt;
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("batches in time");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream open").expect("chunk")));
    }
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let batch: Value = serde_json::from_str(line).expect("a batch");
        for e in batch["events"].as_array().into_iter().flatten() {
            seen.push(uuid_of(&e["object"]));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_apps_are_their_own() {
    let s = TestServer::start().await;
    sandbox_host(&s).await;
    let (_, a) = tenant(&s, "acme").await;
    let (_, g) = tenant(&s, "globex").await;
    let upload = |token: &str| {
        s.http
            .post(s.url("/v1/packages"))
            .bearer_auth(token.to_string())
            .header("Content-Type", "application/zstd")
            .body(b"acme's code".to_vec())
    };
    let package = send(upload(&a)).await.body["package"].clone();
    let manifest = |name: &str| {
        json!({"manifest": {"name": name, "env": {"SECRET": "hunter2"}, "processes": {"web": {
            "command": "sleep 1000", "instances": 1, "health": {"type": "process"}}}}, "package": package})
    };
    let r = call(&s, &a, Method::POST, "/v1/apps/shop/deploys", Some(&manifest("shop"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);

    // Globex cannot see, read, deploy, scale, restart or roll back acme's app …
    for (method, path) in [
        (Method::GET, "/v1/apps/shop"),
        (Method::GET, "/v1/apps/shop/releases"),
        (Method::GET, "/v1/apps/shop/logs"),
    ] {
        assert_problem_status(&call(&s, &g, method, path, None).await, 404);
    }
    for (path, body) in [
        ("/v1/apps/shop/scale", json!({"processes": {"web": 3}})),
        ("/v1/apps/shop/restart", json!({})),
        ("/v1/apps/shop/rollback", json!({})),
    ] {
        assert_problem_status(&call(&s, &g, Method::POST, path, Some(&body)).await, 404);
    }
    let apps = call(&s, &g, Method::GET, "/v1/apps", None).await;
    assert_eq!(apps.body["items"], json!([]), "{}", apps.body);
    // … nor take its name, nor deploy acme's package (its code) under another name.
    assert_problem_status(
        &call(&s, &g, Method::POST, "/v1/apps/shop/deploys", Some(&manifest("shop"))).await,
        409,
    );
    let r = call(&s, &g, Method::POST, "/v1/apps/copy/deploys", Some(&manifest("copy"))).await;
    assert_problem_status(&r, 422);
    assert_eq!(r.body["field"], "package.digest");
    // Its releases and instances, even listed by kind, are not there for globex.
    assert_eq!(ids(&call(&s, &g, Method::GET, "/v1/releases", None).await), Vec::<String>::new());
    assert_eq!(ids(&call(&s, &g, Method::GET, "/v1/nodes?ring=2", None).await), Vec::<String>::new());

    // Within acme, a viewer sees the release but not its secrets.
    let (accounts, _) = s.list("accounts", &[("label", "acme")]).await;
    let viewer = role_id(&s, "viewer").await;
    s.create("memberships", membership("eve", &uuid_of(&accounts[0]), &viewer)).await;
    let eve = token_for(&s, "eve").await;
    let releases = call(&s, &eve, Method::GET, "/v1/apps/shop/releases", None).await;
    assert_eq!(releases.status, StatusCode::OK, "{}", releases.body);
    assert_eq!(releases.body["items"][0]["spec"]["manifest"]["env"]["SECRET"], "(hidden)");
    let releases = call(&s, &a, Method::GET, "/v1/apps/shop/releases", None).await;
    assert_eq!(releases.body["items"][0]["spec"]["manifest"]["env"]["SECRET"], "hunter2");
    assert_problem_status(
        &call(&s, &eve, Method::POST, "/v1/apps/shop/restart", Some(&json!({}))).await,
        403,
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_nodes_run_sandboxed_on_hosts_that_sandbox() {
    let s = TestServer::start().await;
    let m = s.create_id("nodes", machine("m")).await;
    let host = |label: &str, sandbox: &str| {
        json!({"ring": 1, "label": label, "labels": {"enjin.dev/sandbox": sandbox},
            "spec": {"parent": m, "strategy": "process"}})
    };
    let safe = s.create_id("nodes", host("safe", "unix-user")).await;
    let plain = s.create_id("nodes", host("plain", "none")).await;
    let (_, a) = tenant(&s, "acme").await;
    let node = |parent: &str, strategy: &str| {
        json!({"ring": 2, "label": format!("n-{strategy}"), "spec": {"parent": parent, "strategy": strategy,
            "run": {"command": ["sleep", "1000"]}}})
    };
    let r = call(&s, &a, Method::POST, "/v1/nodes", Some(&node(&safe, "process"))).await;
    assert_problem_status(&r, 422);
    assert_eq!(r.body["field"], "spec.strategy");
    let r = call(&s, &a, Method::POST, "/v1/nodes", Some(&node(&plain, "unix-user"))).await;
    assert_problem_status(&r, 422);
    assert_eq!(r.body["field"], "spec.parent");
    let r = call(&s, &a, Method::POST, "/v1/nodes", Some(&node(&safe, "unix-user"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Updating it into a plain process is refused too.
    let n = r.body;
    let mut spec = n["spec"].clone();
    spec["strategy"] = json!("process");
    let req = json!({"revision": n["revision"], "label": n["label"], "spec": spec});
    let r = call(&s, &a, Method::PUT, &format!("/v1/nodes/{}", uuid_of(&n)), Some(&req)).await;
    assert_problem_status(&r, 422);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_narrow_and_never_outlive_their_maker() {
    let s = TestServer::start().await;
    let (acme, a) = tenant(&s, "acme").await;
    let viewer = role_id(&s, "viewer").await;

    // A token narrowed to the viewer role reads but cannot write.
    let req = json!({"principal": "acme-admin", "role": viewer, "account": acme, "description": "ci"});
    let r = call(&s, &a, Method::POST, "/v1/tokens", Some(&req)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let narrow = r.body["token"].as_str().expect("token").to_string();
    assert_eq!(call(&s, &narrow, Method::GET, "/v1/tiers", None).await.status, StatusCode::OK);
    let tier = json!({"ring": 2, "label": "t", "spec": {}});
    assert_problem_status(&call(&s, &narrow, Method::POST, "/v1/tiers", Some(&tier)).await, 403);

    // An expiring token works, then stops, with a 401 that says so.
    let req = json!({"principal": "acme-admin", "expires_in_seconds": 1});
    let r = call(&s, &a, Method::POST, "/v1/tokens", Some(&req)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let short = r.body["token"].as_str().expect("token").to_string();
    assert_eq!(call(&s, &short, Method::GET, "/v1/tiers", None).await.status, StatusCode::OK);
    // A token it makes cannot outlive it.
    let longer = json!({"principal": "acme-admin", "expires_in_seconds": 3600});
    assert_problem_status(&call(&s, &short, Method::POST, "/v1/tokens", Some(&longer)).await, 403);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = call(&s, &short, Method::GET, "/v1/tiers", None).await;
    assert_problem_status(&r, 401);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("expired"), "{}", r.body);

    // Lists show acme's tokens to acme, with their maker, and when they were last used.
    s.auth.record_use().await.expect("record use");
    let listed = call(&s, &a, Method::GET, "/v1/tokens", None).await.body;
    let items = listed["items"].as_array().expect("items");
    assert!(items.iter().all(|t| t["account"] == acme.as_str()), "{listed}");
    assert!(items.iter().any(|t| t["description"] == "ci" && t["created_by"] == "acme-admin"), "{listed}");
    assert!(items.iter().any(|t| t["last_used_at"].is_string()), "{listed}");
    // The admin's token is not acme's to see, nor to revoke.
    let all = s.get("/v1/tokens").await.body;
    let admin_token = all["items"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["principal"] == "admin"))
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .expect("the admin's token");
    let r = call(&s, &a, Method::DELETE, &format!("/v1/tokens/{admin_token}"), None).await;
    assert_problem_status(&r, 404);
    // Revoking its own works at once.
    let id = items
        .iter()
        .find(|t| t["description"] == "ci")
        .map(|t| t["id"].as_str().unwrap_or_default().to_string());
    let id = id.expect("the ci token");
    assert_eq!(
        call(&s, &a, Method::DELETE, &format!("/v1/tokens/{id}"), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_problem_status(&call(&s, &narrow, Method::GET, "/v1/tiers", None).await, 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_refuse_what_goes_past_them_naming_the_quota() {
    let s = TestServer::start().await;
    let host = sandbox_host(&s).await;
    let (acme, a) = tenant(&s, "acme").await;
    heartbeat(&s, &host).await;
    set_quota(&s, &acme, json!({"apps": 1, "instances": 2, "package_bytes": 100})).await;

    let upload = |bytes: Vec<u8>| {
        s.http
            .post(s.url("/v1/packages"))
            .bearer_auth(a.clone())
            .header("Content-Type", "application/zstd")
            .body(bytes)
    };
    let r = send(upload(vec![7u8; 101])).await;
    assert_problem_status(&r, 403);
    assert_eq!(r.body["type"], "urn:enjin:problem:quota-exceeded");
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("package_bytes is 100"), "{}", r.body);
    let package = send(upload(vec![7u8; 60])).await.body["package"].clone();

    let deploy = |name: &str, n: u32| {
        json!({"manifest": {"name": name, "processes": {"web": {"command": "sleep 1000", "instances": n,
            "health": {"type": "process"}}}}, "package": package})
    };
    let r = call(&s, &a, Method::POST, "/v1/apps/shop/deploys", Some(&deploy("shop", 3))).await;
    assert_problem_status(&r, 403);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("quota instances is 2") && detail.contains("would use 3"), "{detail}");
    let r = call(&s, &a, Method::POST, "/v1/apps/shop/deploys", Some(&deploy("shop", 2))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let r = call(&s, &a, Method::POST, "/v1/apps/blog/deploys", Some(&deploy("blog", 1))).await;
    assert_problem_status(&r, 403);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("quota apps is 1"), "{}", r.body);

    // Status shows use against quota, to the tenant.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let st = call(&s, &a, Method::GET, "/v1/account-status", None).await.body;
        assert_eq!(st["items"].as_array().map(Vec::len), Some(1), "{st}");
        let usage = &st["items"][0]["usage"];
        if usage["instances"] == 2 {
            assert_eq!(usage["apps"], 1);
            assert_eq!(usage["package_bytes"], 60);
            assert_eq!(st["items"][0]["account"]["spec"]["quota"]["instances"], 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "instances never counted: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

/// Random grant chains through the real API: a principal holding a random role in a random
/// account writes a random role, binds it to the next principal in a random account, and mints
/// a token for a random principal with a random role and account. Whatever the server accepts,
/// nobody ends up holding, in any account, what the principal who granted it does not.
#[test]
fn grant_chains_never_escalate() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let s = rt.block_on(TestServer::start());
    let accounts: Vec<String> = rt.block_on(async {
        let mut ids = vec![system_account(&s).await];
        for label in ["acme", "globex"] {
            ids.push(s.create_id("accounts", account(label)).await);
        }
        ids
    });
    let verbs = ["get", "list", "create", "update", "delete"];
    let resources = ["node", "tier", "role", "membership", "token"];
    let perm = (0..verbs.len(), 0..resources.len()).prop_map(move |(v, r)| (verbs[v], resources[r]));
    let perms = proptest::collection::vec(perm, 0..12);
    // Half the granters may write roles, memberships and tokens at all.
    let granter = (perms.clone(), any::<bool>()).prop_map(|(mut p, writes)| {
        if writes {
            p.extend([("create", "role"), ("create", "membership"), ("create", "token")]);
        }
        p
    });
    // Half the asks are drawn from what the granter holds, where it holds it (most of them
    // should pass); the rest are drawn at large (most should not).
    let ask = (perms, 0..3usize, any::<bool>(), any::<u32>());
    let case = (granter, 0..3usize, ask, 0..3usize, any::<bool>());
    let mut runner = TestRunner::new(Config { cases: 64, ..Config::default() });
    let n = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&case, |(held, held_in, (asked, bind_in, within, mask), mint_in, mint_role)| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (asked, bind_in) = if within {
                (
                    held.iter()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << (i % 32)) != 0)
                        .map(|(_, p)| *p)
                        .collect(),
                    held_in,
                )
            } else {
                (asked, bind_in)
            };
            rt.block_on(chain(&s, &accounts, n, (held, held_in), (asked, bind_in), (mint_in, mint_role)));
            Ok(())
        })
        .expect("no escalation");
    let [bound, refused, minted] = [0, 1, 2].map(|i| OUTCOMES[i].load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        bound > 0 && refused > 0 && minted > 0,
        "chains tried both ways: {bound} bound, {refused} refused, {minted} minted"
    );
    rt.block_on(s.stop());
}

/// Memberships bound, grants refused, tokens minted, over all chains.
static OUTCOMES: [std::sync::atomic::AtomicU32; 3] = [
    std::sync::atomic::AtomicU32::new(0),
    std::sync::atomic::AtomicU32::new(0),
    std::sync::atomic::AtomicU32::new(0),
];

fn count(i: usize) {
    OUTCOMES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn permissions(perms: &[(&str, &str)]) -> Value {
    Value::Array(perms.iter().map(|(v, r)| json!({"verbs": [v], "resources": [r]})).collect())
}

async fn grants_of(s: &TestServer, token: &str) -> enjin_control::Grants {
    let p = s.auth.authenticate(Some(&format!("Bearer {token}"))).await.expect("a valid token");
    (*p.grants).clone()
}

/// One chain: p0 holds `held` in `accounts[held_in]`; p0 writes role `asked` in
/// `accounts[bind_in]` and binds it to p1; p0 mints a token for "admin" in `accounts[mint_in]`,
/// narrowed to its new role or not.
async fn chain(
    s: &TestServer,
    accounts: &[String],
    n: u32,
    (held, held_in): (Vec<(&str, &str)>, usize),
    (asked, bind_in): (Vec<(&str, &str)>, usize),
    (mint_in, mint_role): (usize, bool),
) {
    let (p0, p1) = (format!("p0-{n}"), format!("p1-{n}"));
    let role0 = s
        .create_id(
            "roles",
            json!({"ring": 0, "label": format!("r0-{n}"), "account": accounts[held_in],
                "spec": {"permissions": permissions(&held)}}),
        )
        .await;
    s.create("memberships", membership(&p0, &accounts[held_in], &role0)).await;
    let t0 = token_for(s, &p0).await;
    let g0 = grants_of(s, &t0).await;

    let body = json!({"ring": 0, "label": format!("r1-{n}"), "account": accounts[bind_in],
        "spec": {"permissions": permissions(&asked)}});
    let r = call(s, &t0, Method::POST, "/v1/roles", Some(&body)).await;
    let role1 = (r.status == StatusCode::CREATED).then(|| uuid_of(&r.body));
    if r.status == StatusCode::FORBIDDEN {
        count(1);
    }
    if let Some(role1) = &role1 {
        let r =
            call(s, &t0, Method::POST, "/v1/memberships", Some(&membership(&p1, &accounts[bind_in], role1)))
                .await;
        if r.status != StatusCode::CREATED {
            count(1);
        }
        if r.status == StatusCode::CREATED {
            count(0);
            // p1's token made by the admin holds exactly what its memberships grant.
            let g1 = grants_of(s, &token_for(s, &p1).await).await;
            assert!(g0.lacks(&g1).is_empty(), "p1 holds {:?} that p0 lacks", g0.lacks(&g1));
        }
    }
    let mut req = json!({"principal": "admin", "account": accounts[mint_in]});
    if mint_role && let Some(role1) = &role1 {
        req["role"] = json!(role1);
    }
    let r = call(s, &t0, Method::POST, "/v1/tokens", Some(&req)).await;
    if r.status == StatusCode::CREATED {
        count(2);
        let minted = grants_of(s, r.body["token"].as_str().expect("token")).await;
        assert!(
            g0.lacks(&minted).is_empty(),
            "a token p0 minted holds {:?} that p0 lacks",
            g0.lacks(&minted)
        );
    } else {
        assert!(matches!(r.status.as_u16(), 403 | 422), "{}", r.body);
    }
}

/// Cancel the rollout task at `path` as `token`: its state to `cancelled`, nothing else. The
/// rollout writes its progress meanwhile, so a lost compare is tried again.
async fn cancel(s: &TestServer, token: &str, path: &str) -> Reply {
    let mut r = Reply { status: StatusCode::CONFLICT, headers: Default::default(), body: Value::Null };
    for _ in 0..20 {
        let held = call(s, token, Method::GET, path, None).await.body;
        let mut spec = held["spec"].clone();
        spec["state"] = json!("cancelled");
        let body = json!({"revision": held["revision"], "label": held["label"], "labels": held["labels"], "spec": spec});
        r = call(s, token, Method::PUT, path, Some(&body)).await;
        if r.status != StatusCode::CONFLICT {
            break;
        }
    }
    r
}

/// What the platform makes for a tenant's app, and carries out from the store, is not the
/// tenant's to write: a release rewritten to run another package, a rollout task recorded by
/// hand with an unsandboxed plan, a running rollout deleted out from under its controller. A
/// tenant may cancel its own rollout, and only that: the rollout stops and what it started is
/// removed. Nor does the controller run a task that names another account's release.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_write_the_platforms_releases_and_rollouts() {
    let s = TestServer::start().await;
    let host = sandbox_host(&s).await;
    heartbeat(&s, &host).await;
    let (_, a) = tenant(&s, "acme").await;
    let package = upload_as(&s, &a, b"acme's code").await;
    // No agent reports on the instances: the rollout waits for their health.
    let deploy = json!({"manifest": {"name": "shop", "processes": {"web": {"command": "sleep 1000",
        "instances": 2, "health": {"type": "process"}}}}, "package": package});
    let r = call(&s, &a, Method::POST, "/v1/apps/shop/deploys", Some(&deploy)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let release = r.body["release"].as_str().expect("release").to_string();
    let task = r.body["task"].as_str().expect("task").to_string();

    // The release's package and manifest are what its instances run.
    let current = call(&s, &a, Method::GET, &format!("/v1/releases/{release}"), None).await.body;
    let mut spec = current["spec"].clone();
    spec["package"]["digest"] = json!(format!("sha256:{}", "0".repeat(64)));
    let body = json!({"revision": current["revision"], "label": current["label"], "labels": current["labels"],
        "spec": spec});
    let r = call(&s, &a, Method::PUT, &format!("/v1/releases/{release}"), Some(&body)).await;
    assert_problem_status(&r, 422);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("kept by the platform"), "{}", r.body);

    // A rollout recorded by hand, to run unsandboxed.
    let planted = json!({"ring": 2, "label": "shop-x", "spec": {"type": "deploy", "state": "running",
        "subject": release, "step": "starting", "rollout": {"mode": "replace", "isolation": "optional"}}});
    let r = call(&s, &a, Method::POST, "/v1/tasks", Some(&planted)).await;
    assert_problem_status(&r, 422);

    // The rollout under way: its instances are made, and wait for a health nobody reports.
    let instances = || async { ids(&call(&s, &a, Method::GET, "/v1/nodes?ring=2", None).await) };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while instances().await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the rollout's instances were not made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = format!("/v1/tasks/{task}");
    let held = call(&s, &a, Method::GET, &path, None).await.body;
    assert_eq!(held["spec"]["state"], "running", "{held}");
    let put = |spec: Value| json!({"revision": held["revision"], "label": held["label"], "labels": held["labels"], "spec": spec});
    let mut unsandboxed = held["spec"].clone();
    unsandboxed["rollout"]["isolation"] = json!("optional");
    assert_problem_status(&call(&s, &a, Method::PUT, &path, Some(&put(unsandboxed))).await, 422);
    assert_problem_status(&call(&s, &a, Method::DELETE, &path, None).await, 409);
    let r = cancel(&s, &a, &path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Cancelled: the rollout stops, its instances go, its release is failed.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !instances().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the cancelled rollout's instances stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = call(&s, &a, Method::GET, &format!("/v1/releases/{release}"), None).await;
    assert_eq!(r.body["spec"]["state"], "failed", "{}", r.body);
    assert_eq!(call(&s, &a, Method::GET, &path, None).await.body["spec"]["state"], "cancelled");
    assert_eq!(call(&s, &a, Method::DELETE, &path, None).await.status, StatusCode::NO_CONTENT);

    // The operator's task naming acme's release, to run it unsandboxed: not run.
    let foreign = s
        .create(
            "tasks",
            json!({"ring": 2, "label": "foreign", "spec": {"type": "deploy", "state": "running",
                "subject": release, "step": "starting", "rollout": {"mode": "replace", "isolation": "optional"}}}),
        )
        .await;
    let mut t = Value::Null;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        t = s.fetch("tasks", &uuid_of(&foreign)).await;
        if t["spec"]["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t["spec"]["error"].as_str().unwrap_or_default().contains("names a release of another account"),
        "{t}"
    );
    s.stop().await;
}

/// A quota holds against deploys that race: two deploys of different apps in one account, each
/// within the quota alone but not together, are not both let through (the second is refused
/// by the quota or by the guard the first moved), and a rollout whose instances do not all
/// exist yet counts as what it will leave running.
#[tokio::test(flavor = "multi_thread")]
async fn racing_deploys_cannot_both_pass_a_quota() {
    let s = TestServer::start().await;
    let host = sandbox_host(&s).await;
    heartbeat(&s, &host).await;
    let (acme, a) = tenant(&s, "acme").await;
    set_quota(&s, &acme, json!({"instances": 2})).await;
    let package = upload_as(&s, &a, b"acme's code").await;
    let deploy = |name: &str, n: u32| {
        json!({"manifest": {"name": name, "processes": {"web": {"command": "sleep 1000", "instances": n,
            "health": {"type": "process"}}}}, "package": package})
    };
    for round in 0..5 {
        // A host that has not beaten for a while is not placed on: the rollouts would fail at once.
        heartbeat(&s, &host).await;
        let (one, two) = (format!("one{round}"), format!("two{round}"));
        let (p1, p2) = (format!("/v1/apps/{one}/deploys"), format!("/v1/apps/{two}/deploys"));
        let (d1, d2) = (deploy(&one, 2), deploy(&two, 2));
        let (r1, r2) = tokio::join!(
            call(&s, &a, Method::POST, &p1, Some(&d1)),
            call(&s, &a, Method::POST, &p2, Some(&d2)),
        );
        let accepted: Vec<&Reply> =
            [&r1, &r2].into_iter().filter(|r| r.status == StatusCode::ACCEPTED).collect();
        assert_eq!(accepted.len(), 1, "round {round}: {} / {}", r1.body, r2.body);
        let refused = if r1.status == StatusCode::ACCEPTED { &r2 } else { &r1 };
        assert!(matches!(refused.status.as_u16(), 403 | 409), "round {round}: {}", refused.body);
        // Still rolling out (no agent reports health), yet counted at its two instances.
        let r = call(&s, &a, Method::POST, "/v1/apps/third/deploys", Some(&deploy("third", 1))).await;
        let winner = accepted[0].body["task"].as_str().unwrap_or_default();
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "round {round}: {} (the winner: {}, the loser: {})",
            r.body,
            call(&s, &a, Method::GET, &format!("/v1/tasks/{winner}"), None).await.body,
            refused.body
        );
        // Cancel the winner so that the next round starts from nothing.
        let task = accepted[0].body["task"].as_str().expect("task").to_string();
        let path = format!("/v1/tasks/{task}");
        assert_eq!(cancel(&s, &a, &path).await.status, StatusCode::OK, "round {round}");
        // Gone, and still gone after the window in which a create the stopped rollout had
        // already sent may land (and is then removed by the rollout controller).
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut empty_since: Option<tokio::time::Instant> = None;
        while empty_since.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
            let empty = ids(&call(&s, &a, Method::GET, "/v1/nodes?ring=2", None).await).is_empty();
            empty_since = if empty { empty_since.or(Some(tokio::time::Instant::now())) } else { None };
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the cancelled rollout's instances stayed: {} {}",
                call(&s, &a, Method::GET, "/v1/nodes?ring=2", None).await.body,
                call(&s, &a, Method::GET, &path, None).await.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    s.stop().await;
}

/// Instances made through the node API race for a quota the same way: of eight creates at once
/// in an account allowed two instances, at most two are made.
#[tokio::test(flavor = "multi_thread")]
async fn racing_node_creates_cannot_pass_a_quota() {
    let s = TestServer::start().await;
    let host = sandbox_host(&s).await;
    let (acme, a) = tenant(&s, "acme").await;
    set_quota(&s, &acme, json!({"instances": 2})).await;
    let bodies: Vec<Value> = (0..8)
        .map(|i| {
            json!({"ring": 2, "label": format!("n{i}"), "spec": {"parent": host, "strategy": "unix-user",
                "run": {"command": ["sleep", "1000"]}}})
        })
        .collect();
    let replies = futures_util::future::join_all(
        bodies.iter().map(|b| call(&s, &a, Method::POST, "/v1/nodes", Some(b))),
    )
    .await;
    let made = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert!(matches!(r.status.as_u16(), 403 | 409), "{}", r.body);
    }
    assert!(
        (1..=2).contains(&made),
        "{made} made: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(ids(&call(&s, &a, Method::GET, "/v1/nodes?ring=2", None).await).len(), made);
    s.stop().await;
}

/// A tenant can name a network of its own `instances`, but the instance network is the
/// operator's alone: a new account's default rule set is made on the operator's, even when the
/// tenant's is older.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_network_named_instances_is_not_the_instance_network() {
    let s = TestServer::start().await;
    let (_, a) = tenant(&s, "acme").await;
    let r = call(&s, &a, Method::POST, "/v1/networks", Some(&network(2, "instances", "10.252.0.0/16"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let theirs = uuid_of(&r.body);
    let ours = s.create_id("networks", network(2, "instances", "10.251.0.0/16")).await;
    let globex = s.create_id("accounts", account("globex")).await;
    let (sets, _) = s.list("access-rule-sets", &[("account", &globex)]).await;
    let networks: Vec<&Value> = sets.iter().map(|set| &set["spec"]["network"]).collect();
    assert_eq!(networks, vec![&json!(ours)], "not on acme's {theirs}: {sets:?}");
    s.stop().await;
}
