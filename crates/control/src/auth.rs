//! Who is calling and what they may do. API tokens are random 256-bit secrets; the store keeps
//! only their SHA-256, so a copy of the store grants nothing. A token speaks for a principal,
//! and the principal's memberships (account + role) give it its permissions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use enjin_model::api::{CreateRequest, JoinTokenCreated, ListQuery, TokenCreated, TokenInfo};
use enjin_model::kinds::{AccountSpec, MembershipSpec, NodeSpec, Permission, Resource, RoleSpec, Verb};
use enjin_model::{FieldError, Ring, validate_label};
use enjin_store::{Compare, Op, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::registry::{AUTH_GENERATION, Registry, RegistryError};

/// Cached principals beyond this many are dropped all at once; a cache miss costs only a few
/// store reads.
const CACHE_MAX: usize = 4096;

const TOKEN_PREFIX: &str = "/auth/tokens/";
const JOIN_PREFIX: &str = "/auth/join/";
/// Join tokens are marked apart from API tokens: they authenticate exactly one call, the join.
const JOIN_MARK: &str = "enjin_join_";
/// How long a join token lives unless asked otherwise, and at most.
const JOIN_TTL_DEFAULT: u64 = 900;
const JOIN_TTL_MAX: u64 = 86_400;
/// Every token starts with this, so that a leaked one is easy to recognise and scan for.
const TOKEN_MARK: &str = "enjin_";

/// The principal that `enjin up` and `enjin server` bootstrap, with the admin role.
pub const ADMIN_PRINCIPAL: &str = "admin";
pub const SYSTEM_ACCOUNT: &str = "system";
pub const ADMIN_ROLE: &str = "admin";
pub const VIEWER_ROLE: &str = "viewer";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    id: Uuid,
    principal: String,
    #[serde(default)]
    description: String,
    created_at: DateTime<Utc>,
}

impl From<TokenRecord> for TokenInfo {
    fn from(r: TokenRecord) -> Self {
        TokenInfo { id: r.id, principal: r.principal, description: r.description, created_at: r.created_at }
    }
}

/// An authenticated caller and the roles it holds.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub token: Uuid,
    pub roles: Arc<Vec<RoleSpec>>,
    /// Set when the caller presented a join token: what it may join.
    pub join: Option<JoinGrant>,
}

