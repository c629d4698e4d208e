//! Create, get, list, update and delete, for every kind. Every object belongs to an account:
//! a caller sees only objects of accounts where it may read their kind (another account's
//! object answers 404, as one that does not exist), and changes them only where its grants
//! allow; roles and memberships it writes grant no more than it holds.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use enjin_model::api::{CreateRequest, DeleteQuery, List, ListQuery, ObjectPath, UpdateRequest};
use enjin_model::kinds::{
    CompartmentSpec, CompartmentType, MembershipSpec, NodeSpec, Resource, RoleSpec, Strategy, TaskKind,
    TaskSpec, TaskState, Verb,
};
use enjin_model::{FieldError, Kind, Object, ObjectMeta, Ring, Spec};
use uuid::Uuid;

use super::AppState;
use crate::access::{Grants, Scope, describe_missing};
use crate::audit::AuditAccount;
use crate::auth::Principal;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::platform::placement::{SANDBOX_LABEL, Sandbox};
use crate::problem::ApiError;
use crate::quota::Footprint;
use crate::registry::{Guard, Registry, RegistryError};

/// The account whose grants govern `verb` on an object of `kind` owned by `owner`: accounts
/// are read by their members and created, changed and deleted by the operator alone (a
/// tenant must not raise its own quota).
pub fn governing(kind: Kind, verb: Verb, owner: Uuid, system: Uuid) -> Uuid {
    match (kind, verb) {
        (Kind::Account, Verb::Get | Verb::List | Verb::Watch) => owner,
        (Kind::Account, _) => system,
        _ => owner,
    }
}

/// Whether the caller may `verb` this object.
pub fn may(p: &Principal, verb: Verb, meta: &ObjectMeta) -> bool {
    p.allows(verb, Resource::Kind(meta.kind), governing(meta.kind, verb, meta.account, p.system))
}

/// 404 if the caller may not even read the object, 403 if it may read but not `verb` it.
pub fn check(p: &Principal, verb: Verb, meta: &ObjectMeta) -> Result<(), ApiError> {
    if !may(p, Verb::Get, meta) {
        return Err(RegistryError::NotFound { kind: meta.kind, uuid: meta.uuid }.into());
    }
    if !may(p, verb, meta) {
        return Err(ApiError::forbidden(format!(
            "principal {} may not {} {} in account {}",
            p.name,
            verb.name(),
            meta.kind,
            meta.account
        )));
    }
    Ok(())
}

pub async fn list<S: Spec>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<List<S>>, ApiError> {
    let (items, revision) = state.registry.list::<S>(&q).await.map_err(|e| match e {
        // The only field a list can find fault with is its selector: a malformed query.
        RegistryError::Invalid(f) => ApiError::bad_request(f.message).with_field(f.field),
        e => e.into(),
    })?;
    let items = items
        .into_iter()
        .filter(|o| may(&principal, Verb::List, &o.meta))
        .map(|o| redacted(&principal, o))
        .collect();
    Ok(Json(List { items, revision }))
}

pub async fn get<S: Spec>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(ObjectPath { uuid }): ApiPath<ObjectPath>,
) -> Result<Json<Object<S>>, ApiError> {
    let obj = state.registry.get::<S>(uuid).await?;
    check(&principal, Verb::Get, &obj.meta)?;
    Ok(Json(redacted(&principal, obj)))
}

pub async fn create<S: Spec>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(mut req): ApiJson<CreateRequest<S>>,
) -> Result<Response, ApiError> {
    let system = principal.system;
    let account = account_of_create(&state.registry, &principal, &req).await?;
    let authority = governing(S::KIND, Verb::Create, account, system);
    if !principal.allows(Verb::Create, Resource::Kind(S::KIND), authority) {
        return Err(ApiError::forbidden(format!(
            "principal {} may not create {} in account {authority}",
            principal.name,
            S::KIND
        )));
    }
    if account != system {
        req.spec.validate(req.ring)?;
        check_platform_owned(&req.spec)?;
    }
    check_grant(&state.registry, &principal, account, &req.spec).await?;
    check_tenant_node(&state.registry, system, account, req.ring, &req.spec).await?;
    let guard = check_node_quota(&state.registry, account, &req.spec).await?;
    let network = own_network(&state.registry, system, account, req.ring, &mut req.spec).await?;
    req.account = (S::KIND != Kind::Account).then_some(account);
    let obj = state.registry.create_guarded(req, Utc::now(), guard.as_ref()).await?;
    if let Some((instances, block)) = network {
        let node: Object<NodeSpec> = Object { meta: obj.meta.clone(), spec: as_kind(&obj.spec)? };
        if let Err(e) = crate::platform::network::attach(&state.registry, &node, instances, &block).await {
            // Never left without its network: it would never start.
            let _ = state.registry.delete(Kind::Node, obj.meta.uuid, None).await;
            return Err(ApiError::from(e));
        }
    }
    if S::KIND == Kind::Account
        && let Err(e) =
            crate::platform::network::ensure_default_rule_sets(&state.registry, Some(obj.meta.uuid)).await
    {
        // The account stands; `enjin access-rule create` says what is missing.
        tracing::warn!(account = %obj.meta.uuid, error = %e, "the account's default rule set was not made");
    }
    tracing::info!(kind = %S::KIND, uuid = %obj.meta.uuid, account = %obj.meta.account, by = %principal.name, "created");
    let location = format!("/{}/{}/{}", enjin_model::api::VERSION, S::KIND.plural(), obj.meta.uuid);
    let audited = Extension(AuditAccount(obj.meta.account));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], audited, Json(obj)).into_response())
}

