//! Clients outlive the hub: when it restarts on the same address they reconnect by themselves,
//! resubscribe, deliver what was queued meanwhile, and retained `state.*` messages are delivered
//! again (level-triggered).

mod transport_common;

use enjin_bus::hub::HubConfig;
use enjin_bus::transport::Transport;
use transport_common::*;

#[tokio::test]
async fn clients_reconnect_resubscribe_and_resynchronise_after_a_hub_restart() {
    let ca = Ca::new("ring");
    let hub_tls = ca.node("hub");
    let hub = RunningHub::start(loopback(), &hub_tls, HubConfig::default()).await;
    let addr = hub.addr;
    let publisher = connected_client(addr, &ca.node("publisher")).await;
    let subscriber = connected_client(addr, &ca.node("subscriber")).await;
    let mut state = subscriber.subscribe("state.>").expect("subscribe");
    let mut news = subscriber.subscribe("news.*").expect("subscribe");
    subscriber.flush(WAIT).await.expect("flush");

    publisher.publish("state.node.a", None, b"up".to_vec()).expect("publish");
    publisher.publish("news.a", None, b"first".to_vec()).expect("publish");
    assert_eq!(recv(&mut state).await.payload, b"up");
    assert_eq!(recv(&mut news).await.payload, b"first");

    hub.stop().await;
    wait_until("both clients noticed the hub is gone", || {
        !publisher.is_connected() && !subscriber.is_connected()
    })
    .await;
    // Published while there is no hub: queued, sent after reconnecting.
    publisher.publish("state.node.a", None, b"up again".to_vec()).expect("queued while disconnected");

    let hub = RunningHub::start(addr, &hub_tls, HubConfig::default()).await;
    publisher.wait_connected(WAIT).await.expect("publisher reconnects");
    subscriber.wait_connected(WAIT).await.expect("subscriber reconnects");

    // Whichever got to the new hub first, the subscriber converges on the current state: live if
    // it resubscribed first, retained if the publisher did.
    assert_eq!(recv(&mut state).await.payload, b"up again");

    // Once a flush succeeds on the new connection the resubscription is in place.
    eventually("the subscriber's resubscription is confirmed", || subscriber.flush(WAIT)).await;
    publisher.publish("news.b", None, b"second".to_vec()).expect("publish");
    assert_eq!(recv(&mut news).await.payload, b"second");

    let stats = hub.stats();
    assert_eq!(stats.connections, 2);
    assert!(publisher.stats().connects >= 2);
    assert!(subscriber.stats().connects >= 2);
    assert!(subscriber.stats().disconnects >= 1);
    hub.stop().await;
}

#[tokio::test]
async fn retained_state_is_redelivered_after_a_reconnect() {
    let ca = Ca::new("ring");
    let hub_tls = ca.node("hub");
    let hub = RunningHub::start(loopback(), &hub_tls, HubConfig::default()).await;
    let addr = hub.addr;
    let subscriber = connected_client(addr, &ca.node("subscriber")).await;
    let mut state = subscriber.subscribe("state.ring.>").expect("subscribe");
    subscriber.flush(WAIT).await.expect("flush");

    // A publisher sets state and goes away; the hub holds it.
    {
        let publisher = connected_client(addr, &ca.node("publisher")).await;
        for (topic, value) in [("state.ring.a", "1"), ("state.ring.b", "2")] {
            publisher.publish(topic, None, value.as_bytes().to_vec()).expect("publish");
        }
        publisher.flush(WAIT).await.expect("flush");
    }
    let mut first = vec![recv(&mut state).await, recv(&mut state).await];
    first.sort_by(|x, y| x.topic.cmp(&y.topic));

    // The hub restarts and the publisher comes back and sets the state again, as a level-triggered
    // publisher does on every start. The subscriber, reconnecting on its own, sees it again.
    hub.stop().await;
    wait_until("the subscriber noticed the hub is gone", || !subscriber.is_connected()).await;
    let hub = RunningHub::start(addr, &hub_tls, HubConfig::default()).await;
    {
        let publisher = connected_client(addr, &ca.node("publisher")).await;
        for (topic, value) in [("state.ring.a", "1"), ("state.ring.b", "2")] {
            publisher.publish(topic, None, value.as_bytes().to_vec()).expect("publish");
        }
        publisher.flush(WAIT).await.expect("flush");
    }
    let mut again = vec![recv(&mut state).await, recv(&mut state).await];
    again.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(again, first);

    // And a second subscriber that connects only now gets the same state from the hub alone.
    let late = connected_client(addr, &ca.node("late")).await;
    let mut late_state = late.subscribe("state.ring.*").expect("subscribe");
    let mut got = vec![recv(&mut late_state).await, recv(&mut late_state).await];
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(got, first);
    hub.stop().await;
}

#[tokio::test]
async fn retained_state_is_redelivered_when_the_connection_drops_but_the_hub_stays() {
    let ca = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
    let publisher = connected_client(hub.addr, &ca.node("publisher")).await;
    publisher.publish("state.svc.web", None, b"3 instances".to_vec()).expect("publish");
    publisher.flush(WAIT).await.expect("flush");

    let proxy = Proxy::start(hub.addr).await;
    let subscriber = connected_client(proxy.addr, &ca.node("subscriber")).await;
    let mut state = subscriber.subscribe("state.svc.*").expect("subscribe");
    assert_eq!(recv(&mut state).await.payload, b"3 instances");

    proxy.cut();
    wait_until("the subscriber noticed the cut", || subscriber.stats().disconnects == 1).await;
    subscriber.wait_connected(WAIT).await.expect("reconnects");
    // Nobody published anything new: the hub's retained copy is delivered on resubscription.
    assert_eq!(recv(&mut state).await.payload, b"3 instances");
    assert_eq!(hub.stats().published, 1);
    hub.stop().await;
}
