//! The audit log: every authenticated change recorded, refusals included; reads and
//! unauthenticated requests not; and `GET /v1/audit` with its filters.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{machine, membership, tier};
use crate::harness::{TestServer, assert_problem, send, uuid_of};

/// The audit log, newest first, as the admin reads it.
async fn audit(s: &TestServer, query: &[(&str, &str)]) -> Vec<Value> {
    let reply = send(s.request(Method::GET, "/v1/audit").query(query)).await;
    assert_eq!(reply.status, StatusCode::OK, "audit {query:?}: {}", reply.body);
    reply.body["items"].as_array().cloned().expect("items is an array")
}

/// A principal with the viewer role in the system account, and its token.
async fn viewer(s: &TestServer, name: &str) -> String {
    let role = s.list("roles", &[("label", "viewer")]).await.0;
    let system = s.list("accounts", &[("label", "system")]).await.0;
    s.create("memberships", membership(name, &uuid_of(&system[0]), &uuid_of(&role[0]))).await;
    s.issue(name).await["token"].as_str().expect("a token").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_are_recorded_with_who_what_and_how_it_ended() {
    let s = TestServer::start().await;
    let admin_token = audit(&s, &[]).await.len();
    assert_eq!(admin_token, 0, "bootstrapping and issuing in process are not requests");

    // A create, with the caller's request id; the uuid comes from the Location.
    let reply =
        send(s.request(Method::POST, "/v1/tiers").header("X-Request-Id", "req-42").json(&tier(0, "web")))
            .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let web = reply.body;
    let id = uuid_of(&web);
    let records = audit(&s, &[]).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["principal"], "admin");
    assert!(r["token"].as_str().is_some_and(|t| !t.is_empty()), "{r}");
    assert_eq!((r["method"].as_str(), r["verb"].as_str()), (Some("POST"), Some("create")));
    assert_eq!((r["route"].as_str(), r["path"].as_str()), (Some("/v1/tiers"), Some("/v1/tiers")));
    assert_eq!(r["object"], json!({"kind": "tier", "uuid": id}));
    assert_eq!((r["status"].as_u64(), r["result"].as_str()), (Some(201), Some("ok")));
    assert!(r["source"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "the peer address: {r}");
    assert_eq!(r["request_id"], "req-42");
    assert_eq!(r["account"], web["account"], "the account the object was made in: {r}");
    let time: chrono::DateTime<chrono::Utc> = r["time"].as_str().expect("time").parse().expect("RFC 3339");
    assert!((chrono::Utc::now() - time).num_seconds().abs() < 60, "{time}");

    // An update and a delete: the uuid comes from the path.
    let item = format!("/v1/tiers/{id}");
    s.update("tiers", &web, json!({"description": "web servers"})).await;
    assert_eq!(s.delete(&item).await.status, StatusCode::NO_CONTENT);
    let records = audit(&s, &[]).await;
    assert_eq!(records.len(), 3, "{records:?}");
    let (delete, update) = (&records[0], &records[1]);
    assert_eq!((delete["verb"].as_str(), delete["status"].as_u64()), (Some("delete"), Some(204)));
    assert_eq!((update["verb"].as_str(), update["status"].as_u64()), (Some("update"), Some(200)));
    for r in [delete, update] {
        assert_eq!(r["route"], "/v1/tiers/{uuid}");
        assert_eq!(r["path"], item.as_str());
        assert_eq!(r["object"], json!({"kind": "tier", "uuid": id}));
        assert_eq!(r["result"], "ok");
    }

    // A refused change is recorded as refused; a failed lookup too.
    assert_eq!(s.delete(&item).await.status, StatusCode::NOT_FOUND);
    let r = &audit(&s, &[("limit", "1")]).await[0];
    assert_eq!((r["status"].as_u64(), r["result"].as_str()), (Some(404), Some("refused")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forbidden_changes_are_recorded_but_reads_and_strangers_are_not() {
    let s = TestServer::start().await;
    let bob = viewer(&s, "bob").await;
    let as_bob = |method: Method, path: &str| s.http.request(method, s.url(path)).bearer_auth(&bob);
    let before = audit(&s, &[]).await.len();

    // Reads are not recorded, by anyone.
    assert_eq!(send(as_bob(Method::GET, "/v1/nodes")).await.status, StatusCode::OK);
    assert_eq!(s.get("/v1/tiers").await.status, StatusCode::OK);
    // Neither is anything without a valid token: it cannot fill the store.
    assert_problem(&send(s.http.post(s.url("/v1/nodes")).json(&machine("x"))).await, 401, None);
    let stranger =
        s.http.delete(s.url("/v1/tokens/00000000-0000-0000-0000-000000000000")).bearer_auth("enjin_nope");
    assert_problem(&send(stranger).await, 401, None);
    assert_eq!(audit(&s, &[]).await.len(), before, "reads and unauthenticated requests are not recorded");

    // A change bob may not make is refused, and recorded.
    assert_problem(&send(as_bob(Method::POST, "/v1/nodes").json(&machine("m2"))).await, 403, None);
    let records = audit(&s, &[]).await;
    assert_eq!(records.len(), before + 1);
    let r = &records[0];
    assert_eq!(r["principal"], "bob");
    assert_eq!((r["verb"].as_str(), r["route"].as_str()), (Some("create"), Some("/v1/nodes")));
    assert_eq!(r["object"], json!({"kind": "node"}));
    assert_eq!((r["status"].as_u64(), r["result"].as_str()), (Some(403), Some("refused")));

    // The viewer role does not read the audit log.
    assert_problem(&send(as_bob(Method::GET, "/v1/audit")).await, 403, None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_filters_by_time_and_principal_newest_first() {
    let s = TestServer::start().await;
    let bob = viewer(&s, "bob").await;
    s.create("tiers", tier(0, "a")).await;
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let refused = s.http.post(s.url("/v1/tiers")).bearer_auth(&bob).json(&tier(0, "b"));
    assert_problem(&send(refused).await, 403, None);
    s.create("tiers", tier(0, "c")).await;

    let all = audit(&s, &[]).await;
    let times: Vec<&str> = all.iter().filter_map(|r| r["time"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    let recent = audit(&s, &[("since", &between)]).await;
    assert_eq!(recent.len(), 2, "{recent:?}");
    assert_eq!((recent[0]["status"].as_u64(), recent[1]["principal"].as_str()), (Some(201), Some("bob")));
    let bobs = audit(&s, &[("principal", "bob")]).await;
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(audit(&s, &[("principal", "nobody")]).await.len(), 0);
    let newest = audit(&s, &[("limit", "1")]).await;
    assert_eq!(newest, all[..1].to_vec());

    for (query, field) in [("since", "yesterday"), ("limit", "0"), ("limit", "5000"), ("who", "bob")] {
        let reply = send(s.request(Method::GET, "/v1/audit").query(&[(query, field)])).await;
        assert_problem(&reply, 400, Some(query));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn records_are_counted_on_metrics() {
    let s = TestServer::start().await;
    s.create("tiers", tier(0, "web")).await;
    // The record is written as the answer goes out: wait for it before counting.
    s.settle_audit().await;
    let reply = s.get("/metrics").await;
    assert!(reply.text().contains("enjin_audit_records_total{result=\"ok\"} 1"), "{}", reply.text());
    assert!(reply.text().contains("enjin_audit_write_failures_total 0"), "{}", reply.text());
    s.stop().await;
}
