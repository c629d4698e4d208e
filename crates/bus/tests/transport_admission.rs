//! The hub's admission budget: connections that never finish their TLS handshake are held to
//! their own budget (in all and per source address) and a short timeout, so they can never take
//! the places of authenticated members.

mod transport_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use enjin_bus::client::BusClient;
use enjin_bus::hub::HubConfig;
use enjin_bus::transport::Transport;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use transport_common::*;

/// The flood comes from its own loopback address, so the members' address is not the flooder's.
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const HALF_OPEN: usize = 2000;

/// Keep `HALF_OPEN` TCP connections to `hub` open from `FLOODER`, never sending a byte, and
/// open a new one whenever the hub closes one, until the task is aborted.
async fn flood(hub: SocketAddr) {
    let mut held = JoinSet::new();
    let open = || async move {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(FLOODER, 0)).ok()?;
        let stream: TcpStream =
            tokio::time::timeout(Duration::from_secs(2), socket.connect(hub)).await.ok()?.ok()?;
        // Hold it until the hub closes it.
        let mut byte = [0u8; 1];
        let _ = stream.readable().await;
        let _ = stream.try_read(&mut byte);
        Some(())
    };
    for _ in 0..HALF_OPEN {
        held.spawn(open());
    }
    while held.join_next().await.is_some() {
        held.spawn(open());
        // Renew at a bounded rate: a closed connection is replaced, not a storm of them.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_open_connections_cost_members_nothing() {
    let ca = Ca::new("ring");
    let config = HubConfig {
        max_connections: 64,
        max_handshakes: 32,
        max_handshakes_per_source: 16,
        handshake_timeout: Duration::from_secs(3),
        ..HubConfig::default()
    };
    let hub = RunningHub::start(loopback(), &ca.node("hub"), config).await;
    let members: Vec<BusClient> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(connected_client(hub.addr, &ca.node(&format!("member-{i}"))).await);
        }
        v
    };
    let mut sub = members[1].subscribe("t.>").expect("subscribe");
    members[1].flush(WAIT).await.expect("flush");

    let flooder = tokio::spawn(flood(hub.addr));
    wait_until("the flood fills its per-source handshake budget", || hub.stats().handshakes >= 16).await;
    wait_until("the hub turns away most of the flood", || hub.stats().admission_refused >= 1000).await;
    assert!(hub.stats().handshakes <= 32, "handshakes stay within their budget");

    // Members stay connected and keep talking.
    for m in &members {
        assert!(m.is_connected());
    }
    members[0].publish("t.x", None, b"during the flood".to_vec()).expect("publish");
    assert_eq!(recv(&mut sub).await.payload, b"during the flood");

    // A member killed and re-created gets back in within 2 s while the flood goes on.
    let mut members = members;
    drop(members.pop());
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let again =
            BusClient::connect(hub.addr, "localhost", &ca.node("member-3"), fast_client()).expect("client");
        again.wait_connected(Duration::from_secs(2)).await.expect("reconnects within 2 s during the flood");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(again);
    }
    let stats = hub.stats();
    assert_eq!(stats.connections_refused, 0, "no member was ever turned away");
    for m in &members {
        assert!(m.is_connected(), "no member was disconnected");
        assert_eq!(m.stats().disconnects, 0);
    }
    flooder.abort();
    hub.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_handshake_budget_are_closed_at_once() {
    let ca = Ca::new("ring");
    let config = HubConfig {
        max_handshakes: 8,
        max_handshakes_per_source: 2,
        handshake_timeout: Duration::from_secs(30),
        ..HubConfig::default()
    };
    let hub = RunningHub::start(loopback(), &ca.node("hub"), config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(hub.addr).await.expect("connect"));
    }
    wait_until("two handshakes in progress", || hub.stats().handshakes == 2).await;
    // A third from the same address is closed without waiting for the (long) timeout.
    let third = TcpStream::connect(hub.addr).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, async {
        third.readable().await?;
        third.try_read(&mut byte)
    })
    .await
    .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, got {read:?}");
    assert_eq!(hub.stats().admission_refused, 1);
    // Another address still has room; and when the first two go, their places come back.
    let other = TcpSocket::new_v4().expect("socket");
    other.bind(SocketAddr::new(FLOODER, 0)).expect("bind");
    let _other = other.connect(hub.addr).await.expect("connect");
    wait_until("a handshake from another address", || hub.stats().handshakes == 3).await;
    drop(held);
    wait_until("closed handshakes give their places back", || hub.stats().handshakes == 1).await;
    let member = connected_client(hub.addr, &ca.node("member")).await;
    assert!(member.is_connected());
    hub.stop().await;
}
