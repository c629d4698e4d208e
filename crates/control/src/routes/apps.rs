//! The platform's API: packages, deploys, rollbacks, scaling, restarts, status and logs.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use enjin_model::Kind;
use enjin_model::api::{
    AppList, AppPath, AppStatus, DeployRequest, LogsQuery, LogsReply, PackageUploaded, ReleaseList,
    RollbackRequest, RolloutStarted, ScaleRequest, UploadQuery,
};
use enjin_model::kinds::{Resource, Verb};
use uuid::Uuid;

use super::AppState;
use crate::audit::AuditAccount;
use crate::auth::Principal;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::platform::{Caller, Platform, PlatformError};
use crate::problem::ApiError;

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::Registry(r) => r.into(),
            PlatformError::Invalid(f) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", f.message).with_field(f.field)
            }
            PlatformError::NoApp(_) => ApiError::new(StatusCode::NOT_FOUND, "not-found", e.to_string()),
            PlatformError::Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            PlatformError::Unavailable(d) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", d),
            PlatformError::NoSandbox(d) => ApiError::new(StatusCode::CONFLICT, "no-sandbox", d),
            PlatformError::Quota(q) => ApiError::new(StatusCode::FORBIDDEN, "quota-exceeded", q.to_string()),
            PlatformError::Packages(_) | PlatformError::Task(_) => {
                // The server's own files: logged in full here, not shown to the client.
                tracing::error!(error = %e, "the platform failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the platform failed; see the server's log".to_string(),
                )
            }
        }
    }
}

fn platform(state: &AppState) -> Result<&Arc<Platform>, ApiError> {
    state.platform.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "this server runs no platform service")
    })
}

/// The app `app` as the caller may act on it with `verb` (on releases): 404 if the caller
/// may not see it (as if it did not exist), 403 if it may see it but not `verb` it.
async fn app_for(p: &Platform, principal: &Principal, app: &str, verb: Verb) -> Result<Caller, ApiError> {
    let owner = p.app_owner(app).await?;
    let Some(owner) = owner.filter(|o| sees(principal, *o)) else {
        return Err(PlatformError::NoApp(app.to_string()).into());
    };
    if !principal.allows(verb, RELEASES, owner) {
        return Err(ApiError::forbidden(format!(
            "principal {} may not {} release in account {owner}",
            principal.name,
            verb.name()
        )));
    }
    Ok(caller(principal, owner))
}

const RELEASES: Resource = Resource::Kind(Kind::Release);

fn sees(principal: &Principal, account: Uuid) -> bool {
    principal.allows(Verb::Get, RELEASES, account) || principal.allows(Verb::List, RELEASES, account)
}

fn caller(principal: &Principal, account: Uuid) -> Caller {
    Caller { principal: principal.name.clone(), account, operator: account == principal.system }
}

/// The account an upload or a first deploy acts in: the one named, or the caller's own; the
/// caller must be able to deploy there.
fn acting_account(principal: &Principal, named: Option<Uuid>) -> Result<Uuid, ApiError> {
    let account = match named {
        Some(a) => a,
        None => principal.home()?,
    };
    if !principal.allows(Verb::Create, RELEASES, account) {
        return Err(ApiError::forbidden(format!(
            "principal {} may not create release in account {account}",
            principal.name
        )));
    }
    Ok(account)
}

pub async fn upload(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<PackageUploaded>), ApiError> {
    let account = acting_account(&principal, q.account)?;
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("a package is at most {} bytes", crate::platform::MAX_PACKAGE_BYTES),
            )
        } else {
            ApiError::bad_request(format!("failed to read the package: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the package is empty"));
    }
    let out = platform(&state)?.upload_for(account, bytes.to_vec()).await?;
    let status = if out.existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(out)))
}

pub async fn deploy(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Extension<AuditAccount>, Json<RolloutStarted>), ApiError> {
    if req.manifest.name != app {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("the manifest names app {:?}, but the path names {app:?}", req.manifest.name),
        )
        .with_field("manifest.name"));
    }
    let p = platform(&state)?;
    let caller = match p.app_owner(&app).await? {
        Some(owner) if sees(&principal, owner) => app_for(p, &principal, &app, Verb::Create).await?,
        // App names are host names, one per cloud: another account's app keeps its name.
        Some(_) => {
            return Err(
                PlatformError::Conflict(format!("the app name {app} is taken; choose another")).into()
            );
        }
        None => caller(&principal, acting_account(&principal, req.account)?),
    };
    if req.account.is_some_and(|a| a != caller.account) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("app {app} belongs to account {}; it cannot move", caller.account),
        )
        .with_field("account"));
    }
    let started = p.deploy(&caller, req.manifest, req.package).await?;
    Ok((StatusCode::ACCEPTED, Extension(AuditAccount(caller.account)), Json(started)))
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<(StatusCode, Extension<AuditAccount>, Json<RolloutStarted>), ApiError> {
    let p = platform(&state)?;
    let caller = app_for(p, &principal, &app, Verb::Create).await?;
    Ok((
        StatusCode::ACCEPTED,
        Extension(AuditAccount(caller.account)),
        Json(p.rollback(&caller, &app, req.version).await?),
    ))
}

pub async fn restart(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
) -> Result<(StatusCode, Extension<AuditAccount>, Json<RolloutStarted>), ApiError> {
    let p = platform(&state)?;
    let caller = app_for(p, &principal, &app, Verb::Create).await?;
    Ok((StatusCode::ACCEPTED, Extension(AuditAccount(caller.account)), Json(p.restart(&caller, &app).await?)))
}

pub async fn scale(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiJson(req): ApiJson<ScaleRequest>,
) -> Result<(StatusCode, Extension<AuditAccount>, Json<RolloutStarted>), ApiError> {
    let p = platform(&state)?;
    let caller = app_for(p, &principal, &app, Verb::Update).await?;
    Ok((
        StatusCode::ACCEPTED,
        Extension(AuditAccount(caller.account)),
        Json(p.scale(&caller, &app, req.processes).await?),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<AppList>, ApiError> {
    let items = platform(&state)?.list().await?;
    let items = items.into_iter().filter(|a| principal.allows(Verb::List, RELEASES, a.account)).collect();
    Ok(Json(AppList { items }))
}

pub async fn status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
) -> Result<Json<AppStatus>, ApiError> {
    let p = platform(&state)?;
    let caller = app_for(p, &principal, &app, Verb::Get).await?;
    Ok(Json(p.status(caller.account, &app).await?))
}

pub async fn releases(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
) -> Result<Json<ReleaseList>, ApiError> {
    let p = platform(&state)?;
    let caller = app_for(p, &principal, &app, Verb::List).await?;
    let items = p.releases(caller.account, &app).await?;
    Ok(Json(ReleaseList {
        items: items.into_iter().map(|r| super::objects::redacted(&principal, r)).collect(),
    }))
}

pub async fn logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<LogsReply>, ApiError> {
    let p = platform(&state)?;
    let caller = app_for(p, &principal, &app, Verb::Get).await?;
    Ok(Json(p.logs(caller.account, &app, &q).await?))
}
