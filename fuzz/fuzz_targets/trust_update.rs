//! Arbitrary bytes as the payload of a trust update that a parent key really signed: whatever
//! the parent sends, applying it must not panic, must leave a valid bundle, and must either
//! change nothing or raise the version. (Mutating whole envelopes almost never produces a valid
//! signature, so `envelope_decode` rarely gets this far; this target signs inside the harness.)

#![no_main]

use std::sync::{Arc, OnceLock};

use enjin_bus::counters::Counters;
use enjin_bus::envelope::Envelope;
use enjin_bus::identity::Identity;
use enjin_bus::trust::{KeyRole, TRUST_UPDATE_TOPIC, TrustBundle, TrustedKey, Verifier, VerifierConfig};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000_000;

struct Fixture {
    parent: Identity,
    bundle: TrustBundle,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let parent = Identity::from_secret_bytes(&[1; 32]);
        let bundle = TrustBundle {
            ring: 1,
            version: 1,
            keys: vec![
                TrustedKey::new(parent.key_id(), KeyRole::Parent, "parent"),
                TrustedKey::new(Identity::from_secret_bytes(&[2; 32]).key_id(), KeyRole::Member, "member"),
            ],
        };
        Fixture { parent, bundle }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Ok(env) = Envelope::sign(&f.parent, 1, TRUST_UPDATE_TOPIC, 1, NOW, None, data.to_vec()) else {
        return;
    };
    let mut verifier = Verifier::new(f.bundle.clone(), VerifierConfig::default(), Arc::new(Counters::new()))
        .expect("the fuzz bundle is valid");
    let env = verifier.accept(&env.encode(), NOW).expect("a parent-signed envelope is accepted");
    match verifier.apply_update(&env, NOW) {
        Ok(true) => assert!(verifier.bundle().version > f.bundle.version),
        Ok(false) | Err(_) => assert_eq!(verifier.bundle(), &f.bundle, "a refused update changed trust"),
    }
    assert!(verifier.bundle().validate().is_ok(), "an update left an invalid bundle");
});
