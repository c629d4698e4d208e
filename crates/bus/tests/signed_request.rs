//! Request/reply between bus nodes over real mutual-TLS sockets on loopback: the answer comes
//! back verified on the request's inbox, an answer from a key the asker does not trust is
//! ignored, and an unanswered request times out.

mod transport_common;

use std::sync::Arc;
use std::time::Duration;

use enjin_bus::client::BusClient;
use enjin_bus::counters::RejectReason;
use enjin_bus::hub::HubConfig;
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, NodeError};
use enjin_bus::transport::Transport;
use enjin_bus::trust::{KeyRole, Publisher, TrustBundle, TrustedKey, VerifierConfig};
use transport_common::*;

const RING: u8 = 1;

struct Ring {
    ca: Ca,
    hub: RunningHub,
    bundle: TrustBundle,
}

/// A node and its client, to flush subscriptions through to the hub.
struct Node {
    node: Arc<BusNode>,
    client: Arc<BusClient>,
}

impl Ring {
    /// A hub and a bundle trusting `parent` as the parent and `members` as members.
    async fn start(parent: &Identity, members: &[&Identity]) -> Ring {
        let ca = Ca::new("ring");
        let hub = RunningHub::start(loopback(), &ca.node("hub"), HubConfig::default()).await;
        let mut keys = vec![TrustedKey::new(parent.key_id(), KeyRole::Parent, "parent")];
        for (i, m) in members.iter().enumerate() {
            keys.push(TrustedKey::new(m.key_id(), KeyRole::Member, format!("member {i}")));
        }
        Ring { ca, hub, bundle: TrustBundle { ring: RING, version: 1, keys } }
    }

    /// A node on the bus signing as `identity`, trusting the ring's bundle.
    async fn node(&self, name: &str, identity: Identity) -> Node {
        let client = Arc::new(connected_client(self.hub.addr, &self.ca.node(name)).await);
        let node = BusNode::start(client.clone(), identity, self.bundle.clone(), VerifierConfig::default())
            .expect("node starts");
        Node { node: Arc::new(node), client }
    }
}

fn identity() -> Identity {
    Identity::generate().expect("identity")
}

/// Answer every request on `topic` with `answer(payload)`, after `delay`, until aborted; returns
/// once the subscription is registered at the hub.
async fn serve(
    n: &Node,
    topic: &str,
    delay: Duration,
    answer: fn(&[u8]) -> Vec<u8>,
) -> tokio::task::JoinHandle<()> {
    let mut requests = n.node.subscribe(topic).expect("subscribe");
    n.client.flush(WAIT).await.expect("flush the subscription");
    let node = n.node.clone();
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            tokio::time::sleep(delay).await;
            node.reply(&req, answer(req.payload())).expect("reply");
        }
    })
}

#[tokio::test]
async fn a_request_gets_its_verified_reply() {
    let (parent, member) = (identity(), identity());
    let ring = Ring::start(&parent, &[&member]).await;
    let asker = ring.node("asker", parent).await;
    let responder = ring.node("responder", member).await;
    let server = serve(&responder, "logs.host-1", Duration::ZERO, |p| [b"re: ".as_slice(), p].concat()).await;

    let reply = asker.node.request("logs.host-1", b"hello".to_vec(), WAIT).await.expect("a reply");
    assert_eq!(reply.payload(), b"re: hello");
    assert_eq!(reply.sender(), responder.node.key_id());
    assert!(reply.topic().starts_with("_inbox."), "{}", reply.topic());
    // Each request has its own inbox, and answers keep coming.
    let again = asker.node.request("logs.host-1", b"again".to_vec(), WAIT).await.expect("a second reply");
    assert_eq!(again.payload(), b"re: again");
    assert_ne!(again.topic(), reply.topic());
    server.abort();
    ring.hub.stop().await;
}

#[tokio::test]
async fn a_reply_from_an_untrusted_key_is_ignored() {
    let (parent, member) = (identity(), identity());
    let ring = Ring::start(&parent, &[&member]).await;
    let asker = ring.node("asker", parent).await;
    // A stranger (its key is in no bundle) answers at once; the trusted member a little later.
    let stranger = ring.node("stranger", identity()).await;
    let member = ring.node("member", member).await;
    let forger = serve(&stranger, "stats.ask", Duration::ZERO, |_| b"forged".to_vec()).await;
    let genuine = serve(&member, "stats.ask", Duration::from_millis(200), |_| b"genuine".to_vec()).await;

    let unknown_before = asker.node.counters().rejected(RejectReason::UnknownKey);
    let reply = asker.node.request("stats.ask", Vec::new(), WAIT).await.expect("a reply");
    assert_eq!(reply.payload(), b"genuine");
    assert_eq!(reply.sender(), member.node.key_id());
    let unknown = asker.node.counters().rejected(RejectReason::UnknownKey);
    assert!(unknown > unknown_before, "the stranger's reply is counted as from an unknown key");

    // With only the stranger answering, the request gets nothing it accepts.
    genuine.abort();
    let err =
        asker.node.request("stats.ask", Vec::new(), Duration::from_millis(400)).await.expect_err("no reply");
    assert!(matches!(err, NodeError::RequestTimeout { .. }), "{err}");
    forger.abort();
    ring.hub.stop().await;
}

