//! `GET /v1/nodes/{uuid}/effective-rules`: the access rules an instance's firewall applies,
//! resolved to addresses now (`crate::firewall`). Another account's node answers 404, as
//! for `GET /v1/nodes/{uuid}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use enjin_model::api::{EffectiveRules, ListQuery, ObjectPath};
use enjin_model::kinds::{AccessRuleSetSpec, AccessRuleSpec, NodeSpec, Verb};

use super::AppState;
use super::objects::check;
use crate::auth::Principal;
use crate::extract::ApiPath;
use crate::firewall::{effective_rules, instance_endpoints, instance_network};
use crate::problem::ApiError;

pub async fn effective(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(ObjectPath { uuid }): ApiPath<ObjectPath>,
) -> Result<Json<EffectiveRules>, ApiError> {
    let node = state.registry.get::<NodeSpec>(uuid).await?;
    check(&principal, Verb::Get, &node.meta)?;
    let network = instance_network(&state.registry).await?.map(|n| n.meta.uuid);
    let endpoints = instance_endpoints(&state.registry).await?;
    // Only the node's own account's rules can apply to it.
    let q = ListQuery { account: Some(node.meta.account), ..ListQuery::default() };
    let (rules, _) = state.registry.list::<AccessRuleSpec>(&q).await?;
    let (sets, _) = state.registry.list::<AccessRuleSetSpec>(&ListQuery::default()).await?;
    effective_rules(uuid, network, &endpoints, &rules, &sets).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not-an-instance",
            format!("node {uuid} is not an app instance with an address on the instance network"),
        )
    })
}
