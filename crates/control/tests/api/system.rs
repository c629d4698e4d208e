//! Health, metrics and routes that do not exist.

use enjin_control::ControlPlane;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestServer, assert_problem, send};

#[tokio::test(flavor = "multi_thread")]
async fn healthz_needs_no_token() {
    let s = TestServer::start().await;
    for rb in [s.http.get(s.url("/healthz")), s.http.get(s.url("/healthz")).bearer_auth("garbage")] {
        let reply = send(rb).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.content_type().starts_with("application/json"));
        assert_eq!(reply.body["status"], json!("ok"));
        assert!(reply.body["version"].as_str().is_some_and(|v| !v.is_empty()));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/v1/nodes").await.status, StatusCode::OK);
    assert_problem(&send(s.http.get(s.url("/v1/nodes"))).await, 401, None);
    let reply = s.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type().starts_with("text/plain"), "{}", reply.content_type());
    let text = reply.text();
    assert!(text.contains("# TYPE enjin_http_requests_total counter"), "{text}");
    let line = text.lines().find(|l| {
        l.starts_with("enjin_http_requests_total{")
            && l.contains("route=\"/v1/nodes\"")
            && l.contains("status=\"200\"")
    });
    assert!(line.is_some_and(|l| l.ends_with(" 1")), "one listing of nodes is counted: {text}");
    assert!(
        text.lines().any(|l| l.starts_with("enjin_auth_failures_total{reason=\"unauthenticated\"}")),
        "{text}"
    );
    let revision = s.revision().await;
    let reply = s.get("/metrics").await;
    assert!(reply.text().contains(&format!("enjin_store_revision {revision}")), "{}", reply.text());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_are_problems() {
    let s = TestServer::start().await;
    assert_problem(&s.get("/v1/widgets").await, 404, None);
    assert_problem(&send(s.http.get(s.url("/nowhere"))).await, 404, None);
    s.stop().await;
}

/// A restart bootstraps again: it finds the account, roles and membership and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_is_idempotent() {
    let s = TestServer::start().await;
    let before = crate::harness::Snapshot::take(&s).await;
    let again = ControlPlane::new(s.shared_store());
    again.bootstrap().await.expect("bootstrap again");
    again.bootstrap().await.expect("and again");
    assert_eq!(crate::harness::Snapshot::take(&s).await, before, "a second bootstrap changed nothing");
    let memberships = s.list("memberships", &[]).await.0;
    assert_eq!(memberships.len(), 1, "one admin membership");
    assert_eq!(memberships[0]["spec"]["principal"], json!("admin"));
    s.stop().await;
}