pub async fn update<S: Spec>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(ObjectPath { uuid }): ApiPath<ObjectPath>,
    ApiJson(req): ApiJson<UpdateRequest<S>>,
) -> Result<(Extension<AuditAccount>, Json<Object<S>>), ApiError> {
    let old = state.registry.get::<S>(uuid).await?;
    check(&principal, Verb::Update, &old.meta)?;
    let account = old.meta.account;
    if S::KIND == Kind::Membership && as_kind::<S, MembershipSpec>(&req.spec)?.account != account {
        return Err(FieldError::new(
            "spec.account",
            "a membership's account cannot change: delete it and create one in the other account",
        )
        .into());
    }
    if account != principal.system {
        check_platform_owned_update(&old, &req)?;
    }
    check_grant(&state.registry, &principal, account, &req.spec).await?;
    check_tenant_node(&state.registry, principal.system, account, old.meta.ring, &req.spec).await?;
    let obj = state.registry.update(uuid, req, Utc::now()).await?;
    tracing::info!(kind = %S::KIND, %uuid, revision = obj.meta.revision, by = %principal.name, "updated");
    Ok((Extension(AuditAccount(account)), Json(obj)))
}

pub async fn delete<S: Spec>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(ObjectPath { uuid }): ApiPath<ObjectPath>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<(StatusCode, Extension<AuditAccount>), ApiError> {
    let old = state.registry.get::<S>(uuid).await?;
    check(&principal, Verb::Delete, &old.meta)?;
    if S::KIND == Kind::Task {
        let task = as_kind::<S, TaskSpec>(&old.spec)?;
        // One the rollout controller carries out (the platform recorded its plan or its step).
        let rollout = task.rollout.is_some() || task.step.is_some();
        if task.task_type == TaskKind::Deploy && rollout && !task.state.is_final() {
            // Its rollout needs the task to be settled: what it started, where it had got to.
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "task {uuid} is a rollout still running: cancel it first (spec.state = \"cancelled\")"
                ),
            ));
        }
    }
    state.registry.delete(S::KIND, uuid, q.revision).await?;
    tracing::info!(kind = %S::KIND, %uuid, by = %principal.name, "deleted");
    Ok((StatusCode::NO_CONTENT, Extension(AuditAccount(old.meta.account))))
}

/// The account a create makes its object in: the one named, a membership's own, an
/// observation's node's, or the caller's (see [`Principal::home`]). A new account is its own.
async fn account_of_create<S: Spec>(
    registry: &Registry,
    p: &Principal,
    req: &CreateRequest<S>,
) -> Result<Uuid, ApiError> {
    if S::KIND == Kind::NodeObservation
        && req.account.is_none()
        && let Some(node) = req.spec.references().first()
        && let Ok(n) = registry.get::<NodeSpec>(node.uuid).await
    {
        return Ok(n.meta.account);
    }
    if S::KIND == Kind::Membership {
        let m: MembershipSpec = as_kind(&req.spec)?;
        if req.account.is_some_and(|a| a != m.account) {
            return Err(FieldError::new(
                "account",
                "a membership belongs to the account it is a membership of",
            )
            .into());
        }
        return Ok(m.account);
    }
    match req.account {
        Some(a) => Ok(a),
        None => Ok(p.home()?),
    }
}

/// A role or membership written in `account` may grant only what the caller holds there: a
/// role's permissions, a membership's role's, as they would hold in that account.
async fn check_grant<S: Spec>(
    registry: &Registry,
    p: &Principal,
    account: Uuid,
    spec: &S,
) -> Result<(), ApiError> {
    let perms = match S::KIND {
        Kind::Role => as_kind::<S, RoleSpec>(spec)?.perm_set(),
        Kind::Membership => {
            let m: MembershipSpec = as_kind(spec)?;
            match registry.get::<RoleSpec>(m.role).await {
                Ok(role) => role.spec.perm_set(),
                // The registry refuses the reference, with the field named.
                Err(RegistryError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        _ => return Ok(()),
    };
    let granted = Grants::none().with(Scope::of(account, p.system), &perms);
    let missing = p.grants.lacks(&granted);
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "principal {} may not grant what it does not hold: {}",
        p.name,
        describe_missing(&missing)
    )))
}

