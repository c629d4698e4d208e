//! API tokens. A token belongs to an account: listing needs `list token` there, revoking
//! `delete token`; a token of an account the caller cannot list answers 404.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use enjin_model::api::{RevokeDerivedRequest, TokenCreateRequest, TokenCreated, TokenList, TokenPath};
use enjin_model::kinds::{Resource, Verb};

use super::AppState;
use crate::auth::{AuthError, Principal};
use crate::biscuits::{CheckFailure, RequestFacts};
use crate::extract::{ApiJson, ApiPath};
use crate::problem::ApiError;
use crate::registry::RegistryError;

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<TokenList>, ApiError> {
    let items = state.auth.list().await?;
    let items =
        items.into_iter().filter(|t| principal.allows(Verb::List, Resource::Token, t.account)).collect();
    Ok(Json(TokenList { items }))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<TokenCreateRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let created = state.auth.issue(&principal, &req, Utc::now()).await?;
    tracing::info!(
        id = %created.info.id,
        principal = %created.info.principal,
        by = %principal.name,
        account = %created.info.account,
        "token issued"
    );
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(TokenPath { id }): ApiPath<TokenPath>,
) -> Result<StatusCode, ApiError> {
    let token = state.auth.list().await?.into_iter().find(|t| t.id == id);
    let Some(token) = token.filter(|t| principal.allows(Verb::List, Resource::Token, t.account)) else {
        return Err(RegistryError::TokenNotFound(id).into());
    };
    if !principal.allows(Verb::Delete, Resource::Token, token.account) {
        return Err(ApiError::forbidden(format!(
            "principal {} may not delete token in account {}",
            principal.name, token.account
        )));
    }
    state.auth.revoke(id).await?;
    tracing::info!(%id, by = %principal.name, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/tokens/revoke-derived`: a biscuit revoking itself needs nothing more; revoking
/// another needs `delete token` in its root's account, and the caller's own biscuit (if any)
/// must allow that request.
pub async fn revoke_derived(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    facts: Option<Extension<RequestFacts>>,
    ApiJson(req): ApiJson<RevokeDerivedRequest>,
) -> Result<StatusCode, ApiError> {
    let is_self = principal.attenuation.as_ref().is_some_and(|a| {
        crate::biscuits::verify(req.biscuit.trim(), state.auth.token_public_key())
            .is_ok_and(|v| v.attenuation.revocation_ids() == a.revocation_ids())
    });
    if !is_self {
        if !principal.allows_somewhere(Verb::Delete, Resource::Token) {
            return Err(ApiError::forbidden(format!("principal {} may not delete token", principal.name)));
        }
        match facts.and_then(|Extension(f)| principal.attenuation_refuses(&f)) {
            None => {}
            Some(CheckFailure::Expired(why)) => return Err(AuthError::BiscuitExpired(why).into()),
            Some(CheckFailure::Refused(why)) => {
                return Err(ApiError::forbidden(format!(
                    "the token's attenuation refused this request: {why}"
                )));
            }
        }
    }
    let token = state.auth.revoke_derived(&principal, &req.biscuit, Utc::now()).await?;
    tracing::info!(%token, by = %principal.name, "derived token revoked");
    Ok(StatusCode::NO_CONTENT)
}
