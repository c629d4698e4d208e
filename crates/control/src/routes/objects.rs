//! Create, get, list, update and delete, for every kind.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use enjin_model::api::{CreateRequest, DeleteQuery, List, ListQuery, ObjectPath, UpdateRequest};
use enjin_model::{Object, Spec};

use super::AppState;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::ApiError;
use crate::registry::RegistryError;

pub async fn list<S: Spec>(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<List<S>>, ApiError> {
    let (items, revision) = state.registry.list::<S>(&q).await.map_err(|e| match e {
        // The only field a list can find fault with is its selector: a malformed query.
        RegistryError::Invalid(f) => ApiError::bad_request(f.message).with_field(f.field),
        e => e.into(),
    })?;
    Ok(Json(List { items, revision }))
}

pub async fn get<S: Spec>(
    State(state): State<AppState>,
    ApiPath(ObjectPath { uuid }): ApiPath<ObjectPath>,
) -> Result<Json<Object<S>>, ApiError> {
    Ok(Json(state.registry.get::<S>(uuid).await?))
}

pub async fn create<S: Spec>(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateRequest<S>>,
) -> Result<Response, ApiError> {
    let obj = state.registry.create(req, Utc::now()).await?;
    tracing::info!(kind = %S::KIND, uuid = %obj.meta.uuid, revision = obj.meta.revision, "created");
    let location = format!("/{}/{}/{}", enjin_model::api::VERSION, S::KIND.plural(), obj.meta.uuid);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(obj)).into_response())
}

pub async fn update<S: Spec>(
    State(state): State<AppState>,
    ApiPath(ObjectPath { uuid }): ApiPath<ObjectPath>,
    ApiJson(req): ApiJson<UpdateRequest<S>>,
) -> Result<Json<Object<S>>, ApiError> {
    let obj = state.registry.update(uuid, req, Utc::now()).await?;
    tracing::info!(kind = %S::KIND, %uuid, revision = obj.meta.revision, "updated");
    Ok(Json(obj))
}

pub async fn delete<S: Spec>(
    State(state): State<AppState>,
    ApiPath(ObjectPath { uuid }): ApiPath<ObjectPath>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete(S::KIND, uuid, q.revision).await?;
    tracing::info!(kind = %S::KIND, %uuid, "deleted");
    Ok(StatusCode::NO_CONTENT)
}
