//! NATS decentralized authentication: an operator per cloud, an account per ring, a user per
//! node. The operator signs the accounts, an account signs its users, and nats-server trusts the
//! operator alone: a user minted after the server started connects without the server being
//! reloaded or reconfigured, because the server checks the chain of signatures, not a list.
//!
//! Invariants:
//! - Seeds never leave this module except in [`NatsCredentials`] (the user's own, for its
//!   `.creds` file) and the operator's seed files, which are 0600 and read only when group and
//!   others have no access to them. No `Debug` shows a seed.
//! - A user's permissions are [`nats_permissions`] of its member, the rules the hub enforces;
//!   an empty allow list is written as "deny everything", never left out (NATS reads a missing
//!   list as "no restriction").
//! - An account is a pure function of the account root seed and the ring's name, so several
//!   servers sharing the operator's directory mint users for the same account.
//!
//! The JWTs are NATS JWT v2, encoded here as the nats-io `jwt` library does: a header
//! `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims (`jti` is the unpadded base32 of the
//! SHA-512/256 of the standard claims without `jti`), both base64url without padding, and the
//! issuer's Ed25519 signature over `header.claims`. The cryptography is nkeys' (ed25519-dalek).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::{KeyPair, KeyPairType};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512_256};

use super::nats_permissions;
use crate::acl;
use crate::private_file::{ReadPrivateError, read_private, wipe, write_private};

/// The operator's seed (`SO…`), in the directory given to [`NatsOperator::load_or_create`].
pub const OPERATOR_SEED_FILE: &str = "nats-operator.nk";
/// The seed (`SA…`) every account key is derived from, beside the operator's.
pub const ACCOUNT_ROOT_FILE: &str = "nats-accounts.nk";
/// The operator's name in its JWT.
const OPERATOR_NAME: &str = "enjin";
/// The system account's name in its JWT.
const SYSTEM_ACCOUNT_NAME: &str = "SYS";
/// A seed file is one 58-character line; anything much longer is not one.
const SEED_FILE_MAX_LEN: u64 = 256;
/// Domains of the account-key derivation: a ring's account and the system account can never
/// share a key, whatever the ring is called.
const RING_ACCOUNT_DOMAIN: &[u8] = b"enjin nats ring account v1\0";
const SYSTEM_ACCOUNT_DOMAIN: &[u8] = b"enjin nats system account v1\0";
/// The header of every JWT minted here.
const JWT_HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Why the operator's keys could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum NatsOperatorError {
    /// The directory could not be created.
    #[error("failed to create {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A seed file could not be opened, examined or read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The seed file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A seed file path names a directory, FIFO, device or socket.
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// Group or others have some access to a seed file; it is not used.
    #[error(
        "{} has mode {mode:04o}, refusing to use it: group and others must have no access (chmod 600 it)",
        path.display()
    )]
    Permissions {
        /// The seed file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A seed file does not hold one nkey seed of the expected kind.
    #[error("{} does not hold an nkey seed of an {expected}", path.display())]
    Format {
        /// The seed file.
        path: PathBuf,
        /// The kind of key expected (`operator`, `account`).
        expected: &'static str,
    },
    /// A new seed file could not be written.
    #[error("failed to write {}: {source}", path.display())]
    Write {
        /// The seed file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The operating system gave no random bytes for a new seed.
    #[error("failed to generate a nats key: no randomness from the operating system: {0}")]
    Random(getrandom::Error),
}

/// Why a user could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintUserError {
    /// The operating system gave no random bytes for the user's key.
    #[error("failed to generate a nats user key: no randomness from the operating system: {0}")]
    Random(getrandom::Error),
    /// `now` plus the validity does not fit a JWT's time fields, or `now` is before 1970.
    #[error("a nats user jwt cannot expire {valid_for:?} after {now:?}")]
    Expiry {
        /// When the user was minted.
        now: SystemTime,
        /// How long it was to be valid.
        valid_for: Duration,
    },
    /// The key a node sent to be vouched for is not a NATS user's public key (`U…`).
    #[error("not a nats user public key")]
    NotAUserKey,
}

