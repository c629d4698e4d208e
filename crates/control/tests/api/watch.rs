//! `GET /v1/watch`: every change once, in revision order, one event per transaction, resumable
//! with `Last-Event-ID`, filtered by kind, and guarded like every other route.

use enjin_store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fixtures::{account, machine, observation, tier};
use crate::harness::{TestServer, assert_problem, assert_problem_status, revision_of, send, uuid_of};
use crate::sse::{Batch, Change, Watch};

/// One transaction as the watch should show it: its revision and its changes.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    revision: i64,
    changes: Vec<Change>,
    /// For puts, the object as the API answered the write.
    object: Option<Value>,
}

fn put(kind: &str, object: &Value) -> Expected {
    Expected {
        revision: revision_of(object),
        changes: vec![Change::new("put", kind, &uuid_of(object))],
        object: Some(object.clone()),
    }
}

/// A delete, at the revision the store is at right after it.
async fn deleted(s: &TestServer, plural: &str, changes: Vec<Change>) -> Expected {
    let uuid = &changes[0].uuid;
    // Earlier requests' audit records are in the store before the delete...
    s.settle_audit().await;
    let reply = s.delete(&format!("/v1/{plural}/{uuid}")).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "delete {plural}/{uuid}: {}", reply.body);
    // ...so the delete's own record is the one write after it.
    Expected { revision: s.revision().await - 1, changes, object: None }
}

