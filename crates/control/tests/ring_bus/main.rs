//! The ring bus end to end over real mutual-TLS sockets on loopback: a control plane with its
//! key service and hub, children that join with join tokens, and what each of them accepts.

mod harness;

use std::time::Duration;

use enjin_bus::counters::RejectReason;
use enjin_bus::identity::Identity;
use enjin_bus::transport::Transport;
use enjin_bus::trust::{KeyRole, TRUST_UPDATE_TOPIC, TrustChange, TrustUpdate, TrustedKey};
use harness::{Ring1, eventually, unsigned};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_are_verified_and_every_rejection_is_counted() {
    let ring = Ring1::start().await;
    let a = ring.join("a").await;
    let mut b = ring.join("b").await;
    let mut c = ring.join("c").await;
    // a learns of b and c from its parent, not from them.
    eventually("a and b trust c", || {
        [&a, &b].iter().all(|x| x.node.bundle().keys.iter().any(|k| k.id == c.node.key_id()))
    })
    .await;

    a.node.publish("test.greet", b"hello".to_vec()).expect("publish");
    for child in [&mut b, &mut c] {
        let env = child.next().await;
        assert_eq!(
            (env.topic(), env.payload(), env.sender()),
            ("test.greet", &b"hello"[..], a.node.key_id())
        );
    }

    // An attacker with a valid TLS certificate but no trusted key, and a copy of a's key.
    let raw = ring.raw_client("mallory").await;
    let as_a = a.publisher_copy(1);
    let stranger = enjin_bus::trust::Publisher::new(
        Identity::generate().expect("key"),
        1,
        1,
        std::sync::Arc::new(enjin_bus::counters::Counters::new()),
    );
    let now = harness::now_ms();
    let mut tampered = as_a.seal("test.x", None, b"pay me".to_vec(), now).expect("seal");
    let at = tampered.len() - 70;
    tampered[at] ^= 1;
    let valid = as_a.seal("test.x", None, b"once".to_vec(), now).expect("seal");
    let sends: Vec<Vec<u8>> = vec![
        tampered,
        stranger.seal("test.x", None, b"who am i".to_vec(), now).expect("seal"),
        a.publisher_copy(2).seal("test.x", None, b"other ring".to_vec(), now).expect("seal"),
        unsigned(&as_a.seal("test.x", None, b"no signature".to_vec(), now).expect("seal")),
        b"EJB1 garbage".to_vec(),
        as_a.seal("test.x", None, b"too old".to_vec(), now - 120_000).expect("seal"),
        valid.clone(),
        valid,
        as_a.seal("test.x", None, b"end".to_vec(), now).expect("seal"),
    ];
    for bytes in sends {
        raw.publish("test.x", None, bytes).expect("raw publish");
    }
    // One connection keeps its order through the hub: once "end" arrives, all came before.
    assert_eq!(b.next().await.payload(), b"once");
    assert_eq!(b.next().await.payload(), b"end");
    let counters = b.node.counters().clone();
    for (reason, n) in [
        (RejectReason::Tampered, 1),
        (RejectReason::UnknownKey, 1),
        (RejectReason::WrongRing, 1),
        (RejectReason::Unsigned, 1),
        (RejectReason::Malformed, 1),
        (RejectReason::Stale, 1),
        (RejectReason::Replayed, 1),
    ] {
        assert_eq!(counters.rejected(reason), n, "{}", reason.label());
    }

    // The control plane counts what it sees on /metrics.
    let metrics = ring.metrics().await;
    assert!(metrics.contains("enjin_bus_rejected_total{ring=\"1\",reason=\"tampered\"} 1"), "{metrics}");
    assert!(metrics.contains("enjin_bus_hub_connections{ring=\"1\"}"), "{metrics}");

    // A revoked key stops working for everyone once the parent says so.
    let before = b.node.bundle().version;
    ring.revoke(&a.node.key_id().to_string()).await;
    b.node.wait_for_trust(before + 1, Duration::from_secs(10)).await.expect("b hears of the revocation");
    raw.publish(
        "test.x",
        None,
        as_a.seal("test.x", None, b"still me".to_vec(), harness::now_ms()).expect("seal"),
    )
    .expect("raw publish");
    raw.publish(
        "test.x",
        None,
        c.publisher_copy(1).seal("test.x", None, b"end2".to_vec(), harness::now_ms()).expect("seal"),
    )
    .expect("raw publish");
    assert_eq!(b.next().await.payload(), b"end2");
    assert_eq!(counters.rejected(RejectReason::RevokedKey), 1);
    ring.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_is_refused_at_the_socket() {
    let ring = Ring1::start().await;
    let before = ring.hub_stats().handshake_failures;
    let outsider = ring.client_with_foreign_certificate();
    assert!(
        outsider.wait_connected(Duration::from_secs(3)).await.is_err(),
        "a certificate from another CA connects"
    );
    eventually("the hub counts the refused handshake", || ring.hub_stats().handshake_failures > before).await;
    ring.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_accepted_and_the_old_key_retires_after_its_window() {
    let ring = Ring1::start().await;
    let mut b = ring.join("b").await;
    let old = ring.parent_publisher();
    let parents =
        |b: &harness::Child| b.node.bundle().keys.iter().filter(|k| k.role == KeyRole::Parent).count();
    assert_eq!(parents(&b), 1);

    ring.rotate_parent(2).await;
    eventually("b learns the new parent key", || parents(&b) == 2).await;
    let new = ring.parent_publisher();
    assert_ne!(old.identity().key_id(), new.identity().key_id());
    let raw = ring.raw_client("relay").await;
    raw.publish(
        "test.r",
        None,
        old.seal("test.r", None, b"old, in the window".to_vec(), harness::now_ms()).expect("seal"),
    )
    .expect("publish");
    raw.publish("test.r", None, new.seal("test.r", None, b"new".to_vec(), harness::now_ms()).expect("seal"))
        .expect("publish");
    assert_eq!(b.next().await.payload(), b"old, in the window");
    assert_eq!(b.next().await.payload(), b"new");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    raw.publish(
        "test.r",
        None,
        old.seal("test.r", None, b"old, too late".to_vec(), harness::now_ms()).expect("seal"),
    )
    .expect("publish");
    raw.publish(
        "test.r",
        None,
        new.seal("test.r", None, b"new again".to_vec(), harness::now_ms()).expect("seal"),
    )
    .expect("publish");
    assert_eq!(b.next().await.payload(), b"new again");
    assert_eq!(b.node.counters().rejected(RejectReason::RevokedKey), 1);
    ring.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_whitelist_and_a_reconnecting_node_is_brought_level() {
    let ring = Ring1::start().await;
    let a = ring.join("a").await;
    let mut b = ring.join("b").await;
    eventually("a trusts b", || a.node.bundle().keys.iter().any(|k| k.id == b.node.key_id())).await;

    // a tries to whitelist a key of its own choosing, on the trust topic itself.
    let sock_puppet = Identity::generate().expect("key");
    let update = TrustUpdate {
        version: u64::MAX / 2,
        change: TrustChange::AddKey(TrustedKey::new(sock_puppet.key_id(), KeyRole::Member, "puppet")),
    };
    let filtered = ring.hub_stats().filtered;
    a.node.publish(TRUST_UPDATE_TOPIC, update.to_json().expect("json")).expect("publish");
    eventually("the hub refuses a member's trust update", || ring.hub_stats().filtered > filtered).await;
    let puppet = enjin_bus::trust::Publisher::new(sock_puppet, 1, 1, std::sync::Arc::default());
    let raw = ring.raw_client("puppeteer").await;
    raw.publish(
        "test.p",
        None,
        puppet.seal("test.p", None, b"trust me".to_vec(), harness::now_ms()).expect("seal"),
    )
    .expect("publish");
    let as_a = a.publisher_copy(1);
    raw.publish("test.p", None, as_a.seal("test.p", None, b"end".to_vec(), harness::now_ms()).expect("seal"))
        .expect("publish");
    assert_eq!(b.next().await.payload(), b"end");
    assert!(b.node.bundle().key(&puppet.identity().key_id()).is_none());
    assert_eq!(b.node.counters().rejected(RejectReason::UnknownKey), 1);

    // b goes away; meanwhile a is revoked. When b comes back with its stale bundle, the
    // retained bundle brings it level at once: whole, not half-applied.
    let stale = b.node.bundle();
    let b_identity = b.identity_copy();
    let b_tls = b.tls.clone();
    drop(b);
    ring.revoke(&a.node.key_id().to_string()).await;
    let back = ring.rejoin(b_identity, &b_tls, stale.clone()).await;
    // Versions are store revisions, which the revocation's audit record moves past the
    // published bundle's: level means the same keys in the same states.
    let current = ring.bundle().await;
    eventually("b is brought level", || back.node.bundle().keys == current.keys).await;
    assert!(back.node.bundle().key(&a.node.key_id()).is_some_and(|k| k.revoked));
    assert!(stale.key(&a.node.key_id()).is_some_and(|k| !k.revoked));
    ring.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_tail_relays_verified_messages_only() {
    let ring = Ring1::start().await;
    let a = ring.join("a").await;
    let counters = ring.authority.counters().clone();
    eventually("the control plane trusts a", || counters.trust_updates_applied() >= 1).await;
    let mut tail = ring.tail("test.*").await;
    let raw = ring.raw_client("mallory").await;
    let stranger =
        enjin_bus::trust::Publisher::new(Identity::generate().expect("key"), 1, 1, std::sync::Arc::default());
    raw.publish(
        "test.t",
        None,
        stranger.seal("test.t", None, b"forged".to_vec(), harness::now_ms()).expect("seal"),
    )
    .expect("publish");
    a.node.publish("test.t", b"genuine".to_vec()).expect("publish");
    let m = tail.next().await;
    assert_eq!((m["topic"].as_str(), m["payload"].as_str()), (Some("test.t"), Some("genuine")));
    assert_eq!(m["sender"].as_str(), Some(a.node.key_id().to_string().as_str()));
    ring.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_reported_on_the_bus_are_stored_for_supervised_nodes_only() {
    let ring = Ring1::start().await;
    let h1 = ring.create_host("h1").await;
    let h2 = ring.create_host("h2").await;
    let agent = ring.join_as("h1", Some(h1)).await;
    let report = |node: uuid::Uuid, state: &str| {
        serde_json::to_vec(&serde_json::json!({
            "node": node, "strategy": "heartbeat", "state": state, "observed_at": chrono::Utc::now(),
        }))
        .expect("json")
    };
    agent.node.publish(&enjin_model::api::observation_topic(h1), report(h1, "running")).expect("publish");
    // Not its node, nor one it supervises: refused.
    agent.node.publish(&enjin_model::api::observation_topic(h2), report(h2, "lost")).expect("publish");
    let path = format!("/v1/node-observations?parent={h1}");
    let mut stored = serde_json::Value::Null;
    for _ in 0..200 {
        stored = ring.get_json(&path).await;
        if stored["items"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(stored["items"][0]["spec"]["state"], "running", "{stored}");
    // A later report updates the same observation in place.
    agent.node.publish(&enjin_model::api::observation_topic(h1), report(h1, "unhealthy")).expect("publish");
    eventually_async(&ring, &path, "unhealthy").await;
    let others = ring.get_json(&format!("/v1/node-observations?parent={h2}")).await;
    assert_eq!(others["items"].as_array().map(Vec::len), Some(0), "{others}");
    let all = ring.get_json(&path).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));
    ring.stop().await;
}

async fn eventually_async(ring: &Ring1, path: &str, state: &str) {
    for _ in 0..200 {
        if ring.get_json(path).await["items"][0]["spec"]["state"] == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} never showed {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_gets_its_desired_children_from_its_parent_and_goes_disconnected_then_lost() {
    let ring = Ring1::start().await;
    let h1 = ring.create_host("h1").await;
    let agent = ring.join_as("h1", Some(h1)).await;
    let mut desired = agent.node.subscribe(&enjin_model::api::desired_topic(h1)).expect("subscribe");
    let web = ring
        .post_admin(
            "/v1/nodes",
            serde_json::json!({"ring": 2, "label": "web", "spec": {"parent": h1, "strategy": "unix-user",
                "run": {"command": ["sleep", "100"]}}}),
        )
        .await;
    let wanted = loop {
        let env = tokio::time::timeout(Duration::from_secs(10), desired.next())
            .await
            .expect("in time")
            .expect("open");
        // Only the parent may say what a host runs.
        let sender = agent.node.bundle().key(&env.sender()).map(|k| k.role);
        assert_eq!(sender, Some(KeyRole::Parent));
        let set: enjin_model::api::DesiredChildren =
            serde_json::from_slice(env.payload()).expect("desired set");
        if !set.children.is_empty() {
            break set;
        }
    };
    assert_eq!(wanted.node, h1);
    assert_eq!(wanted.children[0].uuid.to_string(), web["uuid"].as_str().expect("uuid"));
    assert_eq!(wanted.children[0].run.command, ["sleep", "100"]);

    // The host's heartbeat, then silence: disconnected first, lost only later.
    let beat = serde_json::json!({"node": h1, "strategy": "heartbeat", "state": "running", "observed_at": chrono::Utc::now()});
    agent
        .node
        .publish(&enjin_model::api::observation_topic(h1), serde_json::to_vec(&beat).expect("json"))
        .expect("publish");
    let path = format!("/v1/node-observations?parent={h1}");
    eventually_async(&ring, &path, "running").await;
    eventually_async(&ring, &path, "disconnected").await;
    eventually_async(&ring, &path, "lost").await;
    ring.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_a_host_joins_as_that_host_and_nothing_else() {
    let ring = Ring1::start().await;
    let a = ring.create_host("machine-a").await;
    let b = ring.create_host("machine-b").await;

    // A token can be bound only to a ring 1 node under its parent.
    let (status, body) = ring.join_token_for(Some(uuid::Uuid::new_v4())).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "node", "{body}");

    let (status, created) = ring.join_token_for(Some(a)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["node"], serde_json::json!(a));
    let token = created["token"].as_str().expect("token").to_string();

    // Asking to speak for another node is refused, and does not use the token up.
    let (status, body) = ring.post_raw("/v1/join", &token, Ring1::join_request("m", Some(b))).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains(&format!("for node {a}, not {b}")), "{body}");

    // Without a node in the request, the token's node is the one joined as.
    let (status, joined) = ring.post_raw("/v1/join", &token, Ring1::join_request("m", None)).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["node"], serde_json::json!(a), "{joined}");
    let cert = joined["cert_pem"].as_str().expect("certificate");
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
    assert!(
        der.windows(format!("host:{a}").len()).any(|w| w == format!("host:{a}").as_bytes()),
        "the certificate names the host's role and node"
    );
    // It worked once.
    let (status, _) = ring.post_raw("/v1/join", &token, Ring1::join_request("m", None)).await;
    assert_eq!(status, 401);
}
