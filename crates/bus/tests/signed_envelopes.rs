//! Signed envelopes as a receiver sees them: whatever happens to an envelope's bytes on the way,
//! the verifier never delivers anything but what the sender signed.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use enjin_bus::counters::{Counters, RejectReason};
use enjin_bus::envelope::Envelope;
use enjin_bus::identity::Identity;
use enjin_bus::trust::{KeyRole, TrustBundle, TrustedKey, Verifier, VerifierConfig};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;
const RING: u8 = 1;

fn identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32])
}

/// Ring 1 trusting parent key 1 and member keys 2 and 3, with fresh replay state.
fn verifier() -> Verifier {
    let keys = vec![
        TrustedKey::new(identity(1).key_id(), KeyRole::Parent, "parent"),
        TrustedKey::new(identity(2).key_id(), KeyRole::Member, "node a"),
        TrustedKey::new(identity(3).key_id(), KeyRole::Member, "node b"),
    ];
    let bundle = TrustBundle { ring: RING, version: 1, keys };
    Verifier::new(bundle, VerifierConfig::default(), Arc::new(Counters::new())).unwrap()
}

fn signed() -> Vec<u8> {
    let payload = br#"{"node":"a","state":"ready"}"#.to_vec();
    Envelope::sign(&identity(2), RING, "state.node.a", 7, NOW, Some("_inbox.0f"), payload).unwrap().encode()
}

/// Delivery outcome of `bytes` to a verifier with fresh replay state.
fn deliver(bytes: &[u8]) -> Result<Envelope, RejectReason> {
    verifier().accept(bytes, NOW)
}

#[test]
fn the_untouched_envelope_is_delivered() {
    let env = deliver(&signed()).unwrap();
    assert_eq!(env.topic(), "state.node.a");
    assert_eq!(env.reply_to(), Some("_inbox.0f"));
    assert_eq!(env.sender(), identity(2).key_id());
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let bytes = signed();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            match deliver(&b) {
                Ok(env) => panic!("flipping bit {bit} of byte {i} was accepted: {env:?}"),
                Err(reason) => seen.insert(reason.label()),
            };
        }
    }
    // Each kind of damage is caught by the check meant for it.
    for label in ["malformed", "wrong_ring", "unknown_key", "tampered"] {
        assert!(seen.contains(label), "no flip was rejected as {label}: {seen:?}");
    }
}

#[test]
fn signatures_do_not_transplant() {
    let a = Envelope::sign(&identity(2), RING, "x", 1, NOW, None, b"one".to_vec()).unwrap().encode();
    let b = Envelope::sign(&identity(2), RING, "x", 2, NOW, None, b"two".to_vec()).unwrap().encode();
    let mut spliced = b.clone();
    let sig_at = spliced.len() - 64;
    spliced[sig_at..].copy_from_slice(&a[a.len() - 64..]);
    assert_eq!(deliver(&spliced).unwrap_err(), RejectReason::Tampered);
    // Nor does an envelope signed for one ring pass in another, even from a key both trust.
    let other_ring = Envelope::sign(&identity(2), 2, "x", 3, NOW, None, vec![]).unwrap().encode();
    assert_eq!(deliver(&other_ring).unwrap_err(), RejectReason::WrongRing);
}

#[test]
fn a_key_cannot_sign_as_another() {
    // Key 9 signs, claiming to be key 2: the sender field is what the signature is checked
    // against, so this is tampering, never delivery under key 2's name.
    let genuine = signed();
    let forged = Envelope::sign(&identity(9), RING, "state.node.a", 8, NOW, None, vec![]).unwrap().encode();
    let mut claimed = forged.clone();
    claimed[7 + "state.node.a".len()..][..32].copy_from_slice(identity(2).key_id().as_bytes());
    assert_eq!(deliver(&forged).unwrap_err(), RejectReason::UnknownKey);
    assert_eq!(deliver(&claimed).unwrap_err(), RejectReason::Tampered);
    assert!(deliver(&genuine).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_single_byte_change_is_rejected(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut bytes = signed();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        let mut v = verifier();
        prop_assert!(v.accept(&bytes, NOW).is_err());
        prop_assert_eq!(v.counters().delivered(), 0);
        prop_assert_eq!(v.counters().rejected_total(), 1);
    }

    #[test]
    fn truncation_or_extension_is_rejected(
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..80),
    ) {
        let bytes = signed();
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert_eq!(deliver(short).unwrap_err(), RejectReason::Malformed);
        let mut long = bytes.clone();
        long.extend_from_slice(&extra);
        prop_assert_eq!(deliver(&long).unwrap_err(), RejectReason::Malformed);
    }

    #[test]
    fn arbitrary_bytes_are_never_delivered(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..300),
        magic in any::<bool>(),
    ) {
        if magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(b"EJB1");
        }
        let mut v = verifier();
        prop_assert!(v.accept(&bytes, NOW).is_err());
    }
}
