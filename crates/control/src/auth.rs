//! Who is calling and what they may do. API tokens are random 256-bit secrets; the store keeps
//! only their SHA-256, so a copy of the store grants nothing. A token speaks for a principal,
//! and the principal's memberships (account + role) give it its permissions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use enjin_model::api::{
    CreateRequest, JoinTokenCreated, ListQuery, TokenCreateRequest, TokenCreated, TokenInfo,
};
use enjin_model::kinds::{AccountSpec, MembershipSpec, NodeSpec, PermSet, Resource, RoleSpec, Verb};
use enjin_model::{FieldError, Ring, validate_label};
use enjin_store::{Compare, KeyValue, Op, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::access::{Grants, Scope, describe_missing};
use crate::biscuits::{self, Attenuation, BISCUIT_MARK, CheckFailure, RequestFacts, TokenKey, Verified};
use crate::registry::{AUTH_GENERATION, Registry, RegistryError};

/// Cached principals beyond this many are dropped all at once; a cache miss costs only a few
/// store reads.
const CACHE_MAX: usize = 4096;

const TOKEN_PREFIX: &str = "/auth/tokens/";
/// `/auth/token-ids/<token id>`: the hash of that token's secret, so that a biscuit naming the
/// token finds its record. Written and deleted in the same transaction as the record.
const TOKEN_ID_PREFIX: &str = "/auth/token-ids/";
/// `/auth/revoked/<revocation id, hex>`: a revoked biscuit block ([`RevocationRecord`]); every
/// biscuit carrying it is refused.
const REVOKED_PREFIX: &str = "/auth/revoked/";
/// A revocation is deleted only this long after its root token expired, so that a server whose
/// clock runs behind (and so still takes the token for unexpired) keeps refusing it.
const REVOCATION_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Revocations deleted per store transaction.
const REVOCATION_PRUNE_BATCH: usize = 500;
/// `/auth/used/<token id>`: when the token was last used (RFC 3339).
const USED_PREFIX: &str = "/auth/used/";
/// The longest a token may be made to live (ten years), short of forever.
const TOKEN_TTL_MAX_SECONDS: u64 = 10 * 365 * 86_400 + 1;
const JOIN_PREFIX: &str = "/auth/join/";
/// Join tokens are marked apart from API tokens: they authenticate exactly one call, the join.
const JOIN_MARK: &str = "enjin_join_";
/// How long a join token lives unless asked otherwise, and at most.
const JOIN_TTL_DEFAULT: u64 = 900;
const JOIN_TTL_MAX: u64 = 86_400;
/// Every token starts with this, so that a leaked one is easy to recognise and scan for.
const TOKEN_MARK: &str = "enjin_";

/// Why a caller presenting a biscuit cannot issue tokens.
pub const ATTENUATED_MINT: &str =
    "a token derived by attenuation cannot issue tokens: they would not carry its checks";

/// The principal that `enjin up` and `enjin server` bootstrap, with the admin role.
pub const ADMIN_PRINCIPAL: &str = "admin";
/// The label of the operator's own account (ring `meta`). A membership of it holds in every
/// account ([`Scope::Everywhere`]).
pub const SYSTEM_ACCOUNT: &str = "system";
/// The label of the built-in role that allows every verb on every resource; bootstrap gives it to
/// [`ADMIN_PRINCIPAL`] in the system account.
pub const ADMIN_ROLE: &str = "admin";
/// The label of the built-in read-only role, made at bootstrap for operators to hand out.
pub const VIEWER_ROLE: &str = "viewer";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    id: Uuid,
    principal: String,
    #[serde(default)]
    description: String,
    created_at: DateTime<Utc>,
    /// The account the token belongs to; nil for tokens made before accounts (the system's).
    #[serde(default)]
    account: Uuid,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    role: Option<Uuid>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    /// Everything the token may ever do (see [`Grants::to_names`]): its creator's grants, or
    /// less, when it was made. `None` only for the admin token a data directory bootstraps (and
    /// tokens made before ceilings): it holds whatever its principal holds.
    #[serde(default)]
    ceiling: Option<BTreeMap<String, Vec<String>>>,
}

/// What `/auth/revoked/<id>` holds: which token's biscuit was revoked, when and by whom, and
/// until when the revocation matters.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevocationRecord {
    token: Uuid,
    revoked_at: DateTime<Utc>,
    by: String,
    /// When the root token expires. A biscuit cannot outlive its root (its principal carries
    /// the root's expiry), so past this the revocation refuses nothing that expiry does not,
    /// and may go. `None`: the root never expires (or the record predates this field), and the
    /// revocation is kept for good.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

impl RevocationRecord {
    /// Whether the revocation can be forgotten at `now`: its biscuit is refused as expired on
    /// every server whose clock is within [`REVOCATION_GRACE`] of ours.
    fn outlived(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t.checked_add_signed(REVOCATION_GRACE).is_some_and(|t| t <= now))
    }
}

