//! The overflow policy: a subscriber that stops reading is disconnected once its outbound queue
//! at the hub fills, and counted; the others keep receiving every message, in order.

mod transport_common;

use enjin_bus::frame::Frame;
use enjin_bus::hub::HubConfig;
use enjin_bus::transport::Transport;
use transport_common::*;

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_the_others_keep_everything() {
    let ca = Ca::new("ring");
    let config = HubConfig { outbound_queue: 16, ..HubConfig::default() };
    let hub = RunningHub::start(loopback(), &ca.node("hub"), config).await;
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    let fast = connected_client(hub.addr, &ca.node("fast")).await;
    let mut fast_sub = fast.subscribe("feed").expect("subscribe");
    fast.flush(WAIT).await.expect("flush");
    // Subscribes, then never reads again; its tiny receive buffer makes the hub's writes back up
    // quickly.
    let mut stalled = RawClient::connect(hub.addr, &ca.node("stalled"), Some(4096)).await;
    stalled.send(&[Frame::Subscribe { sid: 1, pattern: "feed".into() }, Frame::Ping]).await;
    // The pong says the hub accepted us and registered the subscription.
    assert_eq!(stalled.next().await, Some(Frame::Pong));

    const BATCH: u32 = 8;
    const MAX_MESSAGES: u32 = 4000;
    let payload_size = 64 * 1024;
    let mut sent: u32 = 0;
    let mut received: u32 = 0;
    // Publish in batches the fast subscriber keeps up with; the stalled one's TCP buffers fill,
    // then its 16-message queue, then the hub cuts it off.
    while hub.stats().slow_consumer_disconnects == 0 {
        assert!(sent < MAX_MESSAGES, "no slow-consumer disconnect after {sent} messages");
        for _ in 0..BATCH {
            let mut payload = vec![0u8; payload_size];
            payload[..4].copy_from_slice(&sent.to_be_bytes());
            publisher.publish("feed", None, payload).expect("publish");
            sent += 1;
        }
        while received < sent {
            let msg = recv(&mut fast_sub).await;
            assert_eq!(msg.payload[..4], received.to_be_bytes(), "in order, no gaps");
            received += 1;
        }
    }
    // Life goes on for everyone else.
    for _ in 0..BATCH {
        publisher.publish("feed", None, sent.to_be_bytes().to_vec()).expect("publish");
        sent += 1;
    }
    while received < sent {
        let msg = recv(&mut fast_sub).await;
        assert_eq!(msg.payload[..4], received.to_be_bytes(), "in order, no gaps");
        received += 1;
    }

    wait_until("the hub closed the stalled connection", || hub.stats().connections == 2).await;
    let stats = hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 1);
    assert_eq!(stats.published, u64::from(sent));
    assert_eq!(fast.stats().disconnects, 0);
    assert_eq!(publisher.stats().disconnects, 0);
    hub.stop().await;
}
