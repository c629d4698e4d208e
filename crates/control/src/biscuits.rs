//! Attenuated tokens (Biscuit). Every API token the control plane issues comes with a *root
//! biscuit*: a capability token whose authority block names the token's id, signed with the
//! ring 0 token-signing key. Its holder can derive narrower ones offline by appending blocks of
//! checks ("only these verbs", "only this app", "only until then"); nobody can remove or change
//! a block without breaking the signature chain.
//!
//! Invariants:
//! - A biscuit never grants anything by itself: it names a root token, and the principal is
//!   that token's (its memberships narrowed by its ceiling). Blocks can only add checks, so a
//!   derived token holds at most what its root holds.
//! - Decoding untrusted bytes never panics and is bounded: at most [`MAX_BISCUIT_BYTES`] and
//!   [`MAX_BLOCKS`] blocks; the Datalog runs under [`LIMITS`].
//! - Checks run with facts the server states about the request (see [`RequestFacts`]); the
//!   policy is `allow if true`, so only the blocks' checks restrict.

use std::path::Path;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{AuthorizerBuilder, BlockBuilder, date, fact, string};
use biscuit_auth::error::{FailedCheck, Logic, Token as BiscuitError};
use biscuit_auth::{Algorithm, AuthorizerLimits, Biscuit, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit};
use chrono::{DateTime, SecondsFormat, Utc};
use enjin_model::kinds::Verb;
use uuid::Uuid;

/// Every biscuit bearer starts with this: apart from opaque tokens (`enjin_`) and join tokens
/// (`enjin_join_`), and easy to scan for when one leaks.
pub const BISCUIT_MARK: &str = "enjinb_";
/// A bearer biscuit larger than this is refused before it is decoded.
pub const MAX_BISCUIT_BYTES: usize = 16 * 1024;
/// Blocks beyond this many are refused: each costs a signature check on every cache miss.
pub const MAX_BLOCKS: usize = 32;
/// Bounds on one run of a biscuit's Datalog: a block cannot make the server work for long.
pub const LIMITS: AuthorizerLimits =
    AuthorizerLimits { max_facts: 1000, max_iterations: 100, max_time: Duration::from_millis(5) };

/// Why a bearer biscuit or a derivation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BiscuitProblem {
    /// Longer than [`MAX_BISCUIT_BYTES`] once decoded (judged by its base64 length, before
    /// decoding).
    #[error("the biscuit is longer than {MAX_BISCUIT_BYTES} bytes")]
    TooLarge,
    /// More than [`MAX_BLOCKS`] blocks (for a derivation: the block it would add is counted).
    #[error("the biscuit has {0} blocks; at most {MAX_BLOCKS} are accepted")]
    TooManyBlocks(usize),
    /// The bearer lacks the [`BISCUIT_MARK`] prefix.
    #[error("not a biscuit: it does not start with {BISCUIT_MARK}")]
    NotABiscuit,
    /// Malformed base64 or Biscuit encoding, a signature chain that does not verify under the
    /// token-signing key, or a Datalog run that failed; the text is the library's.
    #[error("the biscuit cannot be read or its signatures do not verify: {0}")]
    Untrusted(String),
    /// A block signed by a third-party key: the server has no way to trust those keys.
    #[error("the biscuit carries third-party blocks, which are not accepted")]
    ThirdParty,
    /// The authority block names no token id, several, or one that is not a uuid.
    #[error("the biscuit's authority block names no single token")]
    NoToken,
    /// A block could not be built or appended: an invalid app label, a check that does not parse,
    /// a restriction that narrows nothing, or an encoding failure.
    #[error("cannot build the block: {0}")]
    Block(String),
}

/// The ring 0 token-signing key: an Ed25519 key whose public half verifies every biscuit.
pub struct TokenKey {
    keys: KeyPair,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("public", &self.keys.public().to_bytes_hex()).finish_non_exhaustive()
    }
}