/// A cloud's NATS operator: the key nats-server trusts, and the root the ring accounts' keys
/// are derived from. Its system account (which nats-server needs in operator mode) comes with
/// it.
pub struct NatsOperator {
    key: KeyPair,
    account_root: [u8; 32],
    system: NatsAccount,
}

impl fmt::Debug for NatsOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOperator").field("public_key", &self.key.public_key()).finish_non_exhaustive()
    }
}

impl Drop for NatsOperator {
    fn drop(&mut self) {
        wipe(&mut self.account_root);
    }
}

impl NatsOperator {
    /// A fresh operator and account root from the operating system's random source.
    pub fn generate() -> Result<Self, NatsOperatorError> {
        let mut operator = [0u8; 32];
        let mut root = [0u8; 32];
        getrandom::fill(&mut operator).map_err(NatsOperatorError::Random)?;
        getrandom::fill(&mut root).map_err(NatsOperatorError::Random)?;
        let made = Self::from_raw(operator, root);
        wipe(&mut operator);
        wipe(&mut root);
        Ok(made)
    }

    fn from_raw(operator: [u8; 32], account_root: [u8; 32]) -> Self {
        let key = key_pair(KeyPairType::Operator, operator);
        let system =
            NatsAccount::derive(&key, SYSTEM_ACCOUNT_DOMAIN, &account_root, SYSTEM_ACCOUNT_NAME, false);
        Self { key, account_root, system }
    }

    /// The operator whose seeds are in `dir` ([`OPERATOR_SEED_FILE`], [`ACCOUNT_ROOT_FILE`]);
    /// when neither exists, a new one whose seeds are written there, 0600 (the directory is
    /// created 0700 if missing). One file without the other is an error, not a new operator:
    /// the accounts minted so far would change.
    pub fn load_or_create(dir: &Path) -> Result<Self, NatsOperatorError> {
        let operator_path = dir.join(OPERATOR_SEED_FILE);
        let root_path = dir.join(ACCOUNT_ROOT_FILE);
        if !operator_path.exists() && !root_path.exists() {
            create_private_dir(dir)?;
            let made = Self::generate()?;
            // The root first: an operator file alone would be refused next time, never
            // mistaken for a complete pair.
            save_seed(&root_path, &key_pair(KeyPairType::Account, made.account_root))?;
            save_seed(&operator_path, &made.key)?;
            return Ok(made);
        }
        let mut operator = load_seed(&operator_path, KeyPairType::Operator, "operator")?;
        let mut root = load_seed(&root_path, KeyPairType::Account, "account")?;
        let made = Self::from_raw(operator, root);
        wipe(&mut operator);
        wipe(&mut root);
        Ok(made)
    }

    /// The operator's public key (`O…`): what nats-server trusts.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The operator's self-signed JWT, naming its system account.
    pub fn jwt(&self) -> String {
        let nats = json!({
            "system_account": self.system.public_key(),
            "type": "operator",
            "version": 2,
        });
        encode_jwt(&self.key, &self.key.public_key(), OPERATOR_NAME, unix_now(), None, nats)
    }

    /// The account of ring `ring`, signed by this operator, with JetStream enabled (the
    /// `ENJIN_STATE` stream lives in it). The same ring always gives the same account key.
    pub fn account(&self, ring: &str) -> NatsAccount {
        NatsAccount::derive(&self.key, RING_ACCOUNT_DOMAIN, &self.account_root, ring, true)
    }

    /// The system account nats-server runs its own services in.
    pub fn system_account(&self) -> &NatsAccount {
        &self.system
    }
}

/// How long a node's NATS user is valid. Nothing renews it yet: a node enrolled again (an
/// agent restarted by `enjin up`) gets a new one.
pub const USER_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// A ring's NATS account: its key signs the ring's users; its JWT, signed by the operator,
/// tells nats-server the account's limits.
#[derive(Clone)]
pub struct NatsAccount {
    name: String,
    key: KeyPair,
    jwt: String,
}

