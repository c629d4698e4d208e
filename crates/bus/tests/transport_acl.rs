//! The hub's access rules over real connections: each member's certificate names its role, and
//! the hub refuses (answers, counts, delivers nothing for) what the role's table does not allow,
//! keeping the connection.

mod transport_common;

use enjin_bus::frame::{Frame, Refusal};
use enjin_bus::hub::HubConfig;
use enjin_bus::transport::Transport;
use transport_common::*;

const H1: &str = "6f1c2a3e-0b1d-4c5e-8f90-a1b2c3d4e5f6";
const H2: &str = "0a0b0c0d-1111-4222-8333-444455556666";

#[tokio::test]
async fn a_host_is_refused_everything_but_its_own_topics_and_keeps_its_connection() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let parent = connected_client(hub.addr, &ca.node("control-plane")).await;
    let mut raw = RawClient::connect(hub.addr, &ca.node(&format!("host:{H1}")), None).await;
    let refused =
        [">".to_owned(), format!("state.desired.{H2}"), "state.desired.*".into(), "_inbox.>".into()];
    let mut frames: Vec<Frame> = refused
        .iter()
        .enumerate()
        .map(|(i, p)| Frame::Subscribe { sid: i as u32 + 1, pattern: p.clone() })
        .collect();
    frames.push(Frame::Subscribe { sid: 99, pattern: format!("state.desired.{H1}") });
    frames.push(Frame::Ping);
    raw.send(&frames).await;
    for (i, p) in refused.iter().enumerate() {
        let want = Frame::Refused { what: Refusal::Subscribe, sid: i as u32 + 1, topic: p.clone() };
        assert_eq!(raw.next().await, Some(want));
    }
    assert_eq!(raw.next().await, Some(Frame::Pong), "the connection stays open");
    assert_eq!(hub.stats().subscribe_refused, refused.len() as u64);

    // The parent publishes on both hosts' desired topics: only the host's own arrives.
    parent.publish(&format!("state.desired.{H2}"), None, b"theirs".to_vec()).expect("publish");
    parent.publish(&format!("state.desired.{H1}"), None, b"mine".to_vec()).expect("publish");
    match raw.next().await {
        Some(Frame::Deliver { sid: 99, topic, payload, .. }) => {
            assert_eq!(topic, format!("state.desired.{H1}"));
            assert_eq!(payload, b"mine");
        }
        other => panic!("expected the host's own desired set, got {other:?}"),
    }

    // Publishing the parent's state, another host's reports, or naming someone else's inbox
    // as the reply-to: refused, one answer each, nothing routed.
    let before = hub.stats().published;
    let forbidden = [
        ("state.trust".to_owned(), None),
        ("state.routes".to_owned(), None),
        (format!("state.desired.{H2}"), None),
        (format!("stats.{H2}"), None),
        (format!("_inbox.{H2}.x"), None),
        ("packages.fetch".to_owned(), Some(format!("state.desired.{H2}"))),
        ("packages.fetch".to_owned(), Some(format!("_inbox.{H2}.x"))),
        ("packages.fetch".to_owned(), Some("_inbox.parent.x".to_owned())),
    ];
    let mut frames: Vec<Frame> = forbidden
        .iter()
        .map(|(t, r)| Frame::Publish { topic: t.clone(), reply_to: r.clone(), payload: b"x".to_vec() })
        .collect();
    frames.push(Frame::Ping);
    raw.send(&frames).await;
    for (topic, _) in &forbidden {
        let want = Frame::Refused { what: Refusal::Publish, sid: 0, topic: topic.clone() };
        assert_eq!(raw.next().await, Some(want));
    }
    assert_eq!(raw.next().await, Some(Frame::Pong));
    assert_eq!(hub.stats().publish_refused, forbidden.len() as u64);
    assert_eq!(hub.stats().published, before, "nothing refused was routed");

    // What a host does is allowed: a request on its own inbox, its stats, a reply to the parent.
    let mut inbox = parent.subscribe("_inbox.parent.>").expect("subscribe");
    let mut requests = parent.subscribe("packages.fetch").expect("subscribe");
    parent.flush(WAIT).await.expect("flush");
    raw.send(&[
        Frame::Publish {
            topic: "packages.fetch".into(),
            reply_to: Some(format!("_inbox.{H1}.r1")),
            payload: b"req".to_vec(),
        },
        Frame::Publish { topic: "_inbox.parent.abc".into(), reply_to: None, payload: b"answer".to_vec() },
    ])
    .await;
    assert_eq!(recv(&mut requests).await.reply_to, Some(format!("_inbox.{H1}.r1")));
    assert_eq!(recv(&mut inbox).await.payload, b"answer");
    hub.stop().await;
}

#[tokio::test]
async fn a_certificate_without_a_role_may_only_ping() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let mut raw = RawClient::connect(hub.addr, &ca.node_named("just-a-label"), None).await;
    raw.send(&[
        Frame::Subscribe { sid: 1, pattern: "test.>".into() },
        Frame::Publish { topic: "test.x".into(), reply_to: None, payload: Vec::new() },
        Frame::Ping,
    ])
    .await;
    assert!(matches!(raw.next().await, Some(Frame::Refused { what: Refusal::Subscribe, sid: 1, .. })));
    assert!(matches!(raw.next().await, Some(Frame::Refused { what: Refusal::Publish, .. })));
    assert_eq!(raw.next().await, Some(Frame::Pong));
    assert_eq!((hub.stats().subscribe_refused, hub.stats().publish_refused), (1, 1));
    hub.stop().await;
}

#[tokio::test]
async fn a_client_ends_a_refused_subscription_and_makes_inboxes_under_its_own_id() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let host = connected_client(hub.addr, &ca.node(&format!("host:{H1}"))).await;
    let mut everything = host.subscribe(">").expect("queued");
    let ended = tokio::time::timeout(WAIT, everything.next()).await.expect("in time");
    assert!(ended.is_none(), "a refused subscription ends");
    assert_eq!(host.stats().refused, 1);
    let inbox = host.new_inbox();
    assert!(inbox.starts_with(&format!("_inbox.{H1}.")), "{inbox}");
    let mut replies = host.subscribe(&inbox).expect("subscribe");
    let parent = connected_client(hub.addr, &ca.node("control-plane")).await;
    assert!(parent.new_inbox().starts_with("_inbox.parent."));
    host.flush(WAIT).await.expect("flush");
    parent.publish(&inbox, None, b"reply".to_vec()).expect("publish");
    assert_eq!(recv(&mut replies).await.payload, b"reply");
    // A reconnection does not renew the refused subscription.
    assert_eq!(hub.stats().subscribe_refused, 1);
    hub.stop().await;
}
