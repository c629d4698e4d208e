//! Publish/subscribe, wildcards, unsubscribe, request/reply, retained state and the edge filter,
//! over real mutual-TLS sockets on loopback.

mod transport_common;

use std::sync::Arc;
use std::time::Duration;

use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::hub::{Hub, HubConfig};
use enjin_bus::transport::{Transport, TransportError, request};
use transport_common::*;

#[tokio::test]
async fn broadcast_reaches_every_subscriber() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    let mut subscribers = Vec::new();
    for i in 0..3 {
        let client = connected_client(hub.addr, &ca.node(&format!("sub-{i}"))).await;
        let sub = client.subscribe("news.weather").expect("subscribe");
        client.flush(WAIT).await.expect("flush");
        subscribers.push((client, sub));
    }

    for n in 0..10u8 {
        publisher.publish("news.weather", None, vec![n]).expect("publish");
    }
    for (_, sub) in &mut subscribers {
        for n in 0..10u8 {
            let msg = recv(sub).await;
            assert_eq!(msg.topic, "news.weather");
            assert_eq!(msg.reply_to, None);
            assert_eq!(msg.payload, vec![n], "messages arrive in order");
        }
    }
    let stats = hub.stats();
    assert_eq!(stats.published, 10);
    assert_eq!(stats.delivered, 30);
    assert_eq!(stats.connections, 4);
    hub.stop().await;
}

#[tokio::test]
async fn wildcards_match_tokens() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    let subscriber = connected_client(hub.addr, &ca.node("subscriber")).await;
    let mut one = subscriber.subscribe("a.*.c").expect("subscribe");
    let mut tail = subscriber.subscribe("a.>").expect("subscribe");
    let mut exact = subscriber.subscribe("a.b").expect("subscribe");
    subscriber.flush(WAIT).await.expect("flush");

    for topic in ["a.b.c", "a.b", "a.x.c", "a.b.c.d", "b.b.c", "a"] {
        publisher.publish(topic, None, Vec::new()).expect("publish");
    }
    // Publish a marker last; when it arrives everything before it has been routed.
    publisher.publish("a.end.c", None, Vec::new()).expect("publish");

    let mut got_one = Vec::new();
    loop {
        let m = recv(&mut one).await;
        if m.topic == "a.end.c" {
            break;
        }
        got_one.push(m.topic);
    }
    assert_eq!(got_one, ["a.b.c", "a.x.c"]);
    let mut got_tail = Vec::new();
    loop {
        let m = recv(&mut tail).await;
        if m.topic == "a.end.c" {
            break;
        }
        got_tail.push(m.topic);
    }
    assert_eq!(got_tail, ["a.b.c", "a.b", "a.x.c", "a.b.c.d"]);
    assert_eq!(recv(&mut exact).await.topic, "a.b");
    assert_quiet(&mut exact).await;

    assert!(matches!(subscriber.subscribe("a.>.b"), Err(TransportError::Topic(_))));
    assert!(matches!(publisher.publish("a.*", None, Vec::new()), Err(TransportError::Topic(_))));
    hub.stop().await;
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    let subscriber = connected_client(hub.addr, &ca.node("subscriber")).await;
    let dropped = subscriber.subscribe("t.x").expect("subscribe");
    let mut kept = subscriber.subscribe("t.>").expect("subscribe");
    subscriber.flush(WAIT).await.expect("flush");

    publisher.publish("t.x", None, vec![1]).expect("publish");
    recv(&mut kept).await;
    assert_eq!(hub.stats().delivered, 2, "both subscriptions matched");

    drop(dropped);
    // The unsubscribe is queued before the flush's ping, so the hub has applied it.
    subscriber.flush(WAIT).await.expect("flush");
    publisher.publish("t.x", None, vec![2]).expect("publish");
    assert_eq!(recv(&mut kept).await.payload, vec![2]);
    assert_eq!(hub.stats().delivered, 3, "only the remaining subscription matched");
    hub.stop().await;
}

#[tokio::test]
async fn request_reply_round_trip() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let responder = connected_client(hub.addr, &ca.node("responder")).await;
    let requester = connected_client(hub.addr, &ca.node("requester")).await;
    let mut requests = responder.subscribe("svc.echo").expect("subscribe");
    responder.flush(WAIT).await.expect("flush");

    let serve = tokio::spawn(async move {
        let req = recv(&mut requests).await;
        let reply_to = req.reply_to.clone().expect("request carries a reply topic");
        let mut answer = b"echo:".to_vec();
        answer.extend_from_slice(&req.payload);
        responder.publish(&reply_to, None, answer).expect("publish reply");
        responder.flush(WAIT).await.expect("flush");
        reply_to
    });

    let inbox = requester.new_inbox();
    assert!(inbox.starts_with("_inbox."));
    assert_ne!(inbox, requester.new_inbox());
    let reply = request(&requester, "svc.echo", &inbox, b"hi".to_vec(), WAIT).await.expect("reply");
    assert_eq!(reply.topic, inbox);
    assert_eq!(reply.payload, b"echo:hi");
    assert_eq!(serve.await.expect("responder"), inbox);

    // Nobody answers here.
    let lonely = requester.new_inbox();
    let err = request(&requester, "svc.nobody", &lonely, Vec::new(), Duration::from_millis(200))
        .await
        .expect_err("no responder");
    assert!(matches!(err, TransportError::Timeout(_)));
    hub.stop().await;
}