/// What a join token allows: joining `ring` under `parent`, once (the join consumes `key` at
/// `revision`).
#[derive(Debug, Clone)]
pub struct JoinGrant {
    pub id: Uuid,
    pub ring: Ring,
    pub parent: Uuid,
    pub key: String,
    pub revision: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinRecord {
    id: Uuid,
    ring: Ring,
    parent: Uuid,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl Principal {
    pub fn allows(&self, verb: Verb, resource: Resource) -> bool {
        self.roles.iter().any(|r| r.allows(verb, resource))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the bearer token is not valid")]
    Invalid,
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
}

impl Auth {
    pub fn new(registry: Registry) -> Self {
        Auth { registry, cache: Arc::default() }
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
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        if token.starts_with(JOIN_MARK) {
            return self.authenticate_join(token).await;
        }
        if !token.starts_with(TOKEN_MARK) {
            return Err(AuthError::Invalid);
        }
        let digest = hash(token);
        // Read the generation first: a change after this read bumps it, so the entry cached
        // below can only be too old to use, never wrongly fresh.
        let generation = self.generation().await?;
        if let Ok(cache) = self.cache.lock()
            && let Some((g, p)) = cache.get(&digest)
            && *g == generation
        {
            return Ok(p.clone());
        }
        let kv = self.store().get(&format!("{TOKEN_PREFIX}{digest}")).await.map_err(RegistryError::from)?;
        let kv = kv.ok_or(AuthError::Invalid)?;
        let record: TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
        let roles = self.roles_of(&record.principal).await?;
        let principal =
            Principal { name: record.principal, token: record.id, roles: Arc::new(roles), join: None };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(digest, (generation, principal.clone()));
        }
        Ok(principal)
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
        let role = RoleSpec {
            permissions: vec![Permission { verbs: vec![Verb::Create], resources: vec![Resource::Join] }],
            description: "may join its ring once".into(),
        };
        Ok(Principal {
            name: format!("join-{}", record.id),
            token: record.id,
            roles: Arc::new(vec![role]),
            join: Some(JoinGrant {
                id: record.id,
                ring: record.ring,
                parent: record.parent,
                key,
                revision: kv.mod_revision,
            }),
        })
    }

    /// A single-use, expiring token for a child of `parent` to join `ring` from elsewhere.
    pub async fn issue_join(
        &self,
        ring: Ring,
        parent: Uuid,
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
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StoreError::Backend(format!("no randomness for a token: {e}")))?;
        let token = format!("{JOIN_MARK}{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let expires_at = now + chrono::TimeDelta::seconds(i64::try_from(ttl).unwrap_or(900));
        let record = JoinRecord { id: Uuid::new_v4(), ring, parent, created_at: now, expires_at };
        let key = format!("{JOIN_PREFIX}{}", hash(&token));
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let resp =
            self.store().txn(Txn::new().when([Compare::absent(&key)]).then([Op::put(&key, value)])).await?;
        if !resp.succeeded {
            return Err(RegistryError::Conflict { field: None, detail: "token collision; retry".into() });
        }
        Ok(JoinTokenCreated { id: record.id, ring, parent, expires_at, token })
    }

    async fn roles_of(&self, principal: &str) -> Result<Vec<RoleSpec>, RegistryError> {
        let (memberships, _) = self.registry.list::<MembershipSpec>(&ListQuery::default()).await?;
        let mut roles = Vec::new();
        for m in memberships.into_iter().filter(|m| m.spec.principal == principal) {
            match self.registry.get::<RoleSpec>(m.spec.role).await {
                Ok(role) => roles.push(role.spec),
                Err(RegistryError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(roles)
    }

    /// Issue a new token for `principal`; the secret is returned only here.
    pub async fn issue(
        &self,
        principal: &str,
        description: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenCreated, RegistryError> {
        validate_label(principal).map_err(|m| FieldError::new("principal", m))?;
        if description.len() > 1024 {
            return Err(FieldError::new("description", "is longer than 1024 bytes").into());
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StoreError::Backend(format!("no randomness for a token: {e}")))?;
        let token = format!("{TOKEN_MARK}{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let record = TokenRecord {
            id: Uuid::new_v4(),
            principal: principal.to_string(),
            description: description.to_string(),
            created_at: now,
        };
        let key = format!("{TOKEN_PREFIX}{}", hash(&token));
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let resp = self
            .store()
            .txn(
                Txn::new()
                    .when([Compare::absent(&key)])
                    .then([Op::put(&key, value), Self::bump_generation()]),
            )
            .await?;
        if !resp.succeeded {
            return Err(RegistryError::Conflict { field: None, detail: "token collision; retry".into() });
        }
        Ok(TokenCreated { info: record.into(), token })
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, RegistryError> {
        let range = self.store().range(TOKEN_PREFIX).await?;
        let mut out = Vec::new();
        for kv in range.kvs {
            let record: TokenRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
            out.push(record.into());
        }
        out.sort_by_key(|t: &TokenInfo| t.created_at);
        Ok(out)
    }

    pub async fn revoke(&self, id: Uuid) -> Result<(), RegistryError> {
        let range = self.store().range(TOKEN_PREFIX).await?;
        for kv in range.kvs {
            let record: Result<TokenRecord, _> = serde_json::from_slice(&kv.value);
            if record.is_ok_and(|r| r.id == id) {
                let txn = Txn::new()
                    .when([Compare::mod_revision(&kv.key, kv.mod_revision)])
                    .then([Op::delete(&kv.key), Self::bump_generation()]);
                self.store().txn(txn).await?;
                return Ok(());
            }
        }
        Err(RegistryError::TokenNotFound(id))
    }

    /// Make sure the system account, the admin and viewer roles and the admin principal's
    /// membership exist. Idempotent: a restart finds them and changes nothing.
    pub async fn bootstrap(&self, now: DateTime<Utc>) -> Result<(), RegistryError> {
        let account = self
            .ensure::<AccountSpec>(
                SYSTEM_ACCOUNT,
                AccountSpec { description: "the operator's own account".into() },
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
            let req = CreateRequest { ring: Ring::META, label: None, labels: Default::default(), spec };
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
        let req =
            CreateRequest { ring: Ring::META, label: Some(label.into()), labels: Default::default(), spec };
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
