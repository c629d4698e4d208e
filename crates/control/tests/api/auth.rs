//! The API document, and the authentication and authorization of every route it lists.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fixtures::{KINDS, machine, membership};
use crate::harness::{PATIENCE, TestServer, assert_problem, send, uuid_of};

/// Every `(method, path)` the document lists, with its operation.
fn operations(doc: &Value) -> Vec<(Method, String, Value)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item is an object") {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("an HTTP method");
            ops.push((method, path.clone(), op.clone()));
        }
    }
    ops
}

async fn openapi(s: &TestServer) -> Value {
    let reply = s.get("/v1/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.content_type().starts_with("application/json"));
    reply.body
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_documents_every_route() {
    let s = TestServer::start().await;
    let doc = openapi(&s).await;
    let version = doc["openapi"].as_str().unwrap_or("");
    assert!(version.starts_with("3.1."), "an OpenAPI 3.1 document, not {version:?}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let ops = operations(&doc);
    let listed: BTreeSet<(String, String)> = ops.iter().map(|(m, p, _)| (m.to_string(), p.clone())).collect();
    assert_eq!(listed.len(), ops.len());
    let mut expected = BTreeSet::new();
    for (_, plural) in KINDS {
        for (method, path) in [
            ("GET", format!("/v1/{plural}")),
            ("POST", format!("/v1/{plural}")),
            ("GET", format!("/v1/{plural}/{{uuid}}")),
            ("PUT", format!("/v1/{plural}/{{uuid}}")),
            ("DELETE", format!("/v1/{plural}/{{uuid}}")),
        ] {
            expected.insert((method.to_string(), path));
        }
    }
    assert_eq!(expected.len(), KINDS.len() * 5);
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/v1/watch"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("DELETE", "/v1/tokens/{id}"),
        ("POST", "/v1/tokens/revoke-derived"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/metrics"),
        ("GET", "/v1/keys"),
        ("POST", "/v1/keys/{id}/rotate"),
        ("POST", "/v1/keys/{id}/revoke"),
        ("POST", "/v1/join-tokens"),
        ("POST", "/v1/join"),
        ("GET", "/v1/bus/tail"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/packages"),
        ("POST", "/v1/apps/{app}/deploys"),
        ("POST", "/v1/apps/{app}/rollback"),
        ("POST", "/v1/apps/{app}/restart"),
        ("POST", "/v1/apps/{app}/scale"),
        ("GET", "/v1/apps"),
        ("GET", "/v1/apps/{app}"),
        ("GET", "/v1/apps/{app}/releases"),
        ("GET", "/v1/apps/{app}/logs"),
        ("GET", "/v1/account-status"),
        ("GET", "/v1/nodes/{uuid}/effective-rules"),
    ] {
        expected.insert((method.to_string(), path.to_string()));
    }
    assert_eq!(listed, expected, "the document lists exactly the served routes");
    assert!(ops.len() >= 12 * 5);

    let ids: BTreeSet<&str> = ops.iter().filter_map(|(_, _, op)| op["operationId"].as_str()).collect();
    assert_eq!(ids.len(), ops.len(), "every operation has a unique operationId");
    for (method, path, op) in &ops {
        let responses =
            op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path} has responses"));
        assert!(responses.keys().any(|c| c.starts_with('2')), "{method} {path} documents its success");
        if path == "/healthz" {
            assert_eq!(op["security"], json!([]), "/healthz needs no token");
            continue;
        }
        for code in ["401", "403"] {
            let content =
                &responses.get(code).unwrap_or_else(|| panic!("{method} {path} documents {code}"))["content"];
            assert!(
                content["application/problem+json"].is_object(),
                "{method} {path} {code} is a problem document"
            );
        }
        for param in op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "path") {
            let name = param["name"].as_str().unwrap_or("");
            assert!(path.contains(&format!("{{{name}}}")), "{method} {path} declares path parameter {name}");
        }
    }

    // Every schema reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a local schema reference: {r}"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "{r} resolves");
    }
    s.stop().await;
}

/// Walks the document: every route but `/healthz` refuses a missing or invalid token with 401
/// and a principal without memberships with 403, before it looks at paths, queries or bodies.
#[tokio::test(flavor = "multi_thread")]
async fn every_route_requires_a_token_and_a_permission() {
    let s = TestServer::start().await;
    let doc = openapi(&s).await;
    let nobody = s.issue("nobody").await["token"].as_str().expect("a token").to_string();
    let unknown = format!("enjin_{}", "0".repeat(64));
    let mut checked = 0;
    for (method, path, _) in operations(&doc) {
        if path == "/healthz" {
            continue;
        }
        let url = s.url(
            &path.replace("{uuid}", &Uuid::new_v4().to_string()).replace("{id}", &Uuid::new_v4().to_string()),
        );
        let request = |auth: Option<&str>| {
            let mut rb = s.http.request(method.clone(), &url);
            if let Some(auth) = auth {
                rb = rb.header("Authorization", auth);
            }
            if method == Method::POST || method == Method::PUT {
                rb = rb.json(&json!({}));
            }
            rb
        };
        let what = format!("{method} {path}");
        let reply = send(request(None)).await;
        assert_problem(&reply, 401, None);
        let challenge = reply.header("www-authenticate").unwrap_or("");
        assert!(challenge.starts_with("Bearer"), "{what} challenges for a bearer token, not {challenge:?}");
        for auth in [
            "Bearer garbage".to_string(),
            format!("Bearer {unknown}"),
            "Basic YWRtaW46YWRtaW4=".into(),
            "Bearer".into(),
        ] {
            let reply = send(request(Some(&auth))).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what} with {auth:?}: {}", reply.body);
            assert_problem(&reply, 401, None);
        }
        let reply = send(request(Some(&format!("Bearer {nobody}")))).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{what} as a principal without roles: {}",
            reply.body
        );
        assert_problem(&reply, 403, None);
        checked += 1;
    }
    assert!(checked >= 12 * 5 + 6, "walked {checked} routes");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_tokens_stop_working() {
    let s = TestServer::start().await;
    let created = s.issue("admin").await;
    let token = created["token"].as_str().expect("a token").to_string();
    let id = created["id"].as_str().expect("an id").to_string();
    assert_eq!(created["principal"], json!("admin"));
    let as_new = || s.http.get(s.url("/v1/nodes")).bearer_auth(&token);
    assert_eq!(send(as_new()).await.status, StatusCode::OK);

    // Lists show tokens, never their secrets.
    let listed = s.get("/v1/tokens").await;
    assert_eq!(listed.status, StatusCode::OK);
    let items = listed.body["items"].as_array().cloned().unwrap_or_default();
    assert!(items.iter().any(|t| t["id"] == json!(id)), "the new token is listed");
    assert!(items.iter().all(|t| t.get("token").is_none()), "no secret is listed: {}", listed.body);
    assert!(!listed.body.to_string().contains(&token), "no secret is listed");

    let reply = s.delete(&format!("/v1/tokens/{id}")).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_problem(&send(as_new()).await, 401, None);
    assert_problem(&s.delete(&format!("/v1/tokens/{id}")).await, 404, None);
    // Tokens are issued only to principals with a valid name.
    let reply = s.post("/v1/tokens", &json!({"principal": "Not Valid"})).await;
    assert_problem(&reply, 422, Some("principal"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_reads_but_does_not_write() {
    let s = TestServer::start().await;
    let viewer = s.list("roles", &[("label", "viewer")]).await.0;
    let system = s.list("accounts", &[("label", "system")]).await.0;
    assert_eq!(
        (viewer.len(), system.len()),
        (1, 1),
        "the bootstrap made the viewer role and the system account"
    );
    let member = s.create("memberships", membership("bob", &uuid_of(&system[0]), &uuid_of(&viewer[0]))).await;
    let bob = s.issue("bob").await["token"].as_str().expect("a token").to_string();
    let m1 = s.create("nodes", machine("m1")).await;
    let as_bob = |method: Method, path: &str| s.http.request(method, s.url(path)).bearer_auth(&bob);

    // Reads.
    let reply = send(as_bob(Method::GET, "/v1/nodes")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(send(as_bob(Method::GET, &format!("/v1/nodes/{}", uuid_of(&m1)))).await.body, m1);
    for path in ["/v1/openapi.json", "/metrics", "/v1/roles", "/v1/memberships"] {
        assert_eq!(send(as_bob(Method::GET, path)).await.status, StatusCode::OK, "bob reads {path}");
    }
    let watch = tokio::time::timeout(PATIENCE, as_bob(Method::GET, "/v1/watch?kind=node").send())
        .await
        .expect("watch answers")
        .expect("watch reaches the server");
    assert_eq!(watch.status(), StatusCode::OK, "bob watches nodes");
    drop(watch);

    // Writes and tokens are refused, and refused before anything is stored.
    let before = s.model_revision().await;
    let reply = send(as_bob(Method::POST, "/v1/nodes").json(&machine("m2"))).await;
    assert_problem(&reply, 403, None);
    let item = format!("/v1/nodes/{}", uuid_of(&m1));
    let update = json!({"revision": m1["revision"], "label": "m1", "spec": {"desired_state": "stopped"}});
    assert_problem(&send(as_bob(Method::PUT, &item).json(&update)).await, 403, None);
    assert_problem(&send(as_bob(Method::DELETE, &item)).await, 403, None);
    assert_problem(&send(as_bob(Method::GET, "/v1/tokens")).await, 403, None);
    let more = json!({"principal": "admin"});
    assert_problem(&send(as_bob(Method::POST, "/v1/tokens").json(&more)).await, 403, None);
    assert_eq!(s.model_revision().await, before, "nothing was written but the audit log");
    assert_eq!(s.fetch("nodes", &uuid_of(&m1)).await, m1);

    // Roles come from memberships at each request: without one, bob may read nothing.
    let reply = s.delete(&format!("/v1/memberships/{}", uuid_of(&member))).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_problem(&send(as_bob(Method::GET, "/v1/nodes")).await, 403, None);
    s.stop().await;
}