/// Why the token-signing key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// The key file could not be read or written, or others may read it.
    #[error(transparent)]
    File(#[from] enjin_pki::PkiError),
    /// The file's contents are not a hex Ed25519 private key.
    #[error("{path} holds no Ed25519 token-signing key: {error}")]
    BadKey {
        /// The key file, as given.
        path: String,
        /// Why its contents were not a key.
        error: String,
    },
}

impl TokenKey {
    /// A fresh key kept only in memory (tests, benchmarks): its biscuits die with the process.
    pub fn generate() -> TokenKey {
        TokenKey { keys: KeyPair::new_with_algorithm(Algorithm::Ed25519) }
    }

    /// The key in `path` (hex, 0600), made there on first use. The file is written atomically,
    /// private from creation; a file others can read is refused.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, TokenKeyError> {
        if path.exists() {
            let hex = enjin_pki::read_private(path)?;
            let bad = |e: &dyn std::fmt::Display| TokenKeyError::BadKey {
                path: path.display().to_string(),
                error: e.to_string(),
            };
            let private = PrivateKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519).map_err(|e| bad(&e))?;
            return Ok(TokenKey { keys: KeyPair::from(&private) });
        }
        let key = TokenKey::generate();
        enjin_pki::write_private(path, &format!("{}\n", key.keys.private().to_bytes_hex()))?;
        Ok(key)
    }

    /// The public half, which verifies every biscuit this key minted (or that was derived from one).
    pub fn public(&self) -> PublicKey {
        self.keys.public()
    }

    /// The root biscuit of token `id`: one authority block, `token("<id>")`.
    pub fn mint(&self, id: Uuid) -> Result<String, BiscuitProblem> {
        let token = fact("token", &[string(&id.to_string())]);
        let biscuit = Biscuit::builder()
            .fact(token)
            .and_then(|b| b.build(&self.keys))
            .map_err(|e| BiscuitProblem::Block(e.to_string()))?;
        encode(biscuit.to_base64())
    }
}

fn encode(base64: Result<String, BiscuitError>) -> Result<String, BiscuitProblem> {
    base64.map(|b| format!("{BISCUIT_MARK}{b}")).map_err(|e| BiscuitProblem::Block(e.to_string()))
}

/// The base64 part of a bearer biscuit, size-checked.
fn payload(bearer: &str) -> Result<&str, BiscuitProblem> {
    let b64 = bearer.strip_prefix(BISCUIT_MARK).ok_or(BiscuitProblem::NotABiscuit)?;
    // Base64 takes 4 characters per 3 bytes.
    if b64.len() > MAX_BISCUIT_BYTES / 3 * 4 + 4 {
        return Err(BiscuitProblem::TooLarge);
    }
    Ok(b64)
}

/// A biscuit whose signature chain verified under the token-signing key.
pub struct Attenuation {
    biscuit: Biscuit,
    /// Each block's revocation id, hex, authority block first.
    revocation_ids: Vec<String>,
}

impl std::fmt::Debug for Attenuation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attenuation").field("revocation_ids", &self.revocation_ids).finish_non_exhaustive()
    }
}

/// A verified bearer biscuit: the root token it names, and its checks.
#[derive(Debug)]
pub struct Verified {
    /// The id of the root token the authority block names; the caller must still look it up.
    pub token: Uuid,
    /// The biscuit's checks, to run against each request it is presented with.
    pub attenuation: Attenuation,
}

