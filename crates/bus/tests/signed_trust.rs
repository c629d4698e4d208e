//! A ring's trust set over its life, driven the way a node drives it: a bundle and a key file at
//! birth, envelopes from peers, and trust updates from the parent, all through the public API.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use enjin_bus::counters::{self, Counters, RejectReason};
use enjin_bus::envelope::Envelope;
use enjin_bus::identity::Identity;
use enjin_bus::trust::{
    KeyRole, Publisher, TRUST_UPDATE_TOPIC, TrustBundle, TrustChange, TrustError, TrustUpdate, TrustedKey,
    Verifier, VerifierConfig,
};

const RING: u8 = 1;
const T0: i64 = 1_700_000_000_000;

struct Node {
    publisher: Publisher,
}

impl Node {
    fn new(counters: &Arc<Counters>) -> Self {
        let identity = Identity::generate().unwrap();
        Self { publisher: Publisher::new(identity, RING, 1, counters.clone()) }
    }

    fn key(&self, role: KeyRole, label: &str) -> TrustedKey {
        TrustedKey::new(self.publisher.identity().key_id(), role, label)
    }

    fn say(&self, now: i64) -> Vec<u8> {
        self.publisher.seal("state.node", None, b"ready".to_vec(), now).unwrap()
    }

    fn update(&self, version: u64, change: TrustChange, now: i64) -> Vec<u8> {
        let payload = TrustUpdate { version, change }.to_json().unwrap();
        self.publisher.seal(TRUST_UPDATE_TOPIC, None, payload, now).unwrap()
    }
}

/// Receives `bytes` as the node's bus loop would: accept, then apply trust updates.
fn receive(v: &mut Verifier, bytes: &[u8], now: i64) -> Result<Envelope, RejectReason> {
    let env = v.accept(bytes, now)?;
    if env.topic() == TRUST_UPDATE_TOPIC {
        match v.apply_update(&env, now) {
            Ok(_) => {}
            Err(TrustError::NotParent(_)) => return Err(RejectReason::UntrustedUpdate),
            Err(e) => panic!("unexpected trust error: {e}"),
        }
    }
    Ok(env)
}

