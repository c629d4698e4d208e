//! The `Transport` contract, written once against `dyn Transport` and run three times: against
//! the embedded hub (`hub::…`), against a nats-server each test starts (`nats::…`), and against
//! one in operator mode whose clients connect as `parent` users minted by the ring's account
//! after it started (`nats_jwt::…`).

mod transport_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use enjin_bus::acl::Member;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::frame::MAX_PAYLOAD;
use enjin_bus::hub::HubConfig;
use enjin_bus::nats::auth::{NatsAccount, NatsOperator, server_config};
use enjin_bus::nats::{NatsAuth, NatsConfig, NatsTransport};
use enjin_bus::transport::{Transport, TransportError, request};
use enjin_testkit::NatsServer;
use transport_common::*;

/// What the transports under test connect to; kept alive for the whole test.
enum Backend {
    Hub { ca: Box<Ca>, hub: Box<RunningHub> },
    Nats(NatsServer),
    NatsJwt { server: NatsServer, account: Box<NatsAccount> },
}

impl Backend {
    async fn hub() -> Backend {
        let ca = Ca::new("ring");
        let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
        Backend::Hub { ca: Box::new(ca), hub: Box::new(hub) }
    }

    async fn nats() -> Backend {
        Backend::Nats(NatsServer::start())
    }

    async fn nats_jwt() -> Backend {
        let operator = NatsOperator::generate().expect("operator");
        let account = operator.account("conformance");
        let server = NatsServer::start_with(&server_config(&operator, &[&account]));
        Backend::NatsJwt { server, account: Box::new(account) }
    }

    /// A connected transport named `name`, with the default subscription queue.
    async fn transport(&self, name: &str) -> Arc<dyn Transport> {
        self.transport_with(name, ClientConfig::default().subscription_queue).await
    }

    /// A connected transport whose subscriptions hold at most `subscription_queue` messages.
    async fn transport_with(&self, name: &str, subscription_queue: usize) -> Arc<dyn Transport> {
        match self {
            Backend::Hub { ca, hub } => {
                let config = ClientConfig { subscription_queue, ..fast_client() };
                let client =
                    BusClient::connect(hub.addr, "localhost", &ca.node(name), config).expect("client");
                client.wait_connected(WAIT).await.expect("client connects");
                Arc::new(client)
            }
            Backend::Nats(server) => {
                let config = NatsConfig { subscription_queue, ..NatsConfig::new(server.url()) };
                Arc::new(NatsTransport::connect(config).await.expect("connect to nats-server"))
            }
            Backend::NatsJwt { server, account } => {
                let member = Member::parent(name).expect("a parent member");
                let credentials = account.mint_user(&member, Duration::from_secs(600)).expect("mint");
                let config = NatsConfig {
                    subscription_queue,
                    member_id: Some(member.id().to_owned()),
                    auth: Some(NatsAuth::Credentials(credentials)),
                    ..NatsConfig::new(server.url())
                };
                Arc::new(
                    NatsTransport::connect(config).await.expect("connect to nats-server as a minted user"),
                )
            }
        }
    }
}

/// Returns once everything `t` queued before has been handled by the server: `t` subscribes to
/// a topic of its own, publishes on it and waits for the echo (servers keep each connection's
/// order).
async fn settle(t: &dyn Transport) {
    static N: AtomicU32 = AtomicU32::new(0);
    let topic = format!("settle.t{}", N.fetch_add(1, Ordering::Relaxed));
    let mut sub = t.subscribe(&topic).expect("subscribe");
    t.publish(&topic, None, Vec::new()).expect("publish");
    recv(&mut sub).await;
}

async fn wildcards_match_as_nats_does(b: Backend) {
    let subscriber = b.transport("subscriber").await;
    let publisher = b.transport("publisher").await;
    assert_eq!(subscriber.connection_state().map(|c| *c.borrow()), Some(true));
    let mut one = subscriber.subscribe("a.*.c").expect("subscribe");
    let mut tail = subscriber.subscribe("a.>").expect("subscribe");
    let mut exact = subscriber.subscribe("a.b").expect("subscribe");
    settle(&*subscriber).await;
    for topic in ["a.b", "a.x.c", "a.x.y.z", "b.x.c", "a"] {
        publisher.publish(topic, None, topic.as_bytes().to_vec()).expect("publish");
    }
    assert_eq!(recv(&mut exact).await.topic, "a.b");
    let got: Vec<String> = [recv(&mut tail).await, recv(&mut tail).await, recv(&mut tail).await]
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(got, ["a.b", "a.x.c", "a.x.y.z"]);
    let m = recv(&mut one).await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("a.x.c", &b"a.x.c"[..]));
    assert_quiet(&mut one).await;
    assert_quiet(&mut exact).await;
    assert_quiet(&mut tail).await;
    assert!(matches!(subscriber.subscribe("a.>.b"), Err(TransportError::Topic(_))));
    assert!(matches!(publisher.publish("a.*", None, Vec::new()), Err(TransportError::Topic(_))));
}

