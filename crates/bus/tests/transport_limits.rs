//! The hub protects itself: malformed frames, handshakes that never finish, too many connections
//! or subscriptions each end the offending connection (and are counted), never the hub.

mod transport_common;

use std::time::Duration;

use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::frame::{Frame, MAX_FRAME_LEN};
use enjin_bus::hub::HubConfig;
use enjin_bus::transport::Transport;
use tokio::io::AsyncReadExt;
use transport_common::*;

#[tokio::test]
async fn malformed_and_forbidden_frames_close_the_connection_and_are_counted() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let member = connected_client(hub.addr, &ca.node("member")).await;
    let mut sub = member.subscribe(">").expect("subscribe");
    member.flush(WAIT).await.expect("flush");

    let mut bad_inputs: Vec<Vec<u8>> = vec![
        // Unknown frame type.
        vec![0, 0, 0, 1, 99],
        // A length beyond the limit: refused before any body is read.
        u32::try_from(MAX_FRAME_LEN + 1).expect("fits").to_be_bytes().to_vec(),
        // An empty frame.
        vec![0, 0, 0, 0],
    ];
    // A publish to a wildcard topic, hand-built because the encoder refuses it.
    let mut wildcard = vec![3, 0, 3, b'a', b'.', b'*', 0, 0];
    let mut framed = u32::try_from(wildcard.len()).expect("fits").to_be_bytes().to_vec();
    framed.append(&mut wildcard);
    bad_inputs.push(framed);
    // A frame only the hub may send.
    let mut deliver = Vec::new();
    Frame::Deliver { sid: 1, topic: "x".into(), reply_to: None, payload: Vec::new() }
        .encode(&mut deliver)
        .expect("encode");
    bad_inputs.push(deliver);

    for (i, bytes) in bad_inputs.iter().enumerate() {
        let mut raw = RawClient::connect(hub.addr, &ca.node("sloppy"), None).await;
        raw.send_bytes(bytes).await;
        assert_eq!(raw.next().await, None, "input {i} closes the connection");
        let expected = u64::try_from(i + 1).expect("small");
        wait_until("the hub counted the malformed frame", || hub.stats().malformed_frames == expected).await;
    }
    // Nothing leaked through, and the well-behaved member is unaffected.
    member.publish("still.fine", None, Vec::new()).expect("publish");
    assert_eq!(recv(&mut sub).await.topic, "still.fine");
    assert_eq!(hub.stats().published, 1);
    hub.stop().await;
}

#[tokio::test]
async fn a_handshake_that_never_finishes_times_out() {
    let ca = Ca::new("ring");
    let config = HubConfig { handshake_timeout: Duration::from_millis(200), ..HubConfig::default() };
    let hub = RunningHub::start(loopback(), &ca.node("hub"), config).await;
    let mut silent = tokio::net::TcpStream::connect(hub.addr).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, silent.read(&mut byte)).await.expect("the hub hangs up in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
    wait_until("the hub counted the failed handshake", || hub.stats().handshake_failures == 1).await;
    assert_eq!(hub.stats().connections_accepted, 0);
    hub.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let ca = Ca::new("ring");
    let config = HubConfig { max_connections: 1, ..HubConfig::default() };
    let hub = RunningHub::start(loopback(), &ca.node("hub"), config).await;
    let first = connected_client(hub.addr, &ca.node("first")).await;
    let second = BusClient::connect(
        hub.addr,
        "localhost",
        &ca.node("second"),
        ClientConfig { connect_timeout: Duration::from_millis(200), ..fast_client() },
    )
    .expect("client");
    wait_until("the second client timed out waiting for the hub", || second.stats().connect_failures >= 1)
        .await;
    assert!(!second.is_connected());
    assert_eq!(hub.stats().connections, 1);

    drop(first);
    second.wait_connected(WAIT).await.expect("gets the freed slot");
    hub.stop().await;
}

#[tokio::test]
async fn too_many_subscriptions_close_the_connection() {
    let ca = Ca::new("ring");
    let config = HubConfig { max_subscriptions: 2, ..HubConfig::default() };
    let hub = RunningHub::start(loopback(), &ca.node("hub"), config).await;
    let mut raw = RawClient::connect(hub.addr, &ca.node("greedy"), None).await;
    let subscribe = |sid| Frame::Subscribe { sid, pattern: format!("t.{sid}") };
    // Re-subscribing an existing sid replaces it and does not count twice.
    raw.send(&[subscribe(1), subscribe(2), subscribe(2), Frame::Ping]).await;
    assert_eq!(raw.next().await, Some(Frame::Pong));
    raw.send(&[subscribe(3), Frame::Ping]).await;
    assert_eq!(raw.next().await, None);
    assert_eq!(hub.stats().subscriptions_refused, 1);
    hub.stop().await;
}