/// Parse a bearer biscuit and verify its signature chain against `root`. Only the signature is
/// checked here; whether the named token exists and whether the checks pass is for the caller.
pub fn verify(bearer: &str, root: PublicKey) -> Result<Verified, BiscuitProblem> {
    let biscuit =
        Biscuit::from_base64(payload(bearer)?, root).map_err(|e| BiscuitProblem::Untrusted(e.to_string()))?;
    if biscuit.block_count() > MAX_BLOCKS {
        return Err(BiscuitProblem::TooManyBlocks(biscuit.block_count()));
    }
    if biscuit.external_public_keys().iter().any(Option::is_some) {
        return Err(BiscuitProblem::ThirdParty);
    }
    let token = token_of(&biscuit)?;
    let revocation_ids = biscuit.revocation_identifiers().iter().map(|id| hex(id)).collect();
    Ok(Verified { token, attenuation: Attenuation { biscuit, revocation_ids } })
}

/// The token id the authority block names. Queries see only the authority block's facts (and
/// the authorizer's, which states none), so a later block cannot name another token.
fn token_of(biscuit: &Biscuit) -> Result<Uuid, BiscuitProblem> {
    let mut authorizer = AuthorizerBuilder::new()
        .set_limits(LIMITS)
        .build(biscuit)
        .map_err(|e| BiscuitProblem::Untrusted(e.to_string()))?;
    let ids: Vec<(String,)> = authorizer
        .query_with_limits("token_id($id) <- token($id)", LIMITS)
        .map_err(|e| BiscuitProblem::Untrusted(e.to_string()))?;
    match ids.as_slice() {
        [(id,)] => id.parse().map_err(|_| BiscuitProblem::NoToken),
        _ => Err(BiscuitProblem::NoToken),
    }
}

/// Lowercase hex, two digits per byte, no separator: how revocation ids are written in store
/// keys and shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the server states about a request for a biscuit's checks: `time(now)`,
/// `operation("<verb>")`, `resource("<resource>")` (the route's permission), `route("<template>")`
/// and, where the route names one, `app("<name>")`.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// The time the server takes for the request (`time($t)`); expiry checks compare with it.
    pub now: DateTime<Utc>,
    /// The verb of the route's permission (`operation("get")`); `None` for public routes, which
    /// then fail any check on it.
    pub operation: Option<Verb>,
    /// The resource of the route's permission (`resource("release")`); `None` for public routes
    /// and for a watch whose query names no kind.
    pub resource: Option<String>,
    /// The matched route template (`route("/v1/apps/{app}/logs")`), not the concrete path.
    pub route: Option<String>,
    /// The `{app}` the path names, when the route has one.
    pub app: Option<String>,
}

impl Attenuation {
    /// Each block's revocation id (hex), authority block first.
    pub fn revocation_ids(&self) -> &[String] {
        &self.revocation_ids
    }

    /// Run every block's checks against the request's facts; `Err` says which failed, and
    /// whether the biscuit has merely expired.
    ///
    /// Expiry is a check on `time` like any other, so it is told apart by what it does rather
    /// than by how it is written: a check that fails now but held at the epoch, with every
    /// other fact unchanged, is one that time has run out on. An expired biscuit is no longer
    /// a credential (401), while a check refusing this request is a refusal (403).
    pub fn check(&self, facts: &RequestFacts) -> Result<(), CheckFailure> {
        let failed_now = match self.failed_checks(facts) {
            Ok(failed) if failed.is_empty() => return Ok(()),
            Ok(failed) => failed,
            Err(why) => return Err(CheckFailure::Refused(why)),
        };
        let at_epoch = RequestFacts { now: DateTime::<Utc>::UNIX_EPOCH, ..facts.clone() };
        // A run that cannot finish at the epoch proves nothing about time: keep the refusal.
        let failed_then = self.failed_checks(&at_epoch).unwrap_or_else(|_| failed_now.clone());
        let expired: Vec<&FailedCheck> = failed_now.iter().filter(|c| !failed_then.contains(c)).collect();
        if expired.is_empty() {
            return Err(CheckFailure::Refused(describe(failed_now.iter())));
        }
        Err(CheckFailure::Expired(describe(expired.into_iter())))
    }