async fn request_reply_through_a_fresh_inbox(b: Backend) {
    let responder = b.transport("responder").await;
    let requester = b.transport("requester").await;
    let mut requests = responder.subscribe("svc.echo").expect("subscribe");
    settle(&*responder).await;
    let replier = Arc::clone(&responder);
    let serving = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let reply_to = m.reply_to.expect("a reply topic");
            let mut answer = b"re: ".to_vec();
            answer.extend_from_slice(&m.payload);
            replier.publish(&reply_to, None, answer).expect("reply");
        }
    });
    let (a, b2) = (requester.new_inbox(), requester.new_inbox());
    assert!(a.starts_with("_inbox.") && a != b2, "{a} {b2}");
    let reply = request(&*requester, "svc.echo", &a, b"ping".to_vec(), WAIT).await.expect("reply");
    assert_eq!((reply.topic.as_str(), reply.payload.as_slice()), (a.as_str(), &b"re: ping"[..]));
    let reply = request(&*requester, "svc.echo", &b2, b"again".to_vec(), WAIT).await.expect("reply");
    assert_eq!(reply.payload, b"re: again");
    serving.abort();
}

async fn retained_state_is_delivered_on_subscribe_and_replaced(b: Backend) {
    let publisher = b.transport("publisher").await;
    publisher.publish("state.node.a", None, b"v1".to_vec()).expect("publish");
    publisher.publish("state.node.a", None, b"v2".to_vec()).expect("publish");
    publisher.publish("state.node.b", None, b"b1".to_vec()).expect("publish");
    publisher.publish("events.node.a", None, b"not kept".to_vec()).expect("publish");
    settle(&*publisher).await;

    let late = b.transport("late").await;
    let mut a = late.subscribe("state.node.a").expect("subscribe");
    assert_eq!(recv(&mut a).await.payload, b"v2", "only the last value");
    assert_quiet(&mut a).await;
    let mut events = late.subscribe("events.>").expect("subscribe");
    assert_quiet(&mut events).await;

    publisher.publish("state.node.a", None, b"v3".to_vec()).expect("publish");
    assert_eq!(recv(&mut a).await.payload, b"v3", "live updates follow");
    settle(&*publisher).await;

    let later = b.transport("later").await;
    for pattern in ["state.>", "state.node.*", "*.node.*"] {
        let mut all = later.subscribe(pattern).expect("subscribe");
        let mut got = [recv(&mut all).await, recv(&mut all).await];
        got.sort_by(|x, y| x.topic.cmp(&y.topic));
        assert_eq!(
            (got[0].topic.as_str(), got[0].payload.as_slice()),
            ("state.node.a", &b"v3"[..]),
            "{pattern}"
        );
        assert_eq!(
            (got[1].topic.as_str(), got[1].payload.as_slice()),
            ("state.node.b", &b"b1"[..]),
            "{pattern}"
        );
        assert_quiet(&mut all).await;
    }

    publisher.publish("state.node.a", None, Vec::new()).expect("publish");
    assert_eq!(recv(&mut a).await.payload, b"", "live subscribers see the clear");
    settle(&*publisher).await;
    let mut after_clear = later.subscribe("state.node.a").expect("subscribe");
    assert_quiet(&mut after_clear).await;
}

async fn dropping_a_subscription_unsubscribes(b: Backend) {
    let subscriber = b.transport_with("subscriber", 8).await;
    let publisher = b.transport("publisher").await;
    let dropped = subscriber.subscribe("t.x").expect("subscribe");
    let mut kept = subscriber.subscribe("t.>").expect("subscribe");
    settle(&*subscriber).await;
    drop(dropped);
    settle(&*subscriber).await;
    // Far more than the dropped subscription's queue: were it still fed, nothing else may
    // notice; the kept one, read as it goes, gets every message.
    for n in 0..64u8 {
        publisher.publish("t.x", None, vec![n]).expect("publish");
        assert_eq!(recv(&mut kept).await.payload, [n]);
    }
    assert_quiet(&mut kept).await;
}

