//! The ACL table on NATS: nats-server runs with the authorization block generated from the
//! same role table the hub enforces, and a host's connection reads its own desired state but
//! not another host's.

mod transport_common;

use std::time::Duration;

use enjin_bus::acl::{Member, Role};
use enjin_bus::nats::{NatsAuth, NatsConfig, NatsTransport, authorization};
use enjin_bus::transport::{Subscription, Transport};
use enjin_testkit::NatsServer;
use transport_common::*;

const HOST_A: &str = "0f6c1a52-3f0e-4d37-9a51-6b2d8c1e7a01";
const HOST_B: &str = "7d1e9b44-8c2a-4f5e-b6a3-0e9f4c2d1b02";

/// Long enough for a delivery that was allowed to arrive (they take milliseconds here).
const REFUSED_WINDOW: Duration = Duration::from_secs(1);

async fn connect(server: &NatsServer, member: &Member, password: &str) -> NatsTransport {
    let config = NatsConfig {
        member_id: Some(member.id().to_owned()),
        auth: Some(NatsAuth::UserPassword { user: member.common_name(), password: password.to_owned() }),
        ..NatsConfig::new(server.url())
    };
    NatsTransport::connect(config).await.expect("connect to nats-server")
}

/// Nothing arrives on `sub` (it may end: a refused subscription does).
async fn assert_nothing(sub: &mut Subscription) {
    if let Ok(Some(m)) = tokio::time::timeout(REFUSED_WINDOW, sub.next()).await {
        panic!("{} received {m:?}", sub.pattern());
    }
}

#[tokio::test]
async fn a_host_reads_its_own_desired_state_and_not_another_host_s() {
    let parent = Member::parent("control").expect("parent");
    let host = Member::node(Role::Host, HOST_A).expect("host");
    let server =
        NatsServer::start_with(&authorization(&[(&parent, "parent-secret"), (&host, "host-secret")]));

    // A wrong password is refused outright.
    let wrong = NatsConfig {
        auth: Some(NatsAuth::UserPassword { user: host.common_name(), password: "guess".into() }),
        connect_timeout: Duration::from_secs(2),
        ..NatsConfig::new(server.url())
    };
    assert!(NatsTransport::connect(wrong).await.is_err(), "a wrong password connects");

    let control = connect(&server, &parent, "parent-secret").await;
    control.publish(&format!("state.desired.{HOST_A}"), None, b"mine".to_vec()).expect("publish");
    control.publish(&format!("state.desired.{HOST_B}"), None, b"theirs".to_vec()).expect("publish");
    let mut observed = control.subscribe("observe.>").expect("subscribe");
    let mut foreign = control.subscribe(&format!("state.desired.{HOST_B}")).expect("subscribe");
    assert_eq!(recv(&mut foreign).await.payload, b"theirs", "retained for the parent");

    let agent = connect(&server, &host, "host-secret").await;
    let mut mine = agent.subscribe(&format!("state.desired.{HOST_A}")).expect("subscribe");
    assert_eq!(recv(&mut mine).await.payload, b"mine");

    let mut theirs = agent.subscribe(&format!("state.desired.{HOST_B}")).expect("subscribe");
    let mut everything = agent.subscribe("state.>").expect("subscribe");
    control.publish(&format!("state.desired.{HOST_B}"), None, b"theirs, newer".to_vec()).expect("publish");
    assert_eq!(recv(&mut foreign).await.payload, b"theirs, newer");
    assert_nothing(&mut theirs).await;
    assert_nothing(&mut everything).await;

    // What it may publish arrives; another host's desired state it may not write.
    agent.publish(&format!("state.desired.{HOST_B}"), None, b"forged".to_vec()).expect("queued");
    agent.publish(&format!("observe.{HOST_A}"), None, b"report".to_vec()).expect("publish");
    assert_eq!(recv(&mut observed).await.payload, b"report");
    assert_nothing(&mut foreign).await;
}