impl TokenRecord {
    fn info(&self, system: Uuid, last_used_at: Option<DateTime<Utc>>) -> TokenInfo {
        TokenInfo {
            id: self.id,
            principal: self.principal.clone(),
            description: self.description.clone(),
            created_at: self.created_at,
            account: if self.account.is_nil() { system } else { self.account },
            created_by: self.created_by.clone(),
            role: self.role,
            expires_at: self.expires_at,
            last_used_at,
            ceiling: self
                .ceiling
                .clone()
                .unwrap_or_else(|| BTreeMap::from([("*".into(), vec!["* *".into()])])),
        }
    }
}

/// An authenticated caller and what it may do, where.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The principal's name, as memberships and audit records name it (`join-<token id>` for a
    /// join token).
    pub name: String,
    /// The id of the token that authenticated the call (the root token for a biscuit): what
    /// revocation and the last-used record refer to.
    pub token: Uuid,
    /// The principal's memberships, narrowed by the token's ceiling.
    pub grants: Arc<Grants>,
    /// The system account's uuid.
    pub system: Uuid,
    /// When the token that authenticated the caller stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when the caller presented a join token: what it may join.
    pub join: Option<JoinGrant>,
    /// Set when the caller presented a biscuit: the checks its blocks add to every request
    /// (see [`Principal::attenuation_refuses`]).
    pub attenuation: Option<Arc<Attenuation>>,
}

