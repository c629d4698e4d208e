//! Health, the API document and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use enjin_model::api::Health;

use super::AppState;
use crate::metrics::Metrics;

pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.openapi.as_ref().clone())
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let revision = state.registry.store().current_revision().await.unwrap_or(0);
    let mut body = state.metrics.render(revision);
    if let Some(stats) = state.registry.store().stats() {
        body.push_str(&Metrics::render_store(stats));
    }
    if let Some(bus) = &state.bus {
        body.push_str(&bus.render_metrics());
    }
    if let Some(platform) = &state.platform {
        body.push_str(&platform.edge_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