/// Outside the system account, a node is a ring 2 instance that runs sandboxed: as its own
/// UNIX user (later, in a VM), on a host that sandboxes. Running as a plain process of the
/// agent (root, on a root host) is the operator's alone.
async fn check_tenant_node<S: Spec>(
    registry: &Registry,
    system: Uuid,
    account: Uuid,
    ring: Ring,
    spec: &S,
) -> Result<(), ApiError> {
    if S::KIND != Kind::Node || account == system {
        return Ok(());
    }
    let node: NodeSpec = as_kind(spec)?;
    if ring != Ring::PLATFORM {
        return Err(FieldError::new("ring", "an account's nodes are ring 2 instances").into());
    }
    match node.strategy {
        Some(Strategy::UnixUser) => {}
        Some(other) => {
            return Err(FieldError::new(
                "spec.strategy",
                format!(
                    "{} is the system account's alone; an account's instances run sandboxed (unix-user)",
                    other.name()
                ),
            )
            .into());
        }
        None => {
            return Err(FieldError::new("spec.strategy", "an account's instances run as unix-user").into());
        }
    }
    if let Some(parent) = node.parent {
        match registry.get::<NodeSpec>(parent).await {
            Ok(host)
                if host.meta.account == system && Sandbox::of(&host.meta.labels) != Sandbox::UnixUser =>
            {
                return Err(FieldError::new(
                    "spec.parent",
                    format!(
                        "host {} cannot sandbox instances ({SANDBOX_LABEL} is not unix-user); choose one that can",
                        host.meta.label.unwrap_or_else(|| parent.to_string())
                    ),
                )
                .into());
            }
            // Missing or not visible: the registry refuses the reference, naming the field.
            _ => {}
        }
    }
    Ok(())
}

/// A ring 2 node with a run, on a sandboxing host with a block of the instance network: a
/// tenant's always gets a network of its own (`spec.run.own_network`, set here), the system
/// account's when it asks for one. Returns where its address comes from, to attach it once the
/// node exists. A tenant's node on a host without a block, where the cloud has an instance
/// network, is refused: it would share the host's network.
async fn own_network<S: Spec>(
    registry: &Registry,
    system: Uuid,
    account: Uuid,
    ring: Ring,
    spec: &mut S,
) -> Result<Option<(Uuid, enjin_model::kinds::Cidr)>, ApiError> {
    if S::KIND != Kind::Node || ring != Ring::PLATFORM {
        return Ok(None);
    }
    let mut node: NodeSpec = as_kind(spec)?;
    let (Some(run), Some(parent)) = (node.run.as_mut(), node.parent) else { return Ok(None) };
    let tenant = account != system;
    if !tenant && !run.own_network {
        return Ok(None);
    }
    let Some((instances, hosts)) = crate::platform::network::networks(registry).await? else {
        if run.own_network {
            return Err(FieldError::new("spec.run.own_network", "this cloud has no instance network").into());
        }
        return Ok(None);
    };
    let (interfaces, _) =
        registry.list::<enjin_model::kinds::NetworkInterfaceSpec>(&ListQuery::default()).await?;
    let Some(block) = crate::platform::network::block_of(parent, &instances, &hosts, &interfaces) else {
        return Err(FieldError::new(
            "spec.parent",
            "the host has no block of the instance network, so its instances would share its network; choose one that has",
        )
        .into());
    };
    run.own_network = true;
    let port = *run.port.get_or_insert(crate::platform::network::INSTANCE_PORT);
    run.env.entry("PORT".into()).or_insert_with(|| port.to_string());
    *spec = as_kind(&node)?;
    Ok(Some((instances.meta.uuid, block)))
}

/// What an environment value reads as to a caller that may not see it.
pub const HIDDEN: &str = "(hidden)";

/// An app's configuration is its secrets: a release's and an instance's environment values
/// are shown only to callers that may deploy in the object's account (`create release`); to
/// others, every value reads `(hidden)`.
pub fn redacted<S: Spec>(p: &Principal, obj: Object<S>) -> Object<S> {
    if !matches!(S::KIND, Kind::Release | Kind::Node)
        || p.allows(Verb::Create, Resource::Kind(Kind::Release), obj.meta.account)
    {
        return obj;
    }
    let Ok(mut spec) = serde_json::to_value(&obj.spec) else { return obj };
    hide_env(&mut spec);
    match serde_json::from_value(spec) {
        Ok(spec) => Object { meta: obj.meta, spec },
        Err(_) => obj,
    }
}