impl fmt::Debug for NatsAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAccount")
            .field("name", &self.name)
            .field("public_key", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

impl NatsAccount {
    fn derive(operator: &KeyPair, domain: &[u8], root: &[u8; 32], name: &str, jetstream: bool) -> Self {
        let mut hash = Sha256::new();
        hash.update(domain);
        hash.update(root);
        hash.update(name.as_bytes());
        let mut raw: [u8; 32] = hash.finalize().into();
        let key = key_pair(KeyPairType::Account, raw);
        wipe(&mut raw);
        // -1 is "no limit"; a missing limit would be 0, which for connections or subscriptions
        // means none allowed. JetStream storage of 0 leaves JetStream off (as the system
        // account must have it).
        let js = if jetstream { -1 } else { 0 };
        let nats = json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1,
                "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
            },
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2,
        });
        let jwt = encode_jwt(operator, &key.public_key(), name, unix_now(), None, nats);
        Self { name: name.to_owned(), key, jwt }
    }

    /// The name in its JWT: the ring's name (`SYS` for the system account).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account's public key (`A…`).
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The account's JWT, signed by the operator.
    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    /// A new user of this account for `member`, valid for `valid_for` from now: a fresh user
    /// key, and a JWT signed by the account naming the member's common name and granting
    /// [`nats_permissions`] of it.
    pub fn mint_user(
        &self,
        member: &acl::Member,
        valid_for: Duration,
    ) -> Result<NatsCredentials, MintUserError> {
        self.mint_user_at(member, SystemTime::now(), valid_for)
    }

    /// [`NatsAccount::mint_user`] as if the time were `now`.
    pub fn mint_user_at(
        &self,
        member: &acl::Member,
        now: SystemTime,
        valid_for: Duration,
    ) -> Result<NatsCredentials, MintUserError> {
        let expiry = || MintUserError::Expiry { now, valid_for };
        let iat = now.duration_since(UNIX_EPOCH).map_err(|_| expiry())?.as_secs();
        let iat = i64::try_from(iat).map_err(|_| expiry())?;
        let exp =
            i64::try_from(valid_for.as_secs()).ok().and_then(|v| iat.checked_add(v)).ok_or_else(expiry)?;
        let user = new_user_key()?;
        let jwt = self.user_jwt(&user.public_key(), member, iat, exp);
        Ok(NatsCredentials { jwt, seed: seed_text(&user) })
    }

    /// A JWT of this account for the user key `public_key` (`U…`, made and kept by the node
    /// that will use it: its seed never leaves it), for `member`, valid for `valid_for` from
    /// now.
    pub fn user_jwt_for(
        &self,
        public_key: &str,
        member: &acl::Member,
        valid_for: Duration,
    ) -> Result<String, MintUserError> {
        let user = KeyPair::from_public_key(public_key).map_err(|_| MintUserError::NotAUserKey)?;
        if user.key_pair_type() != KeyPairType::User {
            return Err(MintUserError::NotAUserKey);
        }
        let now = SystemTime::now();
        let expiry = || MintUserError::Expiry { now, valid_for };
        let iat = now.duration_since(UNIX_EPOCH).map_err(|_| expiry())?.as_secs();
        let iat = i64::try_from(iat).map_err(|_| expiry())?;
        let exp =
            i64::try_from(valid_for.as_secs()).ok().and_then(|v| iat.checked_add(v)).ok_or_else(expiry)?;
        Ok(self.user_jwt(&user.public_key(), member, iat, exp))
    }

    fn user_jwt(&self, user: &str, member: &acl::Member, iat: i64, exp: i64) -> String {
        let permissions = nats_permissions(member);
        let nats = json!({
            "pub": allow_list(&permissions.publish),
            "sub": allow_list(&permissions.subscribe),
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        });
        encode_jwt(&self.key, user, &member.common_name(), iat, Some(exp), nats)
    }
}

/// A fresh user key pair (`U…`), from the operating system's random source.
fn new_user_key() -> Result<KeyPair, MintUserError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(MintUserError::Random)?;
    let user = key_pair(KeyPairType::User, raw);
    wipe(&mut raw);
    Ok(user)
}

/// A fresh user key for a node that asks for its own JWT: its public key (`U…`, to send) and
/// its seed (`SU…`, to keep).
pub fn new_user() -> Result<(String, String), MintUserError> {
    let user = new_user_key()?;
    Ok((user.public_key(), seed_text(&user)))
}

