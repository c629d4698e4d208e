//! Access rules by app and process names: refused when they name an app the account does not
//! have, contradict another rule or name both kinds of peer; and an instance's effective rules,
//! resolved to addresses, readable by its account only.

use enjin_store::{Op, Store, Txn};
use reqwest::Method;
use serde_json::{Value, json};

use crate::fixtures::{account, interface, machine, membership, network, node, rule_set};
use crate::harness::{TestServer, assert_problem, assert_problem_status, call, uuid_of};

async fn claim_app(s: &TestServer, app: &str, account: &str) {
    let txn = Txn::new().then([Op::put(format!("/apps/names/{app}"), account.to_string())]);
    assert!(s.store().txn(txn).await.expect("claim").succeeded);
}

fn rule(set: &str, label: &str, extra: Value) -> Value {
    let mut spec = json!({"rule_set": set, "action": "allow", "direction": "ingress", "protocol": "tcp",
        "ports": "5432", "target": "db", "peer_app": "shop:web"});
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    json!({"ring": 2, "label": label, "spec": spec})
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_name_apps_of_their_account_and_resolve_to_their_instances() {
    let s = TestServer::start().await;
    let (accounts, _) = s.list("accounts", &[("label", "system")]).await;
    let system = uuid_of(&accounts[0]);
    claim_app(&s, "shop", &system).await;
    claim_app(&s, "db", &system).await;

    let net = s.create_id("networks", network(2, "instances", "10.251.0.0/16")).await;
    let m = s.create_id("nodes", machine("m")).await;
    let h = s.create_id("nodes", node(1, "h", &m)).await;
    let instance = |label: &str, app: &str, process: &str| {
        let mut n = node(2, label, &h);
        n["labels"] = json!({"enjin.dev/app": app, "enjin.dev/process": process});
        n
    };
    let web = s.create_id("nodes", instance("shop-web-1", "shop", "web")).await;
    let worker = s.create_id("nodes", instance("shop-worker-1", "shop", "worker")).await;
    let db = s.create_id("nodes", instance("db-main-1", "db", "main")).await;
    s.create("network-interfaces", interface(2, &net, &web, &["10.251.0.2"])).await;
    s.create("network-interfaces", interface(2, &net, &worker, &["10.251.0.3"])).await;
    s.create("network-interfaces", interface(2, &net, &db, &["10.251.0.4"])).await;
    let set = s.create_id("access-rule-sets", rule_set(2, "default", &net)).await;

    let allow = s.create("access-rules", rule(&set, "db-from-web", json!({}))).await;
    assert_eq!(allow["spec"]["target"], "db");

    // Names the account does not have, on create and on update.
    let r = s.post("/v1/access-rules", &rule(&set, "x", json!({"target": "nope"}))).await;
    assert_problem(&r, 422, Some("spec.target"));
    assert!(r.body["detail"].as_str().unwrap_or("").contains("no app nope"), "{}", r.body);
    let r = s.post("/v1/access-rules", &rule(&set, "x", json!({"peer_app": "nope:web"}))).await;
    assert_problem(&r, 422, Some("spec.peer_app"));
    let r = s
        .put(
            &format!("/v1/access-rules/{}", uuid_of(&allow)),
            &json!({"revision": allow["revision"], "label": "db-from-web",
                "spec": rule(&set, "", json!({"target": "nope"}))["spec"]}),
        )
        .await;
    assert_problem(&r, 422, Some("spec.target"));
    // Both kinds of peer; port 0; a range backwards.
    let r = s.post("/v1/access-rules", &rule(&set, "x", json!({"peer": "10.0.0.0/8"}))).await;
    assert_problem(&r, 422, Some("spec.peer_app"));
    let r = s.post("/v1/access-rules", &rule(&set, "x", json!({"ports": "0"}))).await;
    assert_problem_status(&r, 400);
    let r = s.post("/v1/access-rules", &rule(&set, "x", json!({"ports": "90-80"}))).await;
    assert_problem(&r, 422, Some("spec.ports"));
    // A deny over the same traffic at the same priority contradicts the allow.
    let r = s.post("/v1/access-rules", &rule(&set, "x", json!({"action": "deny"}))).await;
    assert_problem(&r, 422, Some("spec.priority"));
    assert!(r.body["detail"].as_str().unwrap_or("").contains("db-from-web"), "{}", r.body);
    let r =
        s.post("/v1/access-rules", &rule(&set, "x", json!({"action": "deny", "ports": "5000-5431"}))).await;
    assert_eq!(r.status, 201, "ports that do not overlap: {}", r.body);
    s.create(
        "access-rules",
        rule(&set, "no-worker", json!({"action": "deny", "priority": 10, "peer_app": "shop:worker"})),
    )
    .await;

    // Contradicting rules written at once: exactly one of each pair commits.
    for round in 0..4 {
        let port = format!("{}", 6000 + round);
        let allow = rule(&set, &format!("race-allow-{round}"), json!({"ports": port}));
        let deny = rule(&set, &format!("race-deny-{round}"), json!({"ports": port, "action": "deny"}));
        let (a, b) = tokio::join!(s.post("/v1/access-rules", &allow), s.post("/v1/access-rules", &deny));
        let created = [&a, &b].iter().filter(|r| r.status == 201).count();
        assert_eq!(created, 1, "round {round}: {} / {}", a.body, b.body);
        let refused = if a.status == 201 { &b } else { &a };
        assert_problem(refused, 422, Some("spec.priority"));
    }

    let r = s.get(&format!("/v1/nodes/{db}/effective-rules")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ingress = r.body["ingress"].as_array().expect("ingress");
    let names: Vec<&str> = ingress.iter().filter_map(|x| x["label"].as_str()).collect();
    let names: Vec<&str> = names.into_iter().filter(|n| !n.starts_with("race-")).collect();
    assert_eq!(names, ["no-worker", "x", "db-from-web"], "priority, then deny first");
    assert_eq!(ingress[0]["peers"], json!(["10.251.0.3/32"]));
    let allow = ingress.iter().find(|x| x["label"] == "db-from-web").expect("db-from-web");
    assert_eq!(allow["peer"], "shop:web");
    assert_eq!(allow["peers"], json!(["10.251.0.2/32"]));
    assert_eq!(r.body["address"], "10.251.0.4");
    // The web instance is not a target of any of these.
    let r = s.get(&format!("/v1/nodes/{web}/effective-rules")).await;
    assert_eq!(r.body["ingress"], json!([]), "{}", r.body);
    // A host is no instance.
    let r = s.get(&format!("/v1/nodes/{h}/effective-rules")).await;
    assert_problem_status(&r, 409);

    // Another account sees neither the node's rules nor may name the operator's apps.
    let acme = s.create_id("accounts", account("acme")).await;
    let (roles, _) = s.list("roles", &[("label", "admin")]).await;
    s.create("memberships", membership("acme-admin", &acme, &uuid_of(&roles[0]))).await;
    let token = s.issue("acme-admin").await["token"].as_str().expect("token").to_string();
    let r = call(&s, &token, Method::GET, &format!("/v1/nodes/{db}/effective-rules"), None).await;
    assert_problem_status(&r, 404);
    // The account was given its default rule set on the instance network with it, which it
    // cannot see; a second one of that name is a conflict.
    let r = call(&s, &token, Method::GET, "/v1/access-rule-sets?label=default", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sets = r.body["items"].as_array().expect("items");
    assert_eq!(sets.len(), 1, "{}", r.body);
    assert_eq!(sets[0]["spec"]["network"], json!(net), "{}", r.body);
    let acme_set = uuid_of(&sets[0]);
    let r = call(&s, &token, Method::POST, "/v1/access-rule-sets", Some(&rule_set(2, "default", &net))).await;
    assert_problem_status(&r, 409);
    let r =
        call(&s, &token, Method::POST, "/v1/access-rules", Some(&rule(&acme_set, "steal", json!({})))).await;
    assert_problem(&r, 422, Some("spec.target"));
}
