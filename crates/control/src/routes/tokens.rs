//! API tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use enjin_model::api::{TokenCreateRequest, TokenCreated, TokenList, TokenPath};

use super::AppState;
use crate::extract::{ApiJson, ApiPath};
use crate::problem::ApiError;

pub async fn list(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList { items: state.auth.list().await? }))
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenCreateRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let created = state.auth.issue(&req.principal, &req.description, Utc::now()).await?;
    tracing::info!(id = %created.info.id, principal = %created.info.principal, "token issued");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn revoke(
    State(state): State<AppState>,
    ApiPath(TokenPath { id }): ApiPath<TokenPath>,
) -> Result<StatusCode, ApiError> {
    state.auth.revoke(id).await?;
    tracing::info!(%id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
