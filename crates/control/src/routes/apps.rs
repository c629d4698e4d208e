//! The platform's API: packages, deploys, rollbacks, scaling, restarts, status and logs.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use enjin_model::api::{
    AppList, AppPath, AppStatus, DeployRequest, LogsQuery, LogsReply, PackageUploaded, ReleaseList,
    RollbackRequest, RolloutStarted, ScaleRequest,
};

use super::AppState;
use crate::auth::Principal;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::platform::{Platform, PlatformError};
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
            PlatformError::Packages(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

fn platform(state: &AppState) -> Result<&Arc<Platform>, ApiError> {
    state.platform.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "this server runs no platform service")
    })
}

pub async fn upload(
    State(state): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<PackageUploaded>), ApiError> {
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
    let out = platform(&state)?.upload(bytes.to_vec()).await?;
    let status = if out.existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(out)))
}

pub async fn deploy(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Json<RolloutStarted>), ApiError> {
    if req.manifest.name != app {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("the manifest names app {:?}, but the path names {app:?}", req.manifest.name),
        )
        .with_field("manifest.name"));
    }
    let p = platform(&state)?;
    let caller = p.caller(&principal.name).await?;
    let started = p.deploy(&caller, req.manifest, req.package).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<(StatusCode, Json<RolloutStarted>), ApiError> {
    let p = platform(&state)?;
    let caller = p.caller(&principal.name).await?;
    Ok((StatusCode::ACCEPTED, Json(p.rollback(&caller, &app, req.version).await?)))
}

pub async fn restart(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
) -> Result<(StatusCode, Json<RolloutStarted>), ApiError> {
    let p = platform(&state)?;
    let caller = p.caller(&principal.name).await?;
    Ok((StatusCode::ACCEPTED, Json(p.restart(&caller, &app).await?)))
}

pub async fn scale(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiJson(req): ApiJson<ScaleRequest>,
) -> Result<(StatusCode, Json<RolloutStarted>), ApiError> {
    let p = platform(&state)?;
    let caller = p.caller(&principal.name).await?;
    Ok((StatusCode::ACCEPTED, Json(p.scale(&caller, &app, req.processes).await?)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<AppList>, ApiError> {
    Ok(Json(AppList { items: platform(&state)?.list().await? }))
}

pub async fn status(
    State(state): State<AppState>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
) -> Result<Json<AppStatus>, ApiError> {
    Ok(Json(platform(&state)?.status(&app).await?))
}

pub async fn releases(
    State(state): State<AppState>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
) -> Result<Json<ReleaseList>, ApiError> {
    Ok(Json(ReleaseList { items: platform(&state)?.releases(&app).await? }))
}

pub async fn logs(
    State(state): State<AppState>,
    ApiPath(AppPath { app }): ApiPath<AppPath>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<LogsReply>, ApiError> {
    Ok(Json(platform(&state)?.logs(&app, &q).await?))
}
