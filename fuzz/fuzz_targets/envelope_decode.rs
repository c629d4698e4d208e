//! Arbitrary bytes as a bus envelope off the network: decoding must never panic, anything that
//! decodes must re-encode to exactly the same bytes (the encoding is canonical, which the
//! signature relies on), and the verifier must deliver only what a trusted key really signed.
//!
//! Seed it with valid envelopes signed by the keys below (secrets `[1; 32]`, parent, and
//! `[2; 32]`, member, ring 1, timestamp `NOW`) so mutations start from deep inside the format.

#![no_main]

use std::sync::{Arc, OnceLock};

use enjin_bus::counters::Counters;
use enjin_bus::envelope::Envelope;
use enjin_bus::identity::Identity;
use enjin_bus::trust::{KeyRole, TRUST_UPDATE_TOPIC, TrustBundle, TrustedKey, Verifier, VerifierConfig};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000_000;

fn bundle() -> &'static TrustBundle {
    static BUNDLE: OnceLock<TrustBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| TrustBundle {
        ring: 1,
        version: 1,
        keys: vec![
            TrustedKey::new(Identity::from_secret_bytes(&[1; 32]).key_id(), KeyRole::Parent, "parent"),
            TrustedKey::new(Identity::from_secret_bytes(&[2; 32]).key_id(), KeyRole::Member, "member"),
        ],
    })
}

fuzz_target!(|data: &[u8]| {
    let decoded = Envelope::decode(data);
    if let Ok(env) = &decoded {
        assert_eq!(env.encode(), data, "decode then encode changed the bytes");
    }

    // A fresh verifier per input, so every run is reproducible from its input alone.
    let mut verifier = Verifier::new(bundle().clone(), VerifierConfig::default(), Arc::new(Counters::new()))
        .expect("the fuzz bundle is valid");
    match verifier.accept(data, NOW) {
        Ok(env) => {
            // The verifier checks the signature over the received bytes; the envelope's own
            // check re-encodes. Both must agree, or one of them is verifying the wrong thing.
            assert_eq!(Ok(&env), decoded.as_ref(), "accepted what decode refused");
            assert!(env.verify_signature().is_ok(), "accepted an envelope whose signature fails");
            if env.topic() == TRUST_UPDATE_TOPIC {
                let before = verifier.bundle().clone();
                match verifier.apply_update(&env, NOW) {
                    Ok(true) => assert!(verifier.bundle().version > before.version),
                    Ok(false) | Err(_) => {
                        assert_eq!(verifier.bundle(), &before, "a refused update changed trust")
                    }
                }
                assert!(verifier.bundle().validate().is_ok(), "an update left an invalid bundle");
            }
        }
        Err(_) => assert_eq!(verifier.counters().rejected_total(), 1),
    }
});