/// What a join token allows: joining `ring` under `parent`, once (the join consumes `key` at
/// `revision`).
#[derive(Debug, Clone)]
pub struct JoinGrant {
    /// The join token's id.
    pub id: Uuid,
    /// The ring the joining machine enters.
    pub ring: Ring,
    /// The machine the joiner becomes a child of.
    pub parent: Uuid,
    /// The node the joiner speaks for, when the token is bound to one.
    pub node: Option<Uuid>,
    /// The store key of the join token's record, deleted by the join that consumes it.
    pub key: String,
    /// The record's `mod_revision` when read: the join deletes it only if it is unchanged, so two
    /// joins racing on one token cannot both succeed.
    pub revision: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinRecord {
    id: Uuid,
    ring: Ring,
    parent: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<Uuid>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl Principal {
    /// Whether the caller may do `verb` on `resource` in `account`.
    pub fn allows(&self, verb: Verb, resource: Resource, account: Uuid) -> bool {
        self.grants.allows(verb, resource, account)
    }

    /// Whether it may do so in some account (the check before a handler finds out which).
    pub fn allows_somewhere(&self, verb: Verb, resource: Resource) -> bool {
        self.grants.allows_somewhere(verb, resource)
    }

    /// Why the caller's biscuit refuses a request, if it does: failed checks of its blocks,
    /// or its expiry. Opaque tokens have no checks.
    pub fn attenuation_refuses(&self, facts: &RequestFacts) -> Option<CheckFailure> {
        self.attenuation.as_ref().and_then(|a| a.check(facts).err())
    }

    /// Whether its grants hold in every account: the operator's principals.
    pub fn is_operator(&self) -> bool {
        self.grants.is_everywhere()
    }

    /// The account the caller acts in when a request names none: the system account for the
    /// operator, else the one account it is a member of.
    pub fn home(&self) -> Result<Uuid, RegistryError> {
        if self.grants.is_everywhere() {
            return Ok(self.system);
        }
        let accounts: Vec<Uuid> = self.grants.accounts().collect();
        match accounts.as_slice() {
            [one] => Ok(*one),
            [] => Err(RegistryError::Forbidden(format!("principal {} is a member of no account", self.name))),
            _ => Err(FieldError::new(
                "account",
                format!(
                    "principal {} is a member of {} accounts: name the one to act in",
                    self.name,
                    accounts.len()
                ),
            )
            .into()),
        }
    }
}

/// Why a request could not be authenticated. Every variant but [`AuthError::Registry`] is the
/// caller's fault and answers 401; `Registry` is the store failing and answers as that error does.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, or one that is not `Bearer <token>`.
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// A token with no known mark, no record in the store (never issued, deleted, or a join token
    /// already used or expired), or a biscuit whose root token is gone.
    #[error("the bearer token is not valid")]
    Invalid,
    /// The token (or a biscuit's root token) is past its `expires_at`.
    #[error("the bearer token has expired")]
    Expired,
    /// A biscuit that does not decode or whose signatures do not verify under the token-signing key.
    #[error("the bearer biscuit is not valid: {0}")]
    Biscuit(#[from] biscuits::BiscuitProblem),
    /// One of the biscuit's blocks has been revoked.
    #[error("the bearer biscuit has been revoked")]
    Revoked,
    /// A biscuit whose expiry check fails: it is no longer a credential, whatever it asks.
    #[error("the bearer biscuit has expired: {0}")]
    BiscuitExpired(String),
    /// Reading the store failed, or a record in it is corrupt: not the caller's fault.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A bearer token as presented, told apart by its mark, not yet looked up or verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// A join token (`enjin_join_…`): looked up by its hash.
    Join(&'a str),
    /// A biscuit (`enjinb_…`): verified by [`biscuits::verify`] (on a cache miss), then its
    /// root token looked up.
    Biscuit(&'a str),
    /// An opaque API token (`enjin_…`): looked up by its hash.
    Opaque(&'a str),
}

/// The first step of [`Auth::authenticate`]: the token an `Authorization` header presents, and
/// which kind it is. Only the header's bytes are read; anything but `Bearer <token>` with a
/// known mark is refused here.
pub fn presented(header: Option<&str>) -> Result<Presented<'_>, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(AuthError::Missing)?;
    if token.starts_with(JOIN_MARK) {
        Ok(Presented::Join(token))
    } else if token.starts_with(BISCUIT_MARK) {
        Ok(Presented::Biscuit(token))
    } else if token.starts_with(TOKEN_MARK) {
        Ok(Presented::Opaque(token))
    } else {
        Err(AuthError::Invalid)
    }
}

/// What the server makes of an `Authorization` header before it reads the store: the token it
/// presents and, for a biscuit, the biscuit verified under `root` (`None` for other tokens).
/// These are the two steps [`Auth::authenticate`] takes over a bearer's untrusted bytes
/// ([`presented`], then [`biscuits::verify`] on a cache miss), so that the fuzz target and the
/// property tests drive exactly what the server runs.
pub fn read_bearer(header: &str, root: biscuit_auth::PublicKey) -> Result<Option<Verified>, AuthError> {
    match presented(Some(header))? {
        Presented::Biscuit(token) => Ok(Some(biscuits::verify(token, root)?)),
        Presented::Join(_) | Presented::Opaque(_) => Ok(None),
    }
}

fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tokens and principals.
#[derive(Debug, Clone)]
pub struct Auth {
    registry: Registry,
    /// Principals by token hash, with the authorization generation they were resolved at. An
    /// entry is used only while the generation in the store is unchanged, so a revoked token
    /// or a removed membership stops working at once, on every server sharing the store.
    cache: Arc<Mutex<HashMap<String, (i64, Principal)>>>,
    /// When tokens were last used on this server, not yet written down.
    used: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
    /// Signs root biscuits and verifies bearer ones.
    token_key: Arc<TokenKey>,
}

impl Auth {
    /// Tokens over `registry`, with an ephemeral token-signing key (see [`Auth::with_token_key`]).
    pub fn new(registry: Registry) -> Self {
        Auth {
            registry,
            cache: Arc::default(),
            used: Arc::default(),
            token_key: Arc::new(TokenKey::generate()),
        }
    }

    /// The public half of the token-signing key: what verifies a biscuit.
    pub fn token_public_key(&self) -> biscuit_auth::PublicKey {
        self.token_key.public()
    }

    /// Sign and verify biscuits with `key` (the data directory's): biscuits outlive a restart.
    pub fn with_token_key(mut self, key: TokenKey) -> Self {
        self.token_key = Arc::new(key);
        self
    }

    async fn generation(&self) -> Result<i64, RegistryError> {
        Ok(self.store().get(AUTH_GENERATION).await?.map_or(0, |kv| kv.mod_revision))
    }

    fn bump_generation() -> Op {
        Op::put(AUTH_GENERATION, Vec::new())
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.registry.store()
    }

    /// Resolve an `Authorization` header value to a principal.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let (token, is_biscuit) = match presented(header)? {
            Presented::Join(token) => return self.authenticate_join(token).await,
            Presented::Biscuit(token) => (token, true),
            Presented::Opaque(token) => (token, false),
        };
        let digest = hash(token);
        // Read the generation first: a change after this read bumps it, so the entry cached
        // below can only be too old to use, never wrongly fresh. Revoking a token or a biscuit
        // bumps it too, so a cached biscuit is never one revoked since.
        let generation = self.generation().await?;
        let principal = match self.cached(&digest, generation) {
            Some(p) => p,
            None => {
                let p = if is_biscuit {
                    self.resolve_biscuit(token).await?
                } else {
                    self.resolve_token(&digest).await?
                };
                self.remember(digest, generation, &p);
                p
            }
        };
        if principal.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(AuthError::Expired);
        }
        self.note_use(principal.token);
        Ok(principal)
    }

    fn cached(&self, digest: &str, generation: i64) -> Option<Principal> {
        let cache = self.cache.lock().ok()?;
        cache.get(digest).filter(|(g, _)| *g == generation).map(|(_, p)| p.clone())
    }

    fn remember(&self, digest: String, generation: i64, principal: &Principal) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(digest, (generation, principal.clone()));
        }
    }

    /// A bearer biscuit: its signature chain verified under the token-signing key, none of its
    /// blocks revoked, and the root token it names still there. The principal is exactly that
    /// token's, with the biscuit's checks to run on each request.
    async fn resolve_biscuit(&self, bearer: &str) -> Result<Principal, AuthError> {
        let Verified { token, attenuation } = biscuits::verify(bearer, self.token_key.public())?;
        for id in attenuation.revocation_ids() {
            if self
                .store()
                .get(&format!("{REVOKED_PREFIX}{id}"))
                .await
                .map_err(RegistryError::from)?
                .is_some()
            {
                return Err(AuthError::Revoked);
            }
        }
        let digest = self.digest_of(token).await?.ok_or(AuthError::Invalid)?;
        let mut principal = self.resolve_token(&digest).await?;
        if principal.token != token {
            return Err(AuthError::Invalid);
        }
        principal.attenuation = Some(Arc::new(attenuation));
        Ok(principal)
    }

    /// The hash of token `id`'s secret, from the id index.
    async fn digest_of(&self, id: Uuid) -> Result<Option<String>, RegistryError> {
        let kv = self.store().get(&format!("{TOKEN_ID_PREFIX}{id}")).await?;
        Ok(kv.and_then(|kv| String::from_utf8(kv.value).ok()))
    }

    async fn resolve_token(&self, digest: &str) -> Result<Principal, AuthError> {
        let kv = self.store().get(&format!("{TOKEN_PREFIX}{digest}")).await.map_err(RegistryError::from)?;
        let kv = kv.ok_or(AuthError::Invalid)?;
        let record: TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
        let system = self.registry.system_account().await?;
        let held = self.grants_of(&record.principal, system).await?;
        let grants = match &record.ceiling {
            None => held,
            Some(names) => {
                let ceiling = Grants::from_names(names).ok_or_else(|| RegistryError::Corrupt {
                    key: kv.key.clone(),
                    error: "unreadable ceiling".into(),
                })?;
                held.intersection(&ceiling)
            }
        };
        Ok(Principal {
            name: record.principal,
            token: record.id,
            grants: Arc::new(grants),
            system,
            expires_at: record.expires_at,
            join: None,
            attenuation: None,
        })
    }

    /// Note that a token was used; [`Auth::record_use`] writes it down.
    fn note_use(&self, token: Uuid) {
        if let Ok(mut used) = self.used.lock()
            && (used.len() < CACHE_MAX || used.contains_key(&token))
        {
            used.insert(token, Utc::now());
        }
    }

    /// Write down when tokens noted since the last call were used, in one transaction. Called
    /// once a minute, so that authenticating a request never writes to the store.
    pub async fn record_use(&self) -> Result<(), RegistryError> {
        let used: Vec<(Uuid, DateTime<Utc>)> = match self.used.lock() {
            Ok(mut used) => used.drain().collect(),
            Err(_) => return Ok(()),
        };
        if used.is_empty() {
            return Ok(());
        }
        let ops =
            used.iter().map(|(id, at)| Op::put(format!("{USED_PREFIX}{id}"), at.to_rfc3339().into_bytes()));
        self.store().txn(Txn::new().then(ops)).await?;
        Ok(())
    }

    async fn authenticate_join(&self, token: &str) -> Result<Principal, AuthError> {
        let key = format!("{JOIN_PREFIX}{}", hash(token));
        let kv = self.store().get(&key).await.map_err(RegistryError::from)?.ok_or(AuthError::Invalid)?;
        let record: JoinRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
        if record.expires_at <= Utc::now() {
            // Expired tokens are useless; drop this one while we are here.
            let _ = self
                .store()
                .txn(Txn::new().when([Compare::mod_revision(&key, kv.mod_revision)]).then([Op::delete(&key)]))
                .await;
            return Err(AuthError::Invalid);
        }
        let system = self.registry.system_account().await?;
        let join: PermSet = [(Verb::Create, Resource::Join)].into_iter().collect();
        Ok(Principal {
            name: format!("join-{}", record.id),
            token: record.id,
            grants: Arc::new(Grants::none().with(Scope::Everywhere, &join)),
            system,
            expires_at: Some(record.expires_at),
            join: Some(JoinGrant {
                id: record.id,
                ring: record.ring,
                parent: record.parent,
                node: record.node,
                key,
                revision: kv.mod_revision,
            }),
            attenuation: None,
        })
    }

    /// A single-use, expiring token for a child of `parent` to join `ring` from elsewhere.
    pub async fn issue_join(
        &self,
        ring: Ring,
        parent: Uuid,
        bound: Option<Uuid>,
        ttl_seconds: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<JoinTokenCreated, RegistryError> {
        let Some(parent_ring) = ring.parent() else {
            return Err(
                FieldError::new("ring", "ring 0 machines are added by the operator, not joined").into()
            );
        };
        let ttl = ttl_seconds.unwrap_or(JOIN_TTL_DEFAULT);
        if ttl == 0 || ttl > JOIN_TTL_MAX {
            return Err(FieldError::new("ttl_seconds", format!("must be from 1 to {JOIN_TTL_MAX}")).into());
        }
        let node = match self.registry.get::<NodeSpec>(parent).await {
            Ok(n) => n,
            Err(RegistryError::NotFound { .. }) => {
                return Err(FieldError::new("parent", format!("node {parent} does not exist")).into());
            }
            Err(e) => return Err(e),
        };
        if node.meta.ring != parent_ring {
            return Err(FieldError::new(
                "parent",
                format!(
                    "node {parent} is in ring {}; a ring {ring} child needs a ring {parent_ring} parent",
                    node.meta.ring
                ),
            )
            .into());
        }
        if let Some(id) = bound {
            let child = match self.registry.get::<NodeSpec>(id).await {
                Ok(n) => n,
                Err(RegistryError::NotFound { .. }) => {
                    return Err(FieldError::new("node", format!("node {id} does not exist")).into());
                }
                Err(e) => return Err(e),
            };
            if child.meta.ring != ring || child.spec.parent != Some(parent) {
                return Err(FieldError::new(
                    "node",
                    format!("node {id} is not a ring {ring} node under {parent}"),
                )
                .into());
            }
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StoreError::Backend(format!("no randomness for a token: {e}")))?;
        let token = format!("{JOIN_MARK}{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let expires_at = now + chrono::TimeDelta::seconds(i64::try_from(ttl).unwrap_or(900));
        let record =
            JoinRecord { id: Uuid::new_v4(), ring, parent, node: bound, created_at: now, expires_at };
        let key = format!("{JOIN_PREFIX}{}", hash(&token));
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let resp =
            self.store().txn(Txn::new().when([Compare::absent(&key)]).then([Op::put(&key, value)])).await?;
        if !resp.succeeded {
            return Err(RegistryError::Conflict { field: None, detail: "token collision; retry".into() });
        }
        Ok(JoinTokenCreated { id: record.id, ring, parent, expires_at, node: bound, token })
    }

    /// What `principal`'s memberships grant: a membership of the system account everywhere,
    /// any other in its own account. A role bound in an account it does not belong to (nor to
    /// the system account) grants nothing.
    pub async fn grants_of(&self, principal: &str, system: Uuid) -> Result<Grants, RegistryError> {
        let (memberships, _) = self.registry.list::<MembershipSpec>(&ListQuery::default()).await?;
        let mut grants = Grants::none();
        for m in memberships.into_iter().filter(|m| m.spec.principal == principal) {
            match self.registry.get::<RoleSpec>(m.spec.role).await {
                Ok(role) if role.meta.account == m.spec.account || role.meta.account == system => {
                    grants.add(Scope::of(m.spec.account, system), &role.spec.perm_set());
                }
                Ok(_) | Err(RegistryError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(grants)
    }

    /// The admin token of a data directory: the bootstrap principal's, holding whatever that
    /// principal holds. The secret is returned only here.
    pub async fn issue_admin(
        &self,
        description: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenCreated, RegistryError> {
        let system = self.registry.system_account().await?;
        let record = TokenRecord {
            id: Uuid::new_v4(),
            principal: ADMIN_PRINCIPAL.into(),
            description: description.into(),
            created_at: now,
            account: system,
            created_by: ADMIN_PRINCIPAL.into(),
            role: None,
            expires_at: None,
            ceiling: None,
        };
        self.store_token(record, system).await
    }

    /// Issue a token for `req.principal` on behalf of `caller`. The token never holds more
    /// than the caller does now: its ceiling is the caller's grants, narrowed to the account
    /// and role asked for, and a role beyond the caller's grants is refused. Nor does it
    /// outlive the caller's token. The secret is returned only here.
    pub async fn issue(
        &self,
        caller: &Principal,
        req: &TokenCreateRequest,
        now: DateTime<Utc>,
    ) -> Result<TokenCreated, RegistryError> {
        if caller.attenuation.is_some() {
            return Err(RegistryError::Forbidden(ATTENUATED_MINT.into()));
        }
        validate_label(&req.principal).map_err(|m| FieldError::new("principal", m))?;
        if req.description.len() > 1024 {
            return Err(FieldError::new("description", "is longer than 1024 bytes").into());
        }
        let system = caller.system;
        let account = match req.account {
            Some(a) => a,
            None => caller.home()?,
        };
        if !caller.allows(Verb::Create, Resource::Token, account) {
            return Err(RegistryError::Forbidden(format!(
                "principal {} may not create token in account {account}",
                caller.name
            )));
        }
        let ceiling = match req.role {
            Some(role) => {
                let role = match self.registry.get::<RoleSpec>(role).await {
                    Ok(r) if r.meta.account == account || r.meta.account == system => r,
                    Ok(_) | Err(RegistryError::NotFound { .. }) => {
                        return Err(FieldError::new("role", format!("role {role} does not exist")).into());
                    }
                    Err(e) => return Err(e),
                };
                Grants::none().with(Scope::of(account, system), &role.spec.perm_set())
            }
            None if req.account.is_some() => caller.grants.narrowed_to(account, system),
            None => (*caller.grants).clone(),
        };
        let missing = caller.grants.lacks(&ceiling);
        if !missing.is_empty() {
            return Err(RegistryError::Forbidden(format!(
                "principal {} may not grant what it does not hold: {}",
                caller.name,
                describe_missing(&missing)
            )));
        }
        let expires_at = match req.expires_in_seconds {
            Some(0) | Some(TOKEN_TTL_MAX_SECONDS..) => {
                return Err(FieldError::new(
                    "expires_in_seconds",
                    format!("must be from 1 to {}", TOKEN_TTL_MAX_SECONDS - 1),
                )
                .into());
            }
            Some(s) => Some(now + chrono::TimeDelta::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))),
            None => None,
        };
        let expires_at = match (expires_at, caller.expires_at) {
            (None, limit) => limit,
            (Some(t), Some(limit)) if t > limit => {
                return Err(RegistryError::Forbidden(format!(
                    "a token cannot outlive the token that makes it: yours expires at {limit}"
                )));
            }
            (Some(t), _) => Some(t),
        };
        let record = TokenRecord {
            id: Uuid::new_v4(),
            principal: req.principal.clone(),
            description: req.description.clone(),
            created_at: now,
            account,
            created_by: caller.name.clone(),
            role: req.role,
            expires_at,
            ceiling: Some(ceiling.to_names()),
        };
        self.store_token(record, system).await
    }

    async fn store_token(&self, record: TokenRecord, system: Uuid) -> Result<TokenCreated, RegistryError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StoreError::Backend(format!("no randomness for a token: {e}")))?;
        let token = format!("{TOKEN_MARK}{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let digest = hash(&token);
        let key = format!("{TOKEN_PREFIX}{digest}");
        let index = format!("{TOKEN_ID_PREFIX}{}", record.id);
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let biscuit = self.token_key.mint(record.id).map_err(|e| StoreError::Backend(e.to_string()))?;
        let resp = self
            .store()
            .txn(Txn::new().when([Compare::absent(&key), Compare::absent(&index)]).then([
                Op::put(&key, value),
                Op::put(&index, digest.into_bytes()),
                Self::bump_generation(),
            ]))
            .await?;
        if !resp.succeeded {
            return Err(RegistryError::Conflict { field: None, detail: "token collision; retry".into() });
        }
        Ok(TokenCreated { info: record.info(system, None), token, biscuit: Some(biscuit) })
    }

    /// Every token, never its secret, with when it was last used.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, RegistryError> {
        let system = self.registry.system_account().await?;
        let used = self.store().range(USED_PREFIX).await?;
        let last_used: HashMap<String, DateTime<Utc>> = used
            .kvs
            .iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(USED_PREFIX)?.to_string();
                let at = DateTime::parse_from_rfc3339(std::str::from_utf8(&kv.value).ok()?).ok()?;
                Some((id, at.with_timezone(&Utc)))
            })
            .collect();
        let pending: HashMap<Uuid, DateTime<Utc>> = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        let range = self.store().range(TOKEN_PREFIX).await?;
        let mut out = Vec::new();
        for kv in range.kvs {
            let record: TokenRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
            let used = pending.get(&record.id).or(last_used.get(&record.id.to_string())).copied();
            out.push(record.info(system, used));
        }
        out.sort_by_key(|t: &TokenInfo| t.created_at);
        Ok(out)
    }

    /// Revoke a token: it stops working at once, on every server.
    pub async fn revoke(&self, id: Uuid) -> Result<(), RegistryError> {
        for _ in 0..8 {
            let range = self.store().range(TOKEN_PREFIX).await?;
            let found = range
                .kvs
                .into_iter()
                .find(|kv| serde_json::from_slice::<TokenRecord>(&kv.value).is_ok_and(|r| r.id == id));
            let Some(kv) = found else {
                return Err(RegistryError::TokenNotFound(id));
            };
            let txn = Txn::new().when([Compare::mod_revision(&kv.key, kv.mod_revision)]).then([
                Op::delete(&kv.key),
                Op::delete(format!("{TOKEN_ID_PREFIX}{id}")),
                Op::delete(format!("{USED_PREFIX}{id}")),
                Self::bump_generation(),
            ]);
            if self.store().txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(RegistryError::Conflict { field: None, detail: format!("token {id} kept changing; retry") })
    }

    /// Revoke a biscuit presented in a request's body (`biscuit`): its last block's revocation
    /// id is recorded, so it and every biscuit derived from it stop working on the next
    /// request, on every server; what it was derived from keeps working. Allowed for a caller
    /// who may delete tokens in the root token's account, or whose own bearer is this biscuit.
    /// Returns the root token's id.
    pub async fn revoke_derived(
        &self,
        caller: &Principal,
        biscuit: &str,
        now: DateTime<Utc>,
    ) -> Result<Uuid, RegistryError> {
        let verified = biscuits::verify(biscuit.trim(), self.token_key.public())
            .map_err(|e| FieldError::new("biscuit", e.to_string()))?;
        let is_self = caller
            .attenuation
            .as_ref()
            .is_some_and(|a| a.revocation_ids() == verified.attenuation.revocation_ids());
        let token = verified.token;
        let record = self.record_of(token).await?.ok_or(RegistryError::TokenNotFound(token))?;
        let account = if record.account.is_nil() { caller.system } else { record.account };
        if !is_self {
            if !caller.allows(Verb::List, Resource::Token, account) {
                return Err(RegistryError::TokenNotFound(token));
            }
            if !caller.allows(Verb::Delete, Resource::Token, account) {
                return Err(RegistryError::Forbidden(format!(
                    "principal {} may not delete token in account {account}",
                    caller.name
                )));
            }
        }
        let Some(id) = biscuits::last_revocation_id(&verified) else {
            return Err(FieldError::new("biscuit", "has no blocks").into());
        };
        let revocation = RevocationRecord {
            token,
            revoked_at: now,
            by: caller.name.clone(),
            expires_at: record.expires_at,
        };
        let value = serde_json::to_vec(&revocation).map_err(|e| StoreError::Backend(e.to_string()))?;
        let txn = Txn::new().then([Op::put(format!("{REVOKED_PREFIX}{id}"), value), Self::bump_generation()]);
        self.store().txn(txn).await?;
        // Revocations accumulate only as fast as they are written, so pruning on write keeps
        // their number near the number of live revoked biscuits without a timer of its own.
        if let Err(e) = self.prune_revocations(now).await {
            tracing::warn!(error = %e, "failed to delete outlived biscuit revocations");
        }
        Ok(token)
    }

    /// Delete the revocations whose root token expired (more than [`REVOCATION_GRACE`] before
    /// `now`): their biscuits are refused as expired anyway. Revocations of tokens that never
    /// expire, and records that cannot be read, are kept. Returns how many were deleted.
    pub async fn prune_revocations(&self, now: DateTime<Utc>) -> Result<usize, RegistryError> {
        let range = self.store().range(REVOKED_PREFIX).await?;
        let outlived: Vec<&KeyValue> = range
            .kvs
            .iter()
            .filter(|kv| serde_json::from_slice::<RevocationRecord>(&kv.value).is_ok_and(|r| r.outlived(now)))
            .collect();
        let mut deleted = 0;
        for batch in outlived.chunks(REVOCATION_PRUNE_BATCH) {
            // Only as read: a revocation written again meanwhile is judged on the next prune.
            let unchanged = batch.iter().map(|kv| Compare::mod_revision(&kv.key, kv.mod_revision));
            let ops = batch.iter().map(|kv| Op::delete(&kv.key));
            if self.store().txn(Txn::new().when(unchanged).then(ops)).await?.succeeded {
                deleted += batch.len();
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "deleted revocations of expired biscuits");
        }
        Ok(deleted)
    }

    /// Token `id`'s record, found through the id index.
    async fn record_of(&self, id: Uuid) -> Result<Option<TokenRecord>, RegistryError> {
        let Some(digest) = self.digest_of(id).await? else {
            return Ok(None);
        };
        let Some(kv) = self.store().get(&format!("{TOKEN_PREFIX}{digest}")).await? else {
            return Ok(None);
        };
        let record: TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
        Ok((record.id == id).then_some(record))
    }

    /// Make sure the system account, the admin and viewer roles and the admin principal's
    /// membership exist. Idempotent: a restart finds them and changes nothing.
    pub async fn bootstrap(&self, now: DateTime<Utc>) -> Result<(), RegistryError> {
        let account = self
            .ensure::<AccountSpec>(
                SYSTEM_ACCOUNT,
                AccountSpec { description: "the operator's own account".into(), quota: Default::default() },
                now,
            )
            .await?;
        let admin = self.ensure::<RoleSpec>(ADMIN_ROLE, RoleSpec::admin(), now).await?;
        self.ensure::<RoleSpec>(VIEWER_ROLE, RoleSpec::viewer(), now).await?;
        let (memberships, _) = self.registry.list::<MembershipSpec>(&ListQuery::default()).await?;
        let exists = memberships.iter().any(|m| {
            m.spec.principal == ADMIN_PRINCIPAL && m.spec.role == admin && m.spec.account == account
        });
        if !exists {
            let spec = MembershipSpec { principal: ADMIN_PRINCIPAL.into(), account, role: admin };
            let req = CreateRequest {
                account: None,
                ring: Ring::META,
                label: None,
                labels: Default::default(),
                spec,
            };
            self.registry.create(req, now).await?;
        }
        Ok(())
    }

    async fn ensure<S: enjin_model::Spec>(
        &self,
        label: &str,
        spec: S,
        now: DateTime<Utc>,
    ) -> Result<Uuid, RegistryError> {
        let q = ListQuery { ring: Some(Ring::META), label: Some(label.into()), ..ListQuery::default() };
        let (found, _) = self.registry.list::<S>(&q).await?;
        if let Some(o) = found.first() {
            return Ok(o.meta.uuid);
        }
        let req = CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some(label.into()),
            labels: Default::default(),
            spec,
        };
        match self.registry.create(req, now).await {
            Ok(o) => Ok(o.meta.uuid),
            // Another server bootstrapped it at the same moment.
            Err(RegistryError::Conflict { .. }) => {
                let (found, _) = self.registry.list::<S>(&q).await?;
                found.first().map(|o| o.meta.uuid).ok_or_else(|| RegistryError::Conflict {
                    field: None,
                    detail: format!("bootstrap of {} {label} raced and lost", S::KIND),
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::biscuits::{Restriction, attenuate};

    /// One key for every case: making a key per case would only slow the search down.
    fn key() -> &'static TokenKey {
        static KEY: std::sync::OnceLock<TokenKey> = std::sync::OnceLock::new();
        KEY.get_or_init(TokenKey::generate)
    }

    /// Base64url with padding, as biscuits are written.
    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                let c = if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] } else { b'=' };
                out.push(char::from(c));
            }
        }
        out
    }

    #[test]
    fn headers_are_told_apart_by_their_marks() {
        assert!(matches!(presented(None), Err(AuthError::Missing)));
        assert!(matches!(presented(Some("Basic YWRtaW4=")), Err(AuthError::Missing)));
        assert!(matches!(presented(Some("Bearer garbage")), Err(AuthError::Invalid)));
        assert_eq!(presented(Some("Bearer enjin_join_ab")).ok(), Some(Presented::Join("enjin_join_ab")));
        assert_eq!(presented(Some("bearer  enjinb_ab ")).ok(), Some(Presented::Biscuit("enjinb_ab")));
        assert_eq!(presented(Some("Bearer enjin_ab")).ok(), Some(Presented::Opaque("enjin_ab")));
        let root = key().mint(Uuid::new_v4()).expect("mint");
        let read = read_bearer(&format!("Bearer {root}"), key().public()).expect("a valid biscuit");
        assert!(read.is_some());
        assert_eq!(base64url(b"\xfb\xff"), "-_8=", "the URL-safe alphabet, padded");
    }

    proptest! {
        #[test]
        fn reading_any_header_never_panics(header in any::<String>()) {
            let _ = read_bearer(&header, key().public());
        }

        #[test]
        fn reading_any_bytes_as_a_biscuit_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let header = format!("Bearer {BISCUIT_MARK}{}", base64url(&bytes));
            prop_assert!(read_bearer(&header, key().public()).is_err(), "random bytes never verify");
        }

        #[test]
        fn reading_a_damaged_biscuit_never_panics(
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            truncate in any::<Option<prop::sample::Index>>(),
        ) {
            let root = key().mint(Uuid::nil()).expect("mint");
            let narrow = Restriction { verbs: vec![Verb::Get], ..Default::default() };
            let mut bytes = attenuate(&root, &narrow).expect("attenuate").into_bytes();
            let body = BISCUIT_MARK.len()..bytes.len();
            for (at, byte) in cuts {
                let i = body.start + at.index(body.len());
                bytes[i] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="[usize::from(byte) % 65];
            }
            if let Some(at) = truncate {
                bytes.truncate(body.start + at.index(body.len()));
            }
            let bearer = String::from_utf8(bytes).expect("ascii");
            if let Ok(Some(v)) = read_bearer(&format!("Bearer {bearer}"), key().public()) {
                // A change can land in base64 padding bits and leave the bytes whole.
                prop_assert_eq!(v.token, Uuid::nil());
            }
        }
    }
}
