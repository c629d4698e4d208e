//! Invariants under concurrent writers: the registry keeps them with compare-and-swap, so of
//! two writes that cannot both hold, exactly one wins.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{compartment, machine, tier};
use crate::harness::{Reply, TestServer, send, uuid_of};

/// Sends all `requests` at once and returns the replies in the same order.
async fn all_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<Reply> {
    let tasks: Vec<_> = requests.into_iter().map(|rb| tokio::spawn(send(rb))).collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status.as_u16()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_label_one_winner() {
    let s = TestServer::start().await;
    let requests = (0..12).map(|_| s.request(Method::POST, "/v1/tiers").json(&tier(0, "web"))).collect();
    let replies = all_at_once(requests).await;
    let mut got = statuses(&replies);
    got.sort_unstable();
    let mut want = vec![409; 11];
    want.insert(0, 201);
    assert_eq!(got, want, "exactly one of twelve creates of the same label wins");
    for r in replies.iter().filter(|r| r.status == StatusCode::CONFLICT) {
        assert_eq!(r.body["field"], json!("label"));
    }
    assert_eq!(s.list("tiers", &[("label", "web")]).await.0.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_revision_one_winner() {
    let s = TestServer::start().await;
    let t = s.create("tiers", tier(0, "web")).await;
    let path = format!("/v1/tiers/{}", uuid_of(&t));
    let requests = (0..12)
        .map(|i| {
            let body = json!({"revision": t["revision"], "label": "web", "spec": {"description": format!("writer {i}")}});
            s.request(Method::PUT, &path).json(&body)
        })
        .collect();
    let replies = all_at_once(requests).await;
    let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::OK).collect();
    assert_eq!(winners.len(), 1, "exactly one update at one revision wins: {:?}", statuses(&replies));
    for r in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_eq!((r.status, &r.body["field"]), (StatusCode::CONFLICT, &json!("revision")), "{}", r.body);
    }
    assert_eq!(s.fetch("tiers", &uuid_of(&t)).await, winners[0].body);
    s.stop().await;
}

/// A delete of a tier racing a create of a node that uses it: never both.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_and_a_new_reference_never_both_win() {
    let s = TestServer::start().await;
    for round in 0..15 {
        let t = s.create_id("tiers", tier(0, &format!("t{round}"))).await;
        let mut node = machine(&format!("m{round}"));
        node["spec"] = json!({"tiers": [t]});
        let replies = all_at_once(vec![
            s.request(Method::DELETE, &format!("/v1/tiers/{t}")),
            s.request(Method::POST, "/v1/nodes").json(&node),
        ])
        .await;
        match (replies[0].status.as_u16(), replies[1].status.as_u16()) {
            (204, 422) => {
                assert_eq!(replies[1].body["field"], json!("spec.tiers[0]"));
                assert!(s.list("nodes", &[("tier", &t)]).await.0.is_empty());
            }
            (409, 201) => {
                s.fetch("tiers", &t).await;
            }
            other => panic!(
                "round {round}: delete and create answered {other:?}: {} / {}",
                replies[0].body, replies[1].body
            ),
        }
    }
    s.stop().await;
}

/// Two parent changes that each keep the graph acyclic but together would close a cycle.
#[tokio::test(flavor = "multi_thread")]
async fn two_halves_of_a_cycle_never_both_win() {
    let s = TestServer::start().await;
    for round in 0..15 {
        let a = s.create("compartments", compartment(0, &format!("a{round}"), "region", &[])).await;
        let b = s.create("compartments", compartment(0, &format!("b{round}"), "region", &[])).await;
        let under = |me: &Value, parent: &Value| {
            let body = json!({"revision": me["revision"], "label": me["label"], "spec": {"type": "region", "parents": [uuid_of(parent)]}});
            s.request(Method::PUT, &format!("/v1/compartments/{}", uuid_of(me))).json(&body)
        };
        let replies = all_at_once(vec![under(&a, &b), under(&b, &a)]).await;
        let mut got = statuses(&replies);
        got.sort_unstable();
        assert_eq!(got, vec![200, 422], "round {round}: exactly one half of the cycle wins");
        let loser = replies.iter().find(|r| r.status != StatusCode::OK).expect("a loser");
        assert_eq!(loser.body["field"], json!("spec.parents"));
    }
    s.stop().await;
}