#[test]
fn a_ring_lives_through_joins_rotation_revocation_and_replacement() {
    let published = Arc::new(Counters::new());
    let parent = Node::new(&published);
    let a = Node::new(&published);
    let b = Node::new(&published);

    // Birth: node b gets its key file and the bundle from its parent.
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("bus.key");
    b.publisher.identity().save(&key_path).unwrap();
    assert_eq!(Identity::load(&key_path).unwrap().key_id(), b.publisher.identity().key_id());
    let bundle = TrustBundle {
        ring: RING,
        version: 1,
        keys: vec![
            parent.key(KeyRole::Parent, "ring 0 supervisor"),
            a.key(KeyRole::Member, "node a"),
            b.key(KeyRole::Member, "node b"),
        ],
    };
    let bundle = TrustBundle::from_json(&serde_json::to_vec(&bundle).unwrap()).unwrap();
    let received = Arc::new(Counters::new());
    let mut v = Verifier::new(bundle, VerifierConfig::default(), received.clone()).unwrap();

    assert!(receive(&mut v, &a.say(T0), T0).is_ok());

    // A newcomer is unknown until the parent vouches for it, and a member cannot vouch.
    let c = Node::new(&published);
    assert_eq!(receive(&mut v, &c.say(T0), T0).unwrap_err(), RejectReason::UnknownKey);
    let by_member = a.update(2, TrustChange::AddKey(c.key(KeyRole::Member, "node c")), T0);
    assert_eq!(receive(&mut v, &by_member, T0).unwrap_err(), RejectReason::UntrustedUpdate);
    let self_promotion = a.update(2, TrustChange::AddKey(a.key(KeyRole::Parent, "me")), T0);
    assert_eq!(receive(&mut v, &self_promotion, T0).unwrap_err(), RejectReason::UntrustedUpdate);
    assert_eq!(receive(&mut v, &c.say(T0), T0).unwrap_err(), RejectReason::UnknownKey);
    let by_parent = parent.update(2, TrustChange::AddKey(c.key(KeyRole::Member, "node c")), T0);
    receive(&mut v, &by_parent, T0).unwrap();
    assert!(receive(&mut v, &c.say(T0), T0).is_ok());
    // The parent's update re-delivered is a replay; re-sent as a new envelope it is a no-op.
    assert_eq!(receive(&mut v, &by_parent, T0).unwrap_err(), RejectReason::Replayed);
    let resent = parent.update(2, TrustChange::AddKey(c.key(KeyRole::Member, "node c")), T0);
    let env = v.accept(&resent, T0).unwrap();
    assert!(!v.apply_update(&env, T0).unwrap());

    // Node a rotates its key with a 10 s overlap.
    let a2 = Node::new(&published);
    let rotate = TrustChange::Rotate {
        old: a.publisher.identity().key_id(),
        new: a2.key(KeyRole::Member, "node a (2)"),
        overlap_ms: 10_000,
    };
    receive(&mut v, &parent.update(3, rotate, T0), T0).unwrap();
    let during = T0 + 9_999;
    assert!(receive(&mut v, &a.say(during), during).is_ok());
    assert!(receive(&mut v, &a2.say(during), during).is_ok());
    let after = T0 + 10_000;
    assert_eq!(receive(&mut v, &a.say(after), after).unwrap_err(), RejectReason::RevokedKey);
    assert!(receive(&mut v, &a2.say(after), after).is_ok());

    // Node c is revoked at once.
    let revoke = TrustChange::Revoke(c.publisher.identity().key_id());
    receive(&mut v, &parent.update(4, revoke, after), after).unwrap();
    assert_eq!(receive(&mut v, &c.say(after), after).unwrap_err(), RejectReason::RevokedKey);

    // The parent brings the node level with a whole new bundle.
    let replacement = TrustBundle {
        ring: RING,
        version: 10,
        keys: vec![parent.key(KeyRole::Parent, "ring 0 supervisor"), b.key(KeyRole::Member, "node b")],
    };
    receive(&mut v, &parent.update(10, TrustChange::Replace(replacement.clone()), after), after).unwrap();
    assert_eq!(v.bundle(), &replacement);
    assert_eq!(receive(&mut v, &a2.say(after), after).unwrap_err(), RejectReason::UnknownKey);

    // A stale message and a message for another ring.
    let old = after - 31_000;
    assert_eq!(receive(&mut v, &b.say(old), after).unwrap_err(), RejectReason::Stale);
    let elsewhere = Publisher::new(Identity::load(&key_path).unwrap(), 2, 1, published.clone());
    let wrong_ring = elsewhere.seal("state.node", None, vec![], after).unwrap();
    assert_eq!(receive(&mut v, &wrong_ring, after).unwrap_err(), RejectReason::WrongRing);

    assert_eq!(received.trust_updates_applied(), 4);
    assert_eq!(received.rejected(RejectReason::UntrustedUpdate), 2);
    assert_eq!(received.rejected(RejectReason::UnknownKey), 3);
    assert_eq!(received.rejected(RejectReason::RevokedKey), 2);
    assert_eq!(received.rejected(RejectReason::Replayed), 1);
    assert_eq!(received.rejected(RejectReason::Stale), 1);
    assert_eq!(received.rejected(RejectReason::WrongRing), 1);
    let text = counters::render_prometheus(&[(0, &published), (RING, &received)]);
    assert!(text.contains("enjin_bus_rejected_total{ring=\"1\",reason=\"untrusted_update\"} 2\n"), "{text}");
    assert!(text.contains("enjin_bus_trust_updates_applied_total{ring=\"1\"} 4\n"), "{text}");
    assert!(text.contains(&format!("enjin_bus_published_total{{ring=\"0\"}} {}\n", published.published())));
    assert_eq!(text.matches("# TYPE enjin_bus_delivered_total counter").count(), 1);
}

#[test]
fn an_update_that_fails_leaves_the_bundle_untouched() {
    let counters = Arc::new(Counters::new());
    let parent = Node::new(&counters);
    let member = Node::new(&counters);
    let bundle = TrustBundle {
        ring: RING,
        version: 1,
        keys: vec![parent.key(KeyRole::Parent, "parent"), member.key(KeyRole::Member, "member")],
    };
    let mut v = Verifier::new(bundle.clone(), VerifierConfig::default(), counters).unwrap();
    // The replacement drops the parent's key: applying it would lock the parent out for good.
    let orphan = TrustBundle { ring: RING, version: 2, keys: vec![member.key(KeyRole::Member, "member")] };
    let env = v.accept(&parent.update(2, TrustChange::Replace(orphan), T0), T0).unwrap();
    assert!(matches!(v.apply_update(&env, T0), Err(TrustError::Invalid(_))));
    assert_eq!(v.bundle(), &bundle);
    // A later, valid update still applies.
    let newcomer = Node::new(v.counters());
    let env = v.accept(&parent.update(3, TrustChange::AddKey(newcomer.key(KeyRole::Member, "n")), T0), T0);
    assert!(v.apply_update(&env.unwrap(), T0).unwrap());
    assert_eq!(v.bundle().version, 3);
}