/// Asserts that `got` are exactly the `expected` transactions, in order.
#[track_caller]
fn assert_batches(got: &[Batch], expected: &[Expected]) {
    let got_revisions: Vec<i64> = got.iter().map(|b| b.revision).collect();
    let expected_revisions: Vec<i64> = expected.iter().map(|e| e.revision).collect();
    assert_eq!(got_revisions, expected_revisions, "the watch delivers each transaction once, in order");
    for (batch, exp) in got.iter().zip(expected) {
        let mut changes = batch.changes.clone();
        changes.sort();
        let mut want = exp.changes.clone();
        want.sort();
        assert_eq!(changes, want, "changes of revision {}", exp.revision);
        if let Some(object) = &exp.object {
            assert_eq!(
                &batch.raw["events"][0]["object"], object,
                "the watched object is the object as written"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_delivers_every_change_and_resumes_after_last_event_id() {
    let s = TestServer::start().await;
    let start = s.revision().await;
    let mut w = Watch::open(&s, &[("from", (start + 1).to_string())], None).await;

    // Creates, updates, and a delete that cascades: one event per transaction.
    let mut first = Vec::new();
    let web = s.create("tiers", tier(0, "web")).await;
    first.push(put("tier", &web));
    let mut m1 = machine("m1");
    m1["spec"] = json!({"tiers": [uuid_of(&web)]});
    let m1 = s.create("nodes", m1).await;
    first.push(put("node", &m1));
    let m1 = s.update("nodes", &m1, json!({"desired_state": "stopped"})).await;
    first.push(put("node", &m1));
    let o1 = s.create("node-observations", observation(0, &uuid_of(&m1))).await;
    first.push(put("node-observation", &o1));
    let gone = vec![
        Change::new("deleted", "node", &uuid_of(&m1)),
        Change::new("deleted", "node-observation", &uuid_of(&o1)),
    ];
    first.push(deleted(&s, "nodes", gone).await);
    let revisions: Vec<i64> = first.iter().map(|e| e.revision).collect();
    // Each write is one revision; audit records, written after each answer, take others.
    assert_eq!(revisions.first(), Some(&(start + 1)), "{revisions:?}");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "each write is one revision: {revisions:?}");

    let got = w.batches(first.len()).await;
    assert_batches(&got, &first);
    // A deleted object is shown as it was last written.
    let cascade = &got[4].raw["events"];
    let node_event =
        cascade.as_array().and_then(|events| events.iter().find(|e| e["kind"] == "node")).cloned();
    assert_eq!(node_event.map(|e| e["object"].clone()), Some(m1.clone()), "the deleted node as it was");
    let last_seen = got[4].id;

    // Disconnect, change more, and resume after the last event seen.
    drop(w);
    let mut second = Vec::new();
    let db = s.create("tiers", tier(0, "db")).await;
    second.push(put("tier", &db));
    let db = s.update("tiers", &db, json!({"description": "databases"})).await;
    second.push(put("tier", &db));
    second.push(deleted(&s, "tiers", vec![Change::new("deleted", "tier", &uuid_of(&db))]).await);
    let acme = s.create("accounts", account("acme")).await;
    second.push(put("account", &acme));

    let mut w = Watch::open(&s, &[], Some(last_seen)).await;
    let got = w.batches(second.len()).await;
    assert!(got.iter().all(|b| b.revision > last_seen), "nothing at or before Last-Event-ID is sent again");
    assert_batches(&got, &second);
    // Nothing else was pending: the next event is the next change.
    let later = s.create("tiers", tier(0, "cache")).await;
    assert_batches(&w.batches(1).await, &[put("tier", &later)]);

    // Resuming from the very latest revision waits for new changes only.
    let mut w = Watch::open(&s, &[], Some(revision_of(&later))).await;
    let newest = s.create("tiers", tier(0, "queue")).await;
    assert_batches(&w.batches(1).await, &[put("tier", &newest)]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_the_start_replays_the_bootstrap() {
    let s = TestServer::start().await;
    let mut w = Watch::open(&s, &[("from", "1".to_string())], None).await;
    let got = w.batches(4).await;
    let kinds: Vec<&str> = got.iter().map(|b| b.changes[0].kind.as_str()).collect();
    assert_eq!(kinds, ["account", "role", "role", "membership"], "the bootstrap, in order: {got:?}");
    assert!(got.windows(2).all(|p| p[0].revision < p[1].revision), "revisions increase");
    let labels: Vec<&str> =
        got.iter().filter_map(|b| b.raw["events"][0]["object"]["label"].as_str()).collect();
    assert_eq!(labels, ["system", "admin", "viewer"]);
    assert_eq!(got[3].raw["events"][0]["object"]["spec"]["principal"], json!("admin"));
    // Tokens are not model objects: the next event is the next change of the model.
    let web = s.create("tiers", tier(0, "web")).await;
    assert_batches(&w.batches(1).await, &[put("tier", &web)]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_filters_by_kind() {
    let s = TestServer::start().await;
    let from = (s.revision().await + 1).to_string();
    let mut tiers = Watch::open(&s, &[("from", from.clone()), ("kind", "tier".into())], None).await;
    let mut nodes = Watch::open(&s, &[("from", from.clone()), ("kind", "node".into())], None).await;
    let mut observations =
        Watch::open(&s, &[("from", from), ("kind", "node-observation".into())], None).await;

    let m1 = s.create("nodes", machine("m1")).await;
    let web = s.create("tiers", tier(0, "web")).await;
    let m2 = s.create("nodes", machine("m2")).await;
    let web2 = s.update("tiers", &web, json!({"description": "web servers"})).await;
    let o1 = s.create("node-observations", observation(0, &uuid_of(&m1))).await;
    let del_web = deleted(&s, "tiers", vec![Change::new("deleted", "tier", &uuid_of(&web))]).await;
    // Deleting m1 takes its observation: each watch sees its own kind's half of it.
    let del_m1 = deleted(&s, "nodes", vec![Change::new("deleted", "node", &uuid_of(&m1))]).await;
    let del_o1 = Expected {
        revision: del_m1.revision,
        changes: vec![Change::new("deleted", "node-observation", &uuid_of(&o1))],
        object: None,
    };
    let last = s.create("tiers", tier(0, "last")).await;
    let last_node = s.create("nodes", machine("last")).await;
    let last_o = s.create("node-observations", observation(0, &uuid_of(&last_node))).await;

    let want_tiers = [put("tier", &web), put("tier", &web2), del_web, put("tier", &last)];
    assert_batches(&tiers.batches(4).await, &want_tiers);
    let want_nodes = [put("node", &m1), put("node", &m2), del_m1, put("node", &last_node)];
    assert_batches(&nodes.batches(4).await, &want_nodes);
    assert_batches(
        &observations.batches(3).await,
        &[put("node-observation", &o1), del_o1, put("node-observation", &last_o)],
    );

    // An unknown kind is the caller's mistake.
    let reply = send(s.request(reqwest::Method::GET, "/v1/watch").query(&[("kind", "widget")])).await;
    assert_problem_status(&reply, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_orders_concurrent_writes() {
    let s = TestServer::start().await;
    let from = s.revision().await + 1;
    let mut w = Watch::open(&s, &[("from", from.to_string())], None).await;
    let mut writers = Vec::new();
    for i in 0..24 {
        let (http, url, token) = (s.http.clone(), s.url("/v1/tiers"), s.token.clone());
        writers.push(tokio::spawn(async move {
            let resp = http.post(url).bearer_auth(token).json(&tier(i % 3, &format!("t{i}"))).send().await;
            let resp = resp.expect("create reaches the server");
            assert_eq!(resp.status(), StatusCode::CREATED);
            resp.json::<Value>().await.expect("created object")
        }));
    }
    let mut written = Vec::new();
    for writer in writers {
        written.push(writer.await.expect("writer task"));
    }
    written.sort_by_key(revision_of);
    let expected: Vec<Expected> = written.iter().map(|o| put("tier", o)).collect();
    let revisions: Vec<i64> = expected.iter().map(|e| e.revision).collect();
    // Each create's audit record is a transaction of its own, between the creates.
    assert!(revisions.first().is_some_and(|r| *r >= from), "{revisions:?}");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]) && revisions.len() == 24, "24 creates, 24 revisions");
    assert_batches(&w.batches(expected.len()).await, &expected);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_refuses_bad_starts() {
    let s = TestServer::start().await;
    // Without a valid token.
    let reply = send(s.http.get(s.url("/v1/watch"))).await;
    assert_problem(&reply, 401, None);
    assert!(reply.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")));
    let reply = send(s.http.get(s.url("/v1/watch?from=1&kind=node")).bearer_auth("enjin_0123")).await;
    assert_problem(&reply, 401, None);

    // Bad revisions.
    let watch = || s.request(reqwest::Method::GET, "/v1/watch");
    assert_problem(&send(watch().query(&[("from", "-1")])).await, 400, Some("from"));
    assert_problem_status(&send(watch().query(&[("from", "soon")])).await, 400);
    assert_problem_status(&send(watch().header("Last-Event-ID", "soon")).await, 400);

    // A compacted start is gone: list again and watch from the list's revision + 1.
    let web = s.create("tiers", tier(0, "web")).await;
    s.create("tiers", tier(0, "db")).await;
    let now = s.revision().await;
    s.store().compact(now).await.expect("compact");
    assert_problem_status(&send(watch().query(&[("from", "1")])).await, 410);
    let before_compaction = (revision_of(&web) - 1).to_string();
    assert_problem_status(&send(watch().header("Last-Event-ID", before_compaction)).await, 410);
    let mut w = Watch::open(&s, &[("from", (now + 1).to_string())], None).await;
    let next = s.create("tiers", tier(0, "cache")).await;
    assert_batches(&w.batches(1).await, &[put("tier", &next)]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_open_watches() {
    let s = TestServer::start().await;
    let mut w = Watch::open(&s, &[], None).await;
    let web = s.create("tiers", tier(0, "web")).await;
    assert_batches(&w.batches(1).await, &[put("tier", &web)]);
    // The server drains: stopping waits for the watch to end, and the watch then ends.
    s.stop().await;
    w.expect_end().await;
}
