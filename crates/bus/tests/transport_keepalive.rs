//! Dead peers are detected by timeouts, not by waiting forever: a client notices a hub that went
//! silent (ping unanswered) and reconnects; a hub closes clients that send nothing.

mod transport_common;

use std::time::Duration;

use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::hub::HubConfig;
use enjin_bus::transport::Transport;
use transport_common::*;

#[tokio::test]
async fn a_silent_hub_is_detected_by_ping_and_the_client_reconnects() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let proxy = Proxy::start(hub.addr).await;
    let config = ClientConfig {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        ..fast_client()
    };
    let client = BusClient::connect(proxy.addr, "localhost", &ca.node("client"), config).expect("client");
    client.wait_connected(WAIT).await.expect("connects");
    let mut sub = client.subscribe("state.x").expect("subscribe");
    client.flush(WAIT).await.expect("flush");

    // The TCP connection stays open but nothing comes back.
    proxy.blackhole(true);
    wait_until("the client declared the hub dead", || !client.is_connected()).await;
    assert_eq!(client.stats().disconnects, 1);

    proxy.blackhole(false);
    client.wait_connected(WAIT).await.expect("reconnects");
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    publisher.publish("state.x", None, b"after".to_vec()).expect("publish");
    assert_eq!(recv(&mut sub).await.payload, b"after");
    hub.stop().await;
}

#[tokio::test]
async fn the_hub_closes_connections_that_stay_idle() {
    let ca = Ca::new("ring");
    let config = HubConfig { idle_timeout: Duration::from_millis(300), ..HubConfig::default() };
    let hub = RunningHub::start(loopback(), &ca.node("hub"), config).await;
    // Pings every 50ms keep this one alive through many idle timeouts.
    let lively = BusClient::connect(
        hub.addr,
        "localhost",
        &ca.node("lively"),
        ClientConfig { ping_interval: Duration::from_millis(50), ..fast_client() },
    )
    .expect("client");
    lively.wait_connected(WAIT).await.expect("connects");
    // This one pings far too rarely for the hub's taste.
    let sleepy = BusClient::connect(
        hub.addr,
        "localhost",
        &ca.node("sleepy"),
        ClientConfig { ping_interval: Duration::from_secs(60), ..fast_client() },
    )
    .expect("client");
    sleepy.wait_connected(WAIT).await.expect("connects");

    wait_until("the hub dropped the idle client", || sleepy.stats().disconnects >= 1).await;
    assert_eq!(lively.stats().disconnects, 0);
    assert!(lively.is_connected());
    hub.stop().await;
}
