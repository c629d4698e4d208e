//! A certificate counts only while the key it is bound to does and until it expires: the hub
//! refuses a member whose key its admission check no longer admits, at the handshake and on
//! connections already open, within a second; it ends a connection whose certificate expires;
//! a client given a new certificate reconnects with it at once. And a hub that restarts with a
//! retained directory hands every member its state the moment it resubscribes.

mod transport_common;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use enjin_bus::acl::Role;
use enjin_bus::client::BusClient;
use enjin_bus::hub::{Admission, Hub, HubConfig};
use enjin_bus::identity::{Identity, KeyId};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::Transport;
use enjin_pki::RingCa;
use transport_common::*;

const DAY: Duration = Duration::from_secs(86_400);

fn hub_tls(ca: &RingCa) -> TlsMaterial {
    let issued = ca.issue("parent:hub", &["localhost".into(), "127.0.0.1".into()], DAY).expect("hub cert");
    TlsMaterial { ca_pem: ca.cert_pem().into(), cert_pem: issued.cert_pem, key_pem: issued.key_pem }
}

/// A host member's material: common name `host:<uuid>`, bound to a fresh key.
fn member(ca: &RingCa, valid_for: Duration) -> (KeyId, TlsMaterial) {
    let key = Identity::generate().expect("key").key_id();
    (key, member_with_key(ca, key, valid_for))
}

fn member_with_key(ca: &RingCa, key: KeyId, valid_for: Duration) -> TlsMaterial {
    let cn = format!("host:{}", uuid_like(&key));
    let issued = ca.issue_bound(&cn, &key.to_string(), valid_for).expect("member cert");
    TlsMaterial { ca_pem: ca.cert_pem().into(), cert_pem: issued.cert_pem, key_pem: issued.key_pem }
}

