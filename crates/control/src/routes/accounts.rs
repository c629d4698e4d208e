//! `GET /v1/account-status`: each account the caller may read, with its quota and use.

use axum::extract::State;
use axum::{Extension, Json};
use enjin_model::api::{AccountStatus, AccountStatusList, ListQuery};
use enjin_model::kinds::{AccountSpec, Verb};

use super::AppState;
use super::objects::may;
use crate::auth::Principal;
use crate::problem::ApiError;

pub async fn status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<AccountStatusList>, ApiError> {
    let (accounts, _) = state.registry.list::<AccountSpec>(&ListQuery::default()).await?;
    let mut items = Vec::new();
    for account in accounts.into_iter().filter(|a| may(&principal, Verb::Get, &a.meta)) {
        let mut usage = crate::quota::usage(&state.registry, account.meta.uuid).await?;
        if let Some(p) = &state.platform {
            usage.package_bytes = p.package_bytes(account.meta.uuid).await?;
        }
        items.push(AccountStatus { account, usage });
    }
    Ok(Json(AccountStatusList { items }))
}
