//! Arbitrary bytes as an API bearer token, through the functions the server runs on every
//! `Authorization` header (`enjin_control::read_bearer`: the header read, then a biscuit's
//! signature chain verified): nothing may panic, and nothing but a biscuit the server's own key
//! signed may verify.
//!
//! The first byte picks how the rest is presented:
//! - 0: as the header's value, as sent;
//! - 1: as a biscuit's bytes (base64url behind `Bearer enjinb_`), to reach the decoder;
//! - 2: as a Datalog check appended to a valid root biscuit (as `enjin token attenuate --check`
//!   writes), which must verify, name its root's token, and run its checks within the limits.
//!
//! Seed it with real headers (`Bearer enjinb_…` from `enjin token create`) and checks
//! (`check if operation("get")`) so mutations start from deep inside the format.

#![no_main]

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use enjin_control::biscuits::{BISCUIT_MARK, RequestFacts, Restriction, TokenKey, attenuate};
use enjin_control::read_bearer;
use enjin_model::kinds::Verb;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// The root token every seed biscuit names.
const ROOT: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

fn key() -> &'static TokenKey {
    static KEY: OnceLock<TokenKey> = OnceLock::new();
    KEY.get_or_init(TokenKey::generate)
}

fn root() -> &'static str {
    static ROOT_BISCUIT: OnceLock<String> = OnceLock::new();
    ROOT_BISCUIT.get_or_init(|| key().mint(ROOT).expect("mint the root biscuit"))
}

fn facts() -> RequestFacts {
    RequestFacts {
        now: DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("a valid time"),
        operation: Some(Verb::Get),
        resource: Some("release".into()),
        route: Some("/v1/apps/{app}".into()),
        app: Some("shop".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let header = String::from_utf8_lossy(rest);
            if let Ok(Some(v)) = read_bearer(&header, key().public()) {
                // Only a biscuit this key signed verifies; the fuzzer can only have copied one.
                assert_eq!(v.token, ROOT, "verified a biscuit naming another token");
            }
        }
        1 => {
            let header = format!("Bearer {BISCUIT_MARK}{}", base64::encode_config(rest, base64::URL_SAFE));
            assert!(
                !matches!(read_bearer(&header, key().public()), Ok(Some(_))),
                "bytes the fuzzer made verified under the server's key"
            );
        }
        _ => {
            let check = String::from_utf8_lossy(rest).into_owned();
            let narrow = Restriction { checks: vec![check], ..Restriction::default() };
            // Most inputs are not Datalog: refused when the block is built, which is fine.
            let Ok(derived) = attenuate(root(), &narrow) else { return };
            let v = match read_bearer(&format!("Bearer {derived}"), key().public()) {
                Ok(Some(v)) => v,
                other => panic!("a biscuit derived from a valid root did not verify: {other:?}"),
            };
            assert_eq!(v.token, ROOT, "a block changed the token the biscuit names");
            let _ = v.attenuation.check(&facts());
        }
    }
});