#[tokio::test]
async fn retained_state_reaches_late_subscribers_and_empty_payload_clears_it() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    publisher.publish("state.node.a", None, b"v1".to_vec()).expect("publish");
    publisher.publish("state.node.a", None, b"v2".to_vec()).expect("publish");
    publisher.publish("state.node.b", None, b"b1".to_vec()).expect("publish");
    publisher.publish("events.node.a", None, b"not kept".to_vec()).expect("publish");
    publisher.flush(WAIT).await.expect("flush");

    let late = connected_client(hub.addr, &ca.node("late")).await;
    let mut a = late.subscribe("state.node.a").expect("subscribe");
    assert_eq!(recv(&mut a).await.payload, b"v2", "only the last value");
    let mut all = late.subscribe("state.>").expect("subscribe");
    let mut got = [recv(&mut all).await, recv(&mut all).await];
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(got[0].payload, b"v2");
    assert_eq!(got[1].payload, b"b1");
    let mut events = late.subscribe("events.>").expect("subscribe");
    assert_quiet(&mut events).await;
    assert_quiet(&mut a).await;

    publisher.publish("state.node.a", None, Vec::new()).expect("publish");
    publisher.flush(WAIT).await.expect("flush");
    assert_eq!(recv(&mut a).await.payload, b"", "live subscribers see the clear");
    let mut after_clear = late.subscribe("state.node.a").expect("subscribe");
    assert_quiet(&mut after_clear).await;
    hub.stop().await;
}

#[tokio::test]
async fn the_filter_drops_messages_at_the_edge() {
    let ca = Ca::new("ring");
    let hub = Hub::bind(loopback(), &ca.node("hub"), HubConfig::default())
        .await
        .expect("bind")
        .with_filter(Arc::new(|m| m.payload.starts_with(b"signed:")));
    let hub = RunningHub::run(hub);
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    let subscriber = connected_client(hub.addr, &ca.node("subscriber")).await;
    let mut sub = subscriber.subscribe("x").expect("subscribe");
    subscriber.flush(WAIT).await.expect("flush");

    publisher.publish("x", None, b"forged".to_vec()).expect("publish");
    publisher.publish("x", None, b"signed:ok".to_vec()).expect("publish");
    assert_eq!(recv(&mut sub).await.payload, b"signed:ok");
    let stats = hub.stats();
    assert_eq!(stats.filtered, 1);
    assert_eq!(stats.published, 1);
    hub.stop().await;
}

#[tokio::test]
async fn a_full_outbound_queue_is_reported_not_blocked_on() {
    let ca = Ca::new("ring");
    // No hub: everything stays queued.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
    let addr = unused.local_addr().expect("addr");
    drop(unused);
    let config = ClientConfig { outbound_queue: 4, ..fast_client() };
    let client = BusClient::connect(addr, "localhost", &ca.node("lonely"), config).expect("client");
    for _ in 0..4 {
        client.publish("q", None, Vec::new()).expect("queued");
    }
    assert!(matches!(client.publish("q", None, Vec::new()), Err(TransportError::Full)));
    assert!(matches!(
        client.publish("q", None, vec![0; enjin_bus::frame::MAX_PAYLOAD + 1]),
        Err(TransportError::PayloadTooLarge { .. })
    ));
    assert!(!client.is_connected());
}

#[tokio::test]
async fn a_lagging_subscriber_is_cut_off_not_skipped() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    let config = ClientConfig { subscription_queue: 2, ..fast_client() };
    let subscriber = BusClient::connect(hub.addr, "localhost", &ca.node("sub"), config).expect("client");
    subscriber.wait_connected(WAIT).await.expect("connect");
    let mut lagging = subscriber.subscribe("burst").expect("subscribe");
    let mut other = subscriber.subscribe("other").expect("subscribe");
    subscriber.flush(WAIT).await.expect("flush");

    for n in 0..10u8 {
        publisher.publish("burst", None, vec![n]).expect("publish");
    }
    publisher.publish("other", None, Vec::new()).expect("publish");
    recv(&mut other).await;

    // The two that fit, in order, then the end of the stream: never a silent gap.
    assert_eq!(recv(&mut lagging).await.payload, vec![0]);
    assert_eq!(recv(&mut lagging).await.payload, vec![1]);
    assert!(tokio::time::timeout(WAIT, lagging.next()).await.expect("ends").is_none());
    assert_eq!(subscriber.stats().lagged_subscriptions, 1);
    assert!(subscriber.is_connected(), "the connection itself is fine");

    // Resubscribing works.
    let mut again = subscriber.subscribe("burst").expect("subscribe");
    subscriber.flush(WAIT).await.expect("flush");
    publisher.publish("burst", None, vec![99]).expect("publish");
    assert_eq!(recv(&mut again).await.payload, vec![99]);
    hub.stop().await;
}