/// A NATS permission from an allow list: an empty list denies everything, because NATS reads
/// a permission without lists as "anything".
fn allow_list(allow: &[String]) -> Value {
    if allow.is_empty() { json!({ "deny": [">"] }) } else { json!({ "allow": allow }) }
}

/// What a node connects to NATS with: its user JWT and the user's seed, which signs the
/// server's nonce.
#[derive(Clone)]
pub struct NatsCredentials {
    /// The user JWT, signed by the ring's account.
    pub jwt: String,
    /// The user's nkey seed (`SU…`); a secret.
    pub seed: String,
}

impl fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCredentials").field("jwt", &self.jwt).finish_non_exhaustive()
    }
}

impl NatsCredentials {
    /// The standard `.creds` file text (what `nsc` writes and NATS clients read).
    pub fn to_creds_file(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.jwt, self.seed
        )
    }

    /// The credentials in a `.creds` file's text; `None` unless it holds one JWT and one user
    /// seed in the standard markers.
    pub fn from_creds_file(text: &str) -> Option<NatsCredentials> {
        fn between(text: &str, begin: &str) -> Option<String> {
            let mut lines = text.lines().skip_while(|l| l.trim() != begin);
            lines.next()?;
            let value = lines.next()?.trim();
            (!value.is_empty() && !value.starts_with('-')).then(|| value.to_string())
        }
        let jwt = between(text, "-----BEGIN NATS USER JWT-----")?;
        let seed = between(text, "-----BEGIN USER NKEY SEED-----")?;
        seed.starts_with("SU").then_some(NatsCredentials { jwt, seed })
    }

    /// Writes [`NatsCredentials::to_creds_file`] to `path` atomically, mode 0600.
    pub fn write_creds_file(&self, path: &Path) -> io::Result<()> {
        let mut text = self.to_creds_file().into_bytes();
        let written = write_private(path, &text);
        wipe(&mut text);
        written
    }
}

/// The nats-server configuration for operator mode: it trusts `operator`, runs its services in
/// the operator's system account, and knows the accounts' JWTs from the start (`resolver:
/// MEMORY`). Users are not listed: any user an account signed is accepted, within its JWT's
/// permissions and expiry.
pub fn server_config(operator: &NatsOperator, accounts: &[&NatsAccount]) -> String {
    let system = operator.system_account();
    let mut config = format!(
        "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n",
        json!(operator.jwt()),
        json!(system.public_key())
    );
    for account in std::iter::once(system).chain(accounts.iter().copied()) {
        config.push_str(&format!("  {}: {}\n", json!(account.public_key()), json!(account.jwt())));
    }
    config.push_str("}\n");
    config
}

/// The standard claims in the nats-io `jwt` library's order; `nats` left out (and `jti` empty)
/// they are what `jti` hashes.
#[derive(Serialize)]
struct Claims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    jti: &'a str,
    iat: i64,
    iss: &'a str,
    name: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    nats: Option<Value>,
}

/// A NATS JWT v2 for `subject`, issued and signed by `issuer`.
fn encode_jwt(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    iat: i64,
    exp: Option<i64>,
    nats: Value,
) -> String {
    let iss = issuer.public_key();
    let mut claims = Claims { exp, jti: "", iat, iss: &iss, name, sub: subject, nats: None };
    let standard = serde_json::to_vec(&claims).expect("claims of strings and integers serialize");
    let jti = BASE32_NOPAD.encode(&Sha512_256::digest(&standard));
    claims.jti = &jti;
    claims.nats = Some(nats);
    let payload = serde_json::to_vec(&claims).expect("claims of strings, integers and JSON serialize");
    let signed =
        format!("{}.{}", BASE64URL_NOPAD.encode(JWT_HEADER.as_bytes()), BASE64URL_NOPAD.encode(&payload));
    let signature = issuer.sign(signed.as_bytes()).expect("a key pair made from a seed can sign");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
}

/// A key pair of `kind` from a raw Ed25519 seed.
fn key_pair(kind: KeyPairType, raw: [u8; 32]) -> KeyPair {
    KeyPair::new_from_raw(kind, raw).expect("nkeys makes a key pair from any 32 bytes")
}