#[tokio::test]
async fn an_unanswered_request_times_out() {
    let parent = identity();
    let ring = Ring::start(&parent, &[]).await;
    let asker = ring.node("asker", parent).await;
    let started = tokio::time::Instant::now();
    let err = asker
        .node
        .request("nobody.home", b"?".to_vec(), Duration::from_millis(300))
        .await
        .expect_err("no reply");
    assert!(matches!(&err, NodeError::RequestTimeout { topic, .. } if topic == "nobody.home"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(err.to_string(), "no verified reply to the request on nobody.home within 300ms");
    ring.hub.stop().await;
}

#[tokio::test]
async fn only_a_request_can_be_replied_to() {
    let (parent, member) = (identity(), identity());
    let ring = Ring::start(&parent, &[&member]).await;
    let a = ring.node("a", parent).await;
    let b = ring.node("b", member).await;
    let mut sub = b.node.subscribe("plain.news").expect("subscribe");
    b.client.flush(WAIT).await.expect("flush");
    a.node.publish("plain.news", b"no reply wanted".to_vec()).expect("publish");
    let env = tokio::time::timeout(WAIT, sub.next()).await.expect("in time").expect("open");
    let err = b.node.reply(&env, Vec::new()).expect_err("nothing to reply to");
    assert!(matches!(err, NodeError::NoReplyTo { .. }), "{err}");
    assert_eq!(err.to_string(), "the envelope on plain.news asks for no reply");
    ring.hub.stop().await;
}

#[tokio::test]
async fn a_request_is_answered_only_on_the_parents_own_inbox() {
    let secret = [7u8; 32];
    let (member, other) = (identity(), identity());
    let ring = Ring::start(&Identity::from_secret_bytes(&secret), &[&member, &other]).await;
    // A second signer with the parent's key, made first so that its sequence numbers stay below
    // those of the asker's own envelopes later.
    let parent = Publisher::starting_now(Identity::from_secret_bytes(&secret), RING, Arc::default());
    let asker = ring.node("asker", Identity::from_secret_bytes(&secret)).await;
    assert!(asker.client.member().is_some_and(|m| m.id() == "parent"));
    let responder = ring.node("responder", member).await;
    let mut requests = responder.node.subscribe("logs.host-1").expect("subscribe");
    responder.client.flush(WAIT).await.expect("flush");
    let other = ring.node("other", other).await;

    // Signed by the parent's key but naming a retained topic, a member's inbox, or no inbox at
    // all as its reply-to: refused and counted, nothing sent.
    for reply_to in ["state.desired.h2", "_inbox.0a0b0c0d-1111-4222-8333-444455556666.x", "_inbox.parent"] {
        let sealed = parent.seal("logs.host-1", Some(reply_to), b"?".to_vec(), now_ms()).expect("seal");
        asker.client.publish("logs.host-1", Some(reply_to), sealed).expect("publish");
        let req = tokio::time::timeout(WAIT, requests.next()).await.expect("in time").expect("open");
        let err = responder.node.reply(&req, b"secret".to_vec()).expect_err("refused");
        assert!(matches!(err, NodeError::ForeignReplyTo { .. }), "{err}");
    }
    assert_eq!(responder.node.counters().replies_refused(), 3);

    // A member's request is not answered either: a node answers only its parent.
    let asking = other.node.request("logs.host-1", b"?".to_vec(), WAIT);
    let answer = async {
        let req = tokio::time::timeout(WAIT, requests.next()).await.expect("in time").expect("open");
        assert!(
            req.reply_to().is_some_and(|r| r.starts_with("_inbox.parent.")),
            "both are parent components here"
        );
        let from_member = responder.node.reply(&req, Vec::new());
        assert!(matches!(from_member, Err(NodeError::ForeignReplyTo { .. })), "{from_member:?}");
    };
    let (asked, ()) = tokio::join!(tokio::time::timeout(Duration::from_millis(500), asking), answer);
    assert!(asked.is_err(), "no answer came");
    assert_eq!(responder.node.counters().replies_refused(), 4);

    // The parent's own request, on its own inbox, is answered.
    let server = serve_next(&responder, requests);
    let reply = asker.node.request("logs.host-1", b"hi".to_vec(), WAIT).await.expect("a reply");
    assert_eq!(reply.payload(), b"ok");
    assert!(reply.topic().starts_with("_inbox.parent."), "{}", reply.topic());
    server.abort();
    ring.hub.stop().await;
}

fn serve_next(n: &Node, mut requests: enjin_bus::node::NodeSubscription) -> tokio::task::JoinHandle<()> {
    let node = n.node.clone();
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            node.reply(&req, b"ok".to_vec()).expect("reply");
        }
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
