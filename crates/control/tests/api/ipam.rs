//! IP address assignment: interfaces without addresses get one from their network's range,
//! never one that is taken, and give it back when they go.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::fixtures::{interface, machine, network, node};
use crate::harness::{TestServer, uuid_of};

#[tokio::test(flavor = "multi_thread")]
async fn addresses_are_assigned_once_and_released_on_delete() {
    let s = TestServer::start().await;
    let m1 = s.create_id("nodes", machine("m1")).await;
    let h1 = s.create_id("nodes", node(1, "h1", &m1)).await;
    let net = s.create_id("networks", network(1, "backplane", "10.80.0.0/29")).await;

    let first = s.create("network-interfaces", interface(1, &net, &h1, &[])).await;
    assert_eq!(first["spec"]["addresses"], json!(["10.80.0.2"]), "the first host after the gateway");
    let second = s.create("network-interfaces", interface(1, &net, &h1, &[])).await;
    assert_eq!(second["spec"]["addresses"], json!(["10.80.0.3"]));

    // Asking for an address someone holds is refused, naming the field.
    let taken = s.post("/v1/network-interfaces", &interface(1, &net, &h1, &["10.80.0.3"])).await;
    assert_eq!(taken.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", taken.body);
    assert_eq!(taken.body["field"], "spec.addresses[0]");

    // An explicit free address is reserved too, so the pool skips it.
    s.create("network-interfaces", interface(1, &net, &h1, &["10.80.0.4"])).await;
    let next = s.create("network-interfaces", interface(1, &net, &h1, &[])).await;
    assert_eq!(next["spec"]["addresses"], json!(["10.80.0.5"]));

    // Released on delete, and handed out again.
    let deleted = s.delete(&format!("/v1/network-interfaces/{}", uuid_of(&first))).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let reused = s.create("network-interfaces", interface(1, &net, &h1, &[])).await;
    assert_eq!(reused["spec"]["addresses"], json!(["10.80.0.2"]));

    // Moving an interface to an address that is taken is refused; to a free one, allowed, and
    // the old one is released.
    let moved = s
        .put(
            &format!("/v1/network-interfaces/{}", uuid_of(&second)),
            &json!({"revision": second["revision"], "spec": {"network": net, "node": h1, "addresses": ["10.80.0.2"]}}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", moved.body);
    let moved = s
        .put(
            &format!("/v1/network-interfaces/{}", uuid_of(&second)),
            &json!({"revision": second["revision"], "spec": {"network": net, "node": h1, "addresses": ["10.80.0.6"]}}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    let refill = s.create("network-interfaces", interface(1, &net, &h1, &[])).await;
    assert_eq!(refill["spec"]["addresses"], json!(["10.80.0.3"]));

    // The /29 is now full: .2 .3 .4 .5 .6 held.
    let full = s.post("/v1/network-interfaces", &interface(1, &net, &h1, &[])).await;
    assert_eq!(full.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", full.body);
    assert_eq!(full.body["field"], "spec.network");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_assignments_never_collide() {
    let s = TestServer::start().await;
    let m1 = s.create_id("nodes", machine("m1")).await;
    let h1 = s.create_id("nodes", node(1, "h1", &m1)).await;
    let net = s.create_id("networks", network(1, "backplane", "10.81.0.0/24")).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let body = interface(1, &net, &h1, &[]);
        let req = s.request(reqwest::Method::POST, "/v1/network-interfaces").json(&body);
        tasks.push(tokio::spawn(
            async move { req.send().await.expect("send").json::<serde_json::Value>().await },
        ));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let obj = t.await.expect("task").expect("json");
        let address = obj["spec"]["addresses"][0].as_str().expect("an address").to_string();
        assert!(seen.insert(address.clone()), "{address} handed out twice");
    }
    assert_eq!(seen.len(), 6);
    s.stop().await;
}