fn seed_text(key: &KeyPair) -> String {
    key.seed().expect("a key pair made from a seed has one")
}

fn unix_now() -> i64 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn create_private_dir(dir: &Path) -> Result<(), NatsOperatorError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| NatsOperatorError::CreateDir { path: dir.to_path_buf(), source })
}

fn save_seed(path: &Path, key: &KeyPair) -> Result<(), NatsOperatorError> {
    let mut text = format!("{}\n", seed_text(key)).into_bytes();
    let written = write_private(path, &text);
    wipe(&mut text);
    written.map_err(|source| NatsOperatorError::Write { path: path.to_path_buf(), source })
}

fn load_seed(path: &Path, kind: KeyPairType, expected: &'static str) -> Result<[u8; 32], NatsOperatorError> {
    let mut buf = read_private(path, SEED_FILE_MAX_LEN).map_err(|e| match e {
        ReadPrivateError::Io(source) => NatsOperatorError::Read { path: path.to_path_buf(), source },
        ReadPrivateError::NotAFile => NatsOperatorError::NotAFile(path.to_path_buf()),
        ReadPrivateError::Permissions(mode) => {
            NatsOperatorError::Permissions { path: path.to_path_buf(), mode }
        }
    })?;
    let parsed = std::str::from_utf8(&buf)
        .ok()
        .and_then(|text| nkeys::decode_seed(text.trim()).ok())
        .filter(|(prefix, _)| KeyPairType::from(*prefix) == kind)
        .map(|(_, raw)| raw);
    wipe(&mut buf);
    parsed.ok_or(NatsOperatorError::Format { path: path.to_path_buf(), expected })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const HOST: &str = "0f6c1a52-3f0e-4d37-9a51-6b2d8c1e7a01";

    /// The header and claims of `jwt` after checking its signature against `issuer`.
    fn verified(jwt: &str, issuer: &str) -> (Value, Value) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let signature = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        KeyPair::from_public_key(issuer).unwrap().verify(signed.as_bytes(), &signature).unwrap();
        let header = serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[0].as_bytes()).unwrap()).unwrap();
        let claims: Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        assert_eq!(claims["iss"], issuer);
        (header, claims)
    }

    #[test]
    fn a_user_jwt_is_signed_by_its_account_and_grants_the_acl_row() {
        let operator = NatsOperator::generate().unwrap();
        let account = operator.account("ring-a");
        let host = acl::Member::node(acl::Role::Host, HOST).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let creds = account.mint_user_at(&host, now, Duration::from_secs(3600)).unwrap();

        let (header, claims) = verified(&creds.jwt, &account.public_key());
        assert_eq!(header, json!({ "typ": "JWT", "alg": "ed25519-nkey" }));
        let user = KeyPair::from_seed(&creds.seed).unwrap();
        assert!(creds.seed.starts_with("SU"));
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["name"], format!("host:{HOST}"));
        assert_eq!(
            (claims["iat"].as_i64(), claims["exp"].as_i64()),
            (Some(1_800_000_000), Some(1_800_003_600))
        );
        let permissions = nats_permissions(&host);
        assert_eq!(claims["nats"]["pub"], json!({ "allow": permissions.publish }));
        assert_eq!(claims["nats"]["sub"], json!({ "allow": permissions.subscribe }));
        assert_eq!(claims["nats"]["subs"], -1);
        assert_eq!(
            (claims["nats"]["type"].as_str(), claims["nats"]["version"].as_i64()),
            (Some("user"), Some(2))
        );

        // `jti` is the hash of the standard claims without it, as nats' jwt library makes it.
        let standard = format!(
            r#"{{"exp":1800003600,"iat":1800000000,"iss":"{}","name":"host:{HOST}","sub":"{}"}}"#,
            account.public_key(),
            user.public_key()
        );
        assert_eq!(claims["jti"], BASE32_NOPAD.encode(&Sha512_256::digest(standard.as_bytes())));

        // Another account's key does not verify it; a changed claim breaks the signature.
        let other = operator.account("ring-b");
        let parts: Vec<&str> = creds.jwt.split('.').collect();
        let signature = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        let other_key = KeyPair::from_public_key(&other.public_key()).unwrap();
        assert!(other_key.verify(signed.as_bytes(), &signature).is_err());
        let forged = claims.to_string().replace(&format!("host:{HOST}"), "parent:control");
        let forged = format!("{}.{}", parts[0], BASE64URL_NOPAD.encode(forged.as_bytes()));
        let account_key = KeyPair::from_public_key(&account.public_key()).unwrap();
        assert!(account_key.verify(forged.as_bytes(), &signature).is_err());
    }

    #[test]
    fn an_empty_allow_list_denies_everything() {
        assert_eq!(allow_list(&[]), json!({ "deny": [">"] }));
        assert_eq!(allow_list(&["a.>".to_owned()]), json!({ "allow": ["a.>"] }));
    }

    #[test]
    fn expiry_that_does_not_fit_is_refused() {
        let account = NatsOperator::generate().unwrap().account("r");
        let host = acl::Member::node(acl::Role::Host, HOST).unwrap();
        let before_1970 = UNIX_EPOCH - Duration::from_secs(1);
        assert!(matches!(
            account.mint_user_at(&host, before_1970, Duration::ZERO),
            Err(MintUserError::Expiry { .. })
        ));
        assert!(matches!(
            account.mint_user_at(&host, SystemTime::now(), Duration::MAX),
            Err(MintUserError::Expiry { .. })
        ));
    }

    #[test]
    fn accounts_are_signed_by_the_operator_and_one_per_ring() {
        let operator = NatsOperator::generate().unwrap();
        let (a, b) = (operator.account("ring-a"), operator.account("ring-b"));
        assert!(a.public_key().starts_with('A'));
        assert_eq!(operator.account("ring-a").public_key(), a.public_key());
        assert_ne!(a.public_key(), b.public_key());
        let system = operator.system_account();
        assert_ne!(operator.account(SYSTEM_ACCOUNT_NAME).public_key(), system.public_key());

        let (_, claims) = verified(a.jwt(), &operator.public_key());
        assert_eq!(
            (claims["sub"].as_str(), claims["name"].as_str()),
            (Some(a.public_key().as_str()), Some("ring-a"))
        );
        let limits = &claims["nats"]["limits"];
        for limit in ["mem_storage", "disk_storage", "streams", "consumer", "conn", "subs", "payload"] {
            assert_eq!(limits[limit], -1, "{limit}");
        }
        let (_, claims) = verified(system.jwt(), &operator.public_key());
        assert_eq!(claims["nats"]["limits"]["disk_storage"], 0, "no JetStream in the system account");

        let (_, claims) = verified(&operator.jwt(), &operator.public_key());
        assert_eq!(claims["sub"], operator.public_key());
        assert_eq!(claims["nats"]["system_account"], system.public_key());
        assert!(operator.public_key().starts_with('O'));

        // Another operator's accounts are other accounts.
        assert_ne!(NatsOperator::generate().unwrap().account("ring-a").public_key(), a.public_key());
    }

    #[test]
    fn the_operator_directory_is_private_and_gives_the_same_accounts_again() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("nats");
        let first = NatsOperator::load_or_create(&keys).unwrap();
        for name in [OPERATOR_SEED_FILE, ACCOUNT_ROOT_FILE] {
            let mode = std::fs::metadata(keys.join(name)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "{name}");
        }
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o700);
        let again = NatsOperator::load_or_create(&keys).unwrap();
        assert_eq!(again.public_key(), first.public_key());
        assert_eq!(again.account("ring-a").public_key(), first.account("ring-a").public_key());
        assert_eq!(again.system_account().public_key(), first.system_account().public_key());

        let operator_file = keys.join(OPERATOR_SEED_FILE);
        std::fs::set_permissions(&operator_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = NatsOperator::load_or_create(&keys).unwrap_err();
        assert!(matches!(err, NatsOperatorError::Permissions { mode: 0o640, .. }), "{err}");
        std::fs::set_permissions(&operator_file, std::fs::Permissions::from_mode(0o600)).unwrap();

        // The account root where the operator seed should be: refused, not taken as one.
        let root = std::fs::read(keys.join(ACCOUNT_ROOT_FILE)).unwrap();
        std::fs::write(&operator_file, &root).unwrap();
        let err = NatsOperator::load_or_create(&keys).unwrap_err();
        assert!(matches!(err, NatsOperatorError::Format { expected: "operator", .. }), "{err}");

        // One file without the other is an error, not a new operator.
        std::fs::remove_file(&operator_file).unwrap();
        assert!(matches!(NatsOperator::load_or_create(&keys), Err(NatsOperatorError::Read { .. })));
    }

    #[test]
    fn a_node_keeps_its_seed_and_gets_a_jwt_for_its_public_key_only() {
        let operator = NatsOperator::generate().expect("operator");
        let account = operator.account("ring-1");
        let host = acl::Member::node(acl::Role::Host, HOST).expect("host");
        let (public, seed) = new_user().expect("user key");
        assert!(public.starts_with('U') && seed.starts_with("SU"));
        let jwt = account.user_jwt_for(&public, &host, Duration::from_secs(60)).expect("jwt");
        let (_, claims) = verified(&jwt, &account.public_key());
        assert_eq!(claims["sub"], public.as_str());
        assert_eq!(claims["name"], host.common_name());
        // Only a user key is vouched for: an account's or an operator's is refused.
        for not_user in [account.public_key(), operator.public_key(), "garbage".into()] {
            assert!(account.user_jwt_for(&not_user, &host, Duration::from_secs(60)).is_err(), "{not_user}");
        }
    }

    #[test]
    fn creds_files_read_back_and_garbage_is_refused() {
        let operator = NatsOperator::generate().expect("operator");
        let host = acl::Member::node(acl::Role::Host, HOST).expect("host");
        let creds = operator.account("ring-1").mint_user(&host, Duration::from_secs(60)).expect("mint");
        let back = NatsCredentials::from_creds_file(&creds.to_creds_file()).expect("parsed");
        assert_eq!((back.jwt.as_str(), back.seed.as_str()), (creds.jwt.as_str(), creds.seed.as_str()));
        for bad in
            ["", "-----BEGIN NATS USER JWT-----\n", "garbage\n\n", &creds.to_creds_file().replace("SU", "SA")]
        {
            assert!(NatsCredentials::from_creds_file(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn creds_files_are_the_standard_format_written_0600_and_debug_hides_seeds() {
        let operator = NatsOperator::generate().unwrap();
        let account = operator.account("r");
        let creds =
            account.mint_user(&acl::Member::parent("control").unwrap(), Duration::from_secs(60)).unwrap();
        let text = creds.to_creds_file();
        let jwt_block =
            format!("-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n", creds.jwt);
        let seed_block =
            format!("-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n", creds.seed);
        assert!(text.starts_with(&jwt_block) && text.contains(&seed_block), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.creds");
        creds.write_creds_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

        let seeds = [creds.seed.clone(), seed_text(&operator.key), seed_text(&account.key)];
        for shown in [format!("{creds:?}"), format!("{operator:?}"), format!("{account:?}")] {
            assert!(seeds.iter().all(|seed| !shown.contains(seed.as_str())), "{shown}");
        }
    }

    #[test]
    fn the_server_config_trusts_the_operator_and_preloads_the_accounts() {
        let operator = NatsOperator::generate().unwrap();
        let ring = operator.account("ring-a");
        let config = server_config(&operator, &[&ring]);
        assert!(config.contains("resolver: MEMORY\n"), "{config}");
        assert!(
            config.contains(&format!("system_account: \"{}\"\n", operator.system_account().public_key()))
        );
        assert!(config.contains(&format!("\"{}\": \"{}\"\n", ring.public_key(), ring.jwt())), "{config}");
        assert!(config.contains(&format!(
            "\"{}\": \"{}\"\n",
            operator.system_account().public_key(),
            operator.system_account().jwt()
        )));
        let operator_line = config.lines().next().unwrap();
        let jwt = operator_line.strip_prefix("operator: \"").and_then(|l| l.strip_suffix('"')).unwrap();
        verified(jwt, &operator.public_key());
    }
}