/// A node id derived from the key, so each member has its own.
fn uuid_like(key: &KeyId) -> String {
    let h: String = key.to_string().chars().take(32).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Admits the parent's components, and members whose keys are in the set.
fn admission(allowed: &Arc<RwLock<HashSet<KeyId>>>) -> Admission {
    let allowed = allowed.clone();
    Arc::new(move |member, key| match key {
        _ if member.role() == Role::Parent => Ok(()),
        Some(k) if allowed.read().expect("lock").contains(k) => Ok(()),
        Some(k) => Err(format!("key {} is not admitted", k.short())),
        None => Err("no key".into()),
    })
}

fn client(addr: std::net::SocketAddr, tls: &TlsMaterial) -> BusClient {
    BusClient::connect(addr, "localhost", tls, fast_client()).expect("client")
}

#[tokio::test]
async fn a_revoked_key_loses_its_connection_within_a_second_and_cannot_come_back() {
    let ca = RingCa::generate(1).expect("ca");
    let allowed = Arc::new(RwLock::new(HashSet::new()));
    let hub = Hub::bind(loopback(), &hub_tls(&ca), HubConfig::default()).await.expect("bind");
    let hub = RunningHub::run(hub.with_admission(admission(&allowed)));
    let (victim_key, victim_tls) = member(&ca, DAY);
    let (bystander_key, bystander_tls) = member(&ca, DAY);

    // Not yet admitted: the handshake completes, the member is closed before it is one.
    let victim = client(hub.addr, &victim_tls);
    wait_until("the unknown key is refused", || hub.stats().certificates_refused >= 1).await;
    assert!(!victim.is_connected());

    allowed.write().expect("lock").extend([victim_key, bystander_key]);
    victim.wait_connected(WAIT).await.expect("admitted now");
    let bystander = connected_client(hub.addr, &bystander_tls).await;
    let own = format!("state.desired.{}", uuid_like(&bystander_key));
    let mut news = bystander.subscribe(&own).expect("subscribe");
    bystander.flush(WAIT).await.expect("flush");

    allowed.write().expect("lock").remove(&victim_key);
    let revoked_at = Instant::now();
    wait_until("the revoked member is disconnected", || !victim.is_connected()).await;
    let took = revoked_at.elapsed();
    println!("revoked member disconnected {took:?} after its key stopped counting");
    // Checked every 250 ms; the 1 s goal is measured by `enjin-bench --only bus-flood`, on a
    // quiet machine. Here only a bound no busy test machine misses.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(hub.stats().certificates_revoked, 1);

    // It keeps trying, and every attempt is refused after the handshake.
    let refused = hub.stats().certificates_refused;
    wait_until("reconnections are refused", || hub.stats().certificates_refused >= refused + 2).await;
    assert!(!victim.is_connected());

    // Nobody else noticed.
    let publisher = connected_client(hub.addr, &ca_parent(&ca)).await;
    publisher.publish(&own, None, b"still here".to_vec()).expect("publish");
    assert_eq!(recv(&mut news).await.payload, b"still here");
    assert_eq!(bystander.stats().disconnects, 0);
    hub.stop().await;
}

fn ca_parent(ca: &RingCa) -> TlsMaterial {
    let issued = ca.issue("parent:publisher", &[], DAY).expect("cert");
    TlsMaterial { ca_pem: ca.cert_pem().into(), cert_pem: issued.cert_pem, key_pem: issued.key_pem }
}

#[tokio::test]
async fn an_expiring_certificate_ends_its_connection_and_a_renewed_one_reconnects_at_once() {
    let ca = RingCa::generate(1).expect("ca");
    let allowed = Arc::new(RwLock::new(HashSet::new()));
    let hub = Hub::bind(loopback(), &hub_tls(&ca), HubConfig::default()).await.expect("bind");
    let hub = RunningHub::run(hub.with_admission(admission(&allowed)));
    let key = Identity::generate().expect("key").key_id();
    allowed.write().expect("lock").insert(key);

    // Valid for two more seconds.
    let short = member_with_key(&ca, key, Duration::from_secs(2));
    let member = client(hub.addr, &short);
    member.wait_connected(WAIT).await.expect("connects");
    let own = format!("state.desired.{}", uuid_like(&key));
    let mut state = member.subscribe(&own).expect("subscribe");
    member.flush(WAIT).await.expect("flush");
    let publisher = connected_client(hub.addr, &ca_parent(&ca)).await;
    publisher.publish(&own, None, b"v1".to_vec()).expect("publish");
    assert_eq!(recv(&mut state).await.payload, b"v1");

    wait_until("the expired certificate's connection ends", || !member.is_connected()).await;
    assert_eq!(hub.stats().certificates_expired, 1);
    // Expired, the old certificate no longer completes a handshake.
    let failures = hub.stats().handshake_failures;
    wait_until("handshakes with the expired certificate fail", || hub.stats().handshake_failures > failures)
        .await;

    // Renewed: the client uses the new certificate from its next attempt on, and its
    // subscription and the retained state come back with it.
    member.set_tls(&member_with_key(&ca, key, DAY)).expect("new tls");
    member.wait_connected(WAIT).await.expect("reconnects with the renewed certificate");
    assert_eq!(recv(&mut state).await.payload, b"v1");

    // Renewing while connected reconnects at once, without waiting for any expiry.
    let connects = member.stats().connects;
    member.set_tls(&member_with_key(&ca, key, DAY)).expect("new tls");
    wait_until("the client reconnected with the new certificate", || {
        member.stats().connects > connects && member.is_connected()
    })
    .await;
    assert_eq!(recv(&mut state).await.payload, b"v1");
    assert_eq!(hub.stats().certificates_expired, 1, "the live renewal was no expiry");
    hub.stop().await;
}

#[tokio::test]
async fn a_restarted_hub_hands_every_member_its_state_at_once_from_disk() {
    const MEMBERS: usize = 200;
    let ca = RingCa::generate(1).expect("ca");
    let dir = tempfile::tempdir().expect("dir");
    let config = HubConfig { retained_dir: Some(dir.path().join("retained")), ..HubConfig::default() };
    let tls = hub_tls(&ca);
    let hub = RunningHub::start(loopback(), &tls, config.clone()).await;
    let addr = hub.addr;

    // Each member may follow only its own desired set.
    let keys: Vec<KeyId> = (0..MEMBERS).map(|_| Identity::generate().expect("key").key_id()).collect();
    let topic = |key: &KeyId| format!("state.desired.{}", uuid_like(key));
    let publisher = connected_client(addr, &ca_parent(&ca)).await;
    for (i, key) in keys.iter().enumerate() {
        publisher.publish(&topic(key), None, format!("set {i}").into_bytes()).expect("publish");
    }
    publisher.flush(WAIT).await.expect("flush");
    let mut members = Vec::new();
    for key in &keys {
        let m = Arc::new(client(addr, &member_with_key(&ca, *key, DAY)));
        let sub = m.subscribe(&topic(key)).expect("subscribe");
        members.push((m, sub));
    }
    for (i, (m, sub)) in members.iter_mut().enumerate() {
        m.wait_connected(WAIT).await.expect("connects");
        assert_eq!(recv(sub).await.payload, format!("set {i}").into_bytes());
    }
    // The publisher of the state is gone before the hub restarts, and stays gone.
    drop(publisher);
    hub.stop().await;
    for (m, _) in &members {
        wait_until("the member noticed", || !m.is_connected()).await;
    }
    // Meanwhile someone floods the bus with other traffic as the members come back.
    let hub = RunningHub::start(addr, &tls, config).await;
    let noisy = connected_client(addr, &ca_parent(&ca)).await;
    let flood = tokio::spawn(async move {
        for n in 0..20_000u32 {
            if noisy.publish("noise", None, n.to_be_bytes().to_vec()).is_err() {
                tokio::task::yield_now().await;
            }
        }
        noisy
    });

    let mut waits = Vec::new();
    for (i, (m, mut sub)) in members.into_iter().enumerate() {
        waits.push(tokio::spawn(async move {
            m.wait_connected(WAIT).await.expect("reconnects");
            let connected = Instant::now();
            let msg = recv(&mut sub).await;
            assert_eq!(msg.payload, format!("set {i}").into_bytes());
            (connected.elapsed(), m)
        }));
    }
    let mut times = Vec::new();
    for w in waits {
        times.push(w.await.expect("member").0);
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let worst = times[times.len() - 1];
    println!("{MEMBERS} members: state {p50:?} (median) and {worst:?} (worst) after reconnecting");
    // The 1 s goal is measured by `enjin-bench --only bus-flood`; here, that the state came
    // from the hub's own disk without a publisher, in any reasonable time.
    assert!(worst < Duration::from_secs(5), "worst {worst:?}");
    flood.await.expect("flood");
    hub.stop().await;
}