async fn a_slow_subscriber_is_cut_off_rather_than_skipping(b: Backend) {
    const QUEUE: usize = 8;
    const SENT: u32 = 200;
    let subscriber = b.transport_with("slow", QUEUE).await;
    let publisher = b.transport("publisher").await;
    let mut slow = subscriber.subscribe("feed").expect("subscribe");
    settle(&*subscriber).await;
    for n in 0..SENT {
        publisher.publish("feed", None, n.to_be_bytes().to_vec()).expect("publish");
    }
    settle(&*publisher).await;
    settle(&*subscriber).await;
    let mut next = 0u32;
    while let Some(m) = tokio::time::timeout(WAIT, slow.next()).await.expect("the subscription ends in time")
    {
        assert_eq!(m.payload, next.to_be_bytes(), "no message skipped");
        next += 1;
    }
    assert!((1..SENT).contains(&next), "cut off after {next} of {SENT}");
    // The transport itself is fine: a new subscription works.
    let mut again = subscriber.subscribe("feed").expect("subscribe");
    settle(&*subscriber).await;
    publisher.publish("feed", None, b"after".to_vec()).expect("publish");
    assert_eq!(recv(&mut again).await.payload, b"after");
}

async fn each_publisher_s_order_is_kept(b: Backend) {
    const EACH: u32 = 400;
    let subscriber = b.transport("subscriber").await;
    let publishers = [b.transport("p0").await, b.transport("p1").await];
    let mut sub = subscriber.subscribe("seq.*").expect("subscribe");
    settle(&*subscriber).await;
    for n in 0..EACH {
        for (i, p) in publishers.iter().enumerate() {
            p.publish(&format!("seq.p{i}"), None, n.to_be_bytes().to_vec()).expect("publish");
        }
    }
    let mut next = [0u32; 2];
    for _ in 0..2 * EACH {
        let m = recv(&mut sub).await;
        let i = usize::from(m.topic == "seq.p1");
        assert_eq!(m.payload, next[i].to_be_bytes(), "{}", m.topic);
        next[i] += 1;
    }
    assert_eq!(next, [EACH, EACH]);
}

async fn payloads_up_to_the_frame_limit_pass(b: Backend) {
    let subscriber = b.transport("subscriber").await;
    let publisher = b.transport("publisher").await;
    let mut sub = subscriber.subscribe("big").expect("subscribe");
    settle(&*subscriber).await;
    let largest: Vec<u8> = (0..MAX_PAYLOAD).map(|i| (i % 251) as u8).collect();
    publisher.publish("big", Some("_inbox.big"), largest.clone()).expect("publish");
    let m = recv(&mut sub).await;
    assert_eq!(m.reply_to.as_deref(), Some("_inbox.big"));
    assert!(m.payload == largest, "the largest payload arrives intact");
    assert!(matches!(
        publisher.publish("big", None, vec![0; MAX_PAYLOAD + 1]),
        Err(TransportError::PayloadTooLarge { len }) if len == MAX_PAYLOAD + 1
    ));
    // Retained too, with its reply topic.
    publisher.publish("state.big", Some("_inbox.big"), largest.clone()).expect("publish");
    settle(&*publisher).await;
    let mut state = subscriber.subscribe("state.big").expect("subscribe");
    let m = recv(&mut state).await;
    assert_eq!(m.reply_to.as_deref(), Some("_inbox.big"));
    assert!(m.payload == largest, "the largest retained payload arrives intact");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod hub {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::hub().await).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::nats().await).await;
                }
            )*
        }
        mod nats_jwt {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::nats_jwt().await).await;
                }
            )*
        }
    };
}

conformance!(
    wildcards_match_as_nats_does,
    request_reply_through_a_fresh_inbox,
    retained_state_is_delivered_on_subscribe_and_replaced,
    dropping_a_subscription_unsubscribes,
    a_slow_subscriber_is_cut_off_rather_than_skipping,
    each_publisher_s_order_is_kept,
    payloads_up_to_the_frame_limit_pass,
);