/// Hide the values of `manifest.env` (a release) and `run.env` (a node) in a spec.
pub fn hide_env(spec: &mut serde_json::Value) {
    for path in [["manifest", "env"], ["run", "env"]] {
        if let Some(env) =
            spec.get_mut(path[0]).and_then(|v| v.get_mut(path[1])).and_then(|v| v.as_object_mut())
        {
            for v in env.values_mut() {
                *v = serde_json::Value::String(HIDDEN.into());
            }
        }
    }
}

/// A tenant's releases and app environments are made by deploys, which claim the app's name
/// and check its package and quota; made by hand they could stand in for another account's
/// app. (The operator may make them by hand.)
fn check_platform_owned<S: Spec>(spec: &S) -> Result<(), ApiError> {
    if made_by_deploys(spec)? {
        return Err(FieldError::new(
            "spec",
            format!("a {} of an app is made by deploying it (POST /v1/apps/{{app}}/deploys)", S::KIND),
        )
        .into());
    }
    Ok(())
}

/// Whether an object is one the platform makes for an app and carries out from the store: a
/// release (its package and manifest are what the app's instances run), an app's environment,
/// or a rollout's task (its plan says where instances may run). Written through the API by a
/// tenant, any of these would let it run another account's package, or its own unsandboxed.
fn made_by_deploys<S: Spec>(spec: &S) -> Result<bool, ApiError> {
    Ok(match S::KIND {
        Kind::Release => true,
        Kind::Compartment => {
            as_kind::<S, CompartmentSpec>(spec)?.compartment_type == CompartmentType::AppEnvironment
        }
        Kind::Task => as_kind::<S, TaskSpec>(spec)?.task_type == TaskKind::Deploy,
        _ => false,
    })
}

/// A tenant changes nothing the platform made for its apps (see [`made_by_deploys`]), except
/// that it may cancel its own rollout: the task's state to `cancelled`, nothing else.
fn check_platform_owned_update<S: Spec>(old: &Object<S>, req: &UpdateRequest<S>) -> Result<(), ApiError> {
    if !made_by_deploys(&old.spec)? && !made_by_deploys(&req.spec)? {
        return Ok(());
    }
    if S::KIND == Kind::Task {
        let (before, mut after) = (as_kind::<S, TaskSpec>(&old.spec)?, as_kind::<S, TaskSpec>(&req.spec)?);
        let cancels = after.state == TaskState::Cancelled;
        after.state = before.state;
        if cancels && after == before && req.label == old.meta.label && req.labels == old.meta.labels {
            return Ok(());
        }
        return Err(FieldError::new(
            "spec",
            "a rollout's task is kept by the platform: it can only be cancelled (spec.state = \"cancelled\", \
             everything else unchanged)",
        )
        .into());
    }
    Err(FieldError::new(
        "spec",
        format!(
            "a {} of an app is kept by the platform: change the app by deploying, rolling back or scaling it",
            S::KIND
        ),
    )
    .into())
}

/// A node made in an account counts against its instance, memory and disk quotas, as does
/// what the account's rollouts under way will leave running; the guard returned is what the
/// node is created against (see `quota.rs`).
async fn check_node_quota<S: Spec>(
    registry: &Registry,
    account: Uuid,
    spec: &S,
) -> Result<Option<Guard>, ApiError> {
    if S::KIND != Kind::Node {
        return Ok(None);
    }
    let Some((label, quota)) = crate::quota::quota_of(registry, account).await? else { return Ok(None) };
    if quota.is_unlimited() {
        return Ok(None);
    }
    let node: NodeSpec = as_kind(spec)?;
    if node.run.is_none() {
        return Ok(None);
    }
    let guard = crate::quota::guard(registry, account).await?;
    let now = crate::quota::usage(registry, account).await?;
    let resources = registry.instance_defaults().applied(&node.resources);
    let after = Footprint { apps: u64::from(now.apps), ..Footprint::default() }
        .plus(crate::quota::settled_instances(registry, account, None).await?)
        .plus(Footprint::instances(1, &resources));
    crate::quota::check(&label, &quota, &now, after)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "quota-exceeded", e.to_string()))?;
    Ok(Some(guard))
}

/// A generic spec as its own kind's type (only called with `S::KIND` matching `T::KIND`).
fn as_kind<S: Spec, T: Spec>(spec: &S) -> Result<T, ApiError> {
    serde_json::to_value(spec)
        .and_then(serde_json::from_value)
        .map_err(|e| ApiError::bad_request(format!("not a {}: {e}", T::KIND)))
}
