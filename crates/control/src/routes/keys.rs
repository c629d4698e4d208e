//! Keys, join tokens and the join: the key-generation service's API.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use enjin_model::api::{
    JoinRequest, JoinResponse, JoinTokenCreateRequest, JoinTokenCreated, KeyInfo, KeyList, KeyPath,
    RotateRequest,
};

use super::AppState;
use crate::auth::Principal;
use crate::bus::{BusAuthority, DEFAULT_OVERLAP};
use crate::extract::{ApiJson, ApiPath};
use crate::problem::ApiError;

fn authority(state: &AppState) -> Result<&std::sync::Arc<BusAuthority>, ApiError> {
    state.bus.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "this server runs no key service")
    })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList { items: authority(&state)?.list().await? }))
}

pub async fn rotate(
    State(state): State<AppState>,
    ApiPath(KeyPath { id }): ApiPath<KeyPath>,
    ApiJson(req): ApiJson<RotateRequest>,
) -> Result<Json<KeyInfo>, ApiError> {
    let overlap = req.overlap_seconds.map_or(DEFAULT_OVERLAP, std::time::Duration::from_secs);
    Ok(Json(authority(&state)?.rotate(&id, overlap).await?))
}

pub async fn revoke(
    State(state): State<AppState>,
    ApiPath(KeyPath { id }): ApiPath<KeyPath>,
) -> Result<Json<KeyInfo>, ApiError> {
    Ok(Json(authority(&state)?.revoke(&id).await?))
}

pub async fn create_join_token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<JoinTokenCreateRequest>,
) -> Result<(StatusCode, Json<JoinTokenCreated>), ApiError> {
    let created = state.auth.issue_join(req.ring, req.parent, req.node, req.ttl_seconds, Utc::now()).await?;
    tracing::info!(id = %created.id, ring = %created.ring, parent = %created.parent, "join token issued");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn join(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<JoinResponse>, ApiError> {
    let Some(grant) = principal.join.as_ref() else {
        return Err(ApiError::forbidden("joining needs a join token (`enjin join-token create`)"));
    };
    Ok(Json(authority(&state)?.join(grant, req).await?))
}