    /// The checks that fail with these facts (none: the request passes), or why the checks
    /// could not be run at all.
    fn failed_checks(&self, facts: &RequestFacts) -> Result<Vec<FailedCheck>, String> {
        let mut builder = AuthorizerBuilder::new().set_limits(LIMITS);
        let mut add = |name: &str, value: biscuit_auth::builder::Term| -> Result<(), String> {
            builder = std::mem::take(&mut builder).fact(fact(name, &[value])).map_err(|e| e.to_string())?;
            Ok(())
        };
        add("time", date(&SystemTime::from(facts.now)))?;
        if let Some(v) = facts.operation {
            add("operation", string(v.name()))?;
        }
        for (name, value) in [("resource", &facts.resource), ("route", &facts.route), ("app", &facts.app)] {
            if let Some(value) = value {
                add(name, string(value))?;
            }
        }
        let mut authorizer = builder
            .policy("allow if true")
            .and_then(|b| b.build(&self.biscuit))
            .map_err(|e| format!("cannot run its checks: {e}"))?;
        match authorizer.authorize() {
            Ok(_) => Ok(Vec::new()),
            Err(BiscuitError::FailedLogic(
                Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
            )) => Ok(checks),
            Err(BiscuitError::RunLimit(e)) => Err(format!("its checks ran past the server's limits: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Why a biscuit's checks refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// Checks that held before and fail now: the biscuit has expired. Names the checks.
    Expired(String),
    /// Checks that refuse this request whenever it is made. Names the checks, or why they
    /// could not be run.
    Refused(String),
}

fn describe<'a>(checks: impl Iterator<Item = &'a FailedCheck>) -> String {
    checks.map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// How to narrow a biscuit (`enjin token attenuate`).
#[derive(Debug, Clone, Default)]
pub struct Restriction {
    /// Only these operations; empty: any.
    pub verbs: Vec<Verb>,
    /// Only requests about this app.
    pub app: Option<String>,
    /// Only until then.
    pub expires_at: Option<DateTime<Utc>>,
    /// Further checks in Biscuit's Datalog, as written (`check if route("/v1/apps/{app}/logs")`).
    pub checks: Vec<String>,
}

impl Restriction {
    /// The block of checks this restriction appends.
    pub fn block(&self) -> Result<BlockBuilder, BiscuitProblem> {
        let mut checks = Vec::new();
        // `*` allows every verb: no check.
        if !self.verbs.is_empty() && !self.verbs.contains(&Verb::Any) {
            let alternatives: Vec<String> =
                self.verbs.iter().map(|v| format!("operation({:?})", v.name())).collect();
            checks.push(format!("check if {}", alternatives.join(" or ")));
        }
        if let Some(app) = &self.app {
            enjin_model::validate_label(app)
                .map_err(|m| BiscuitProblem::Block(format!("app {app:?} {m}")))?;
            checks.push(format!("check if app({app:?})"));
        }
        if let Some(t) = self.expires_at {
            checks.push(format!("check if time($t), $t <= {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)));
        }
        checks.extend(self.checks.iter().cloned());
        if checks.is_empty() {
            return Err(BiscuitProblem::Block(
                "nothing to narrow: name verbs, an app, an expiry or a check".into(),
            ));
        }
        let mut block = BlockBuilder::new();
        for c in checks {
            block = block.check(c.as_str()).map_err(|e| BiscuitProblem::Block(format!("{c}: {e}")))?;
        }
        Ok(block)
    }
}

/// Derive a narrower biscuit from `bearer`, offline: no key is needed, only the biscuit (whose
/// last block carries the secret that signs the next). The result holds at most what `bearer`
/// holds, and is checked by the server like any other.
pub fn attenuate(bearer: &str, restriction: &Restriction) -> Result<String, BiscuitProblem> {
    let unverified = UnverifiedBiscuit::from_base64(payload(bearer)?)
        .map_err(|e| BiscuitProblem::Untrusted(e.to_string()))?;
    if unverified.block_count() >= MAX_BLOCKS {
        return Err(BiscuitProblem::TooManyBlocks(unverified.block_count() + 1));
    }
    let derived =
        unverified.append(restriction.block()?).map_err(|e| BiscuitProblem::Block(e.to_string()))?;
    encode(derived.to_base64())
}

/// The revocation id of a biscuit's last block (hex): revoking it kills that biscuit and every
/// biscuit derived from it, and nothing it was derived from.
pub fn last_revocation_id(verified: &Verified) -> Option<&str> {
    verified.attenuation.revocation_ids.last().map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(verb: Verb, app: Option<&str>) -> RequestFacts {
        RequestFacts {
            now: Utc::now(),
            operation: Some(verb),
            resource: Some("release".into()),
            route: None,
            app: app.map(str::to_string),
        }
    }

    #[test]
    fn a_root_biscuit_names_its_token_and_a_derived_one_keeps_it() {
        let key = TokenKey::generate();
        let id = Uuid::new_v4();
        let root = key.mint(id).expect("mint");
        assert!(root.starts_with(BISCUIT_MARK));
        let v = verify(&root, key.public()).expect("verify");
        assert_eq!(v.token, id);
        assert!(v.attenuation.check(&facts(Verb::Delete, None)).is_ok(), "a root biscuit has no checks");
        let narrow = Restriction { verbs: vec![Verb::Get], app: Some("shop".into()), ..Default::default() };
        let derived = attenuate(&root, &narrow).expect("attenuate");
        let v = verify(&derived, key.public()).expect("verify derived");
        assert_eq!(v.token, id);
        assert_eq!(v.attenuation.revocation_ids().len(), 2);
        assert!(v.attenuation.check(&facts(Verb::Get, Some("shop"))).is_ok());
        let refused = v.attenuation.check(&facts(Verb::Get, Some("blog"))).expect_err("other app");
        assert!(matches!(&refused, CheckFailure::Refused(why) if why.contains("app")), "{refused:?}");
        assert!(v.attenuation.check(&facts(Verb::Create, Some("shop"))).is_err());
        assert!(v.attenuation.check(&facts(Verb::Get, None)).is_err(), "no app named: refused");
    }

    #[test]
    fn a_block_cannot_name_another_token() {
        let key = TokenKey::generate();
        let root = key.mint(Uuid::new_v4()).expect("mint");
        let other = Uuid::new_v4();
        let block = BlockBuilder::new().fact(fact("token", &[string(&other.to_string())])).expect("fact");
        let unverified = UnverifiedBiscuit::from_base64(payload(&root).expect("payload")).expect("parse");
        let forged = encode(unverified.append(block).expect("append").to_base64()).expect("encode");
        let v = verify(&forged, key.public()).expect("still signed");
        assert_ne!(v.token, other, "only the authority block names the token");
    }

    #[test]
    fn expiry_is_a_check_on_time() {
        let key = TokenKey::generate();
        let root = key.mint(Uuid::new_v4()).expect("mint");
        let soon = Restriction {
            expires_at: Some(Utc::now() + chrono::TimeDelta::seconds(60)),
            ..Default::default()
        };
        let v = verify(&attenuate(&root, &soon).expect("attenuate"), key.public()).expect("verify");
        let mut f = facts(Verb::Get, None);
        assert!(v.attenuation.check(&f).is_ok());
        f.now += chrono::TimeDelta::seconds(120);
        let expired = v.attenuation.check(&f).expect_err("expired");
        assert!(matches!(&expired, CheckFailure::Expired(why) if why.contains("time")), "{expired:?}");
    }

    #[test]
    fn an_expired_biscuit_is_told_apart_from_a_refused_request() {
        let key = TokenKey::generate();
        let root = key.mint(Uuid::new_v4()).expect("mint");
        let past = Restriction {
            verbs: vec![Verb::Get],
            expires_at: Some(Utc::now() - chrono::TimeDelta::seconds(60)),
            ..Default::default()
        };
        let v = verify(&attenuate(&root, &past).expect("attenuate"), key.public()).expect("verify");
        // Expired and also refused (a create): expired wins, the token is no credential now.
        for verb in [Verb::Get, Verb::Create] {
            assert!(matches!(v.attenuation.check(&facts(verb, None)), Err(CheckFailure::Expired(_))));
        }
        // A check on time that was never true is a refusal, not an expiry.
        let not_yet = Restriction {
            checks: vec!["check if time($t), $t >= 2999-01-01T00:00:00Z".into()],
            ..Default::default()
        };
        let v = verify(&attenuate(&root, &not_yet).expect("attenuate"), key.public()).expect("verify");
        assert!(matches!(v.attenuation.check(&facts(Verb::Get, None)), Err(CheckFailure::Refused(_))));
        let only_get = Restriction { verbs: vec![Verb::Get], ..Default::default() };
        let v = verify(&attenuate(&root, &only_get).expect("attenuate"), key.public()).expect("verify");
        assert!(matches!(v.attenuation.check(&facts(Verb::Create, None)), Err(CheckFailure::Refused(_))));
    }

    #[test]
    fn another_key_and_tampering_are_refused() {
        let key = TokenKey::generate();
        let root = key.mint(Uuid::new_v4()).expect("mint");
        assert!(matches!(verify(&root, TokenKey::generate().public()), Err(BiscuitProblem::Untrusted(_))));
        let mut bytes = root.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert!(verify(&tampered, key.public()).is_err());
    }

    #[test]
    fn random_and_mutated_bearers_are_refused_without_panicking() {
        let key = TokenKey::generate();
        let root = key.mint(Uuid::new_v4()).expect("mint");
        let derived = attenuate(&root, &Restriction { verbs: vec![Verb::Get], ..Default::default() })
            .expect("attenuate");
        let good = derived.into_bytes();
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("random");
        let mut state = u64::from_le_bytes(seed) | 1;
        let mut next = move || {
            // xorshift: cheap, varied enough to walk the decoder's branches.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=";
        for round in 0..3000 {
            let bearer = if round % 2 == 0 {
                let len = (next() % 600) as usize;
                let body: String =
                    (0..len).map(|_| B64[(next() % B64.len() as u64) as usize] as char).collect();
                format!("{BISCUIT_MARK}{body}")
            } else {
                let mut b = good.clone();
                for _ in 0..=(next() % 4) {
                    let at = BISCUIT_MARK.len() + (next() as usize) % (b.len() - BISCUIT_MARK.len());
                    b[at] = B64[(next() % B64.len() as u64) as usize];
                }
                if next() % 3 == 0 {
                    let cut = BISCUIT_MARK.len() + (next() as usize) % (b.len() - BISCUIT_MARK.len());
                    b.truncate(cut);
                }
                String::from_utf8(b).expect("ascii")
            };
            if let Ok(v) = verify(&bearer, key.public()) {
                // A mutation can land in base64 padding bits and leave the bytes whole.
                assert!(v.attenuation.check(&facts(Verb::Get, None)).is_ok() || round % 2 == 1);
            }
        }
        assert!(matches!(verify("enjinb_", key.public()), Err(BiscuitProblem::Untrusted(_))));
        let huge = format!("{BISCUIT_MARK}{}", "A".repeat(MAX_BISCUIT_BYTES * 2));
        assert!(matches!(verify(&huge, key.public()), Err(BiscuitProblem::TooLarge)));
    }

    #[test]
    fn the_key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token-signing.key");
        let key = TokenKey::load_or_create(&path).expect("create");
        let again = TokenKey::load_or_create(&path).expect("load");
        assert_eq!(key.public(), again.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            !format!("{key:?}").contains(&key.keys.private().to_bytes_hex()),
            "Debug never shows the key"
        );
    }
}
