//! `GET /v1/watch`: the store's watch as server-sent events. One event per store transaction
//! (so a client never sees half of one), its id the revision, so that a reconnecting client's
//! `Last-Event-ID` resumes exactly after the last transaction it saw.

use std::convert::Infallible;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use enjin_model::api::{EventType, WatchBatch, WatchEvent, WatchQuery};
use enjin_model::kinds::{Resource, Verb};
use enjin_model::{Kind, Object};
use enjin_store::{EventKind, WatchError, WatchStream};
use futures_util::Stream;

use super::AppState;
use crate::auth::Principal;
use crate::extract::ApiQuery;
use crate::problem::ApiError;
use crate::registry::{REGISTRY_PREFIX, decode, kind_prefix};

/// The `kind` named in a watch query, for authorization before the handler runs.
pub fn kind_in_query(query: Option<&str>) -> Result<Option<Kind>, ()> {
    let q: WatchQuery = serde_urlencoded_like(query.unwrap_or(""))?;
    Ok(q.kind)
}

fn serde_urlencoded_like(query: &str) -> Result<WatchQuery, ()> {
    let uri: axum::http::Uri = format!("/?{query}").parse().map_err(|_| ())?;
    axum::extract::Query::<WatchQuery>::try_from_uri(&uri).map(|q| q.0).map_err(|_| ())
}

pub async fn watch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last_seen = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    // A reconnecting EventSource repeats the URL it first used; its Last-Event-ID says where
    // it really is, so it wins over `from`.
    let from = match (q.from, last_seen) {
        (_, Some(id)) => {
            id.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("Last-Event-ID {id:?} is not a revision")))?
                + 1
        }
        (Some(from), None) => from,
        (None, None) => 0,
    };
    if from < 0 {
        return Err(ApiError::bad_request("from must be a revision, 0 or more").with_field("from"));
    }
    let store = state.registry.store();
    let compacted = store.compacted_revision().await?;
    if from != 0 && from < compacted {
        return Err(ApiError::new(
            axum::http::StatusCode::GONE,
            "compacted",
            format!(
                "revision {from} has been compacted; the oldest kept is {compacted}: list again and watch from the list's revision + 1"
            ),
        ));
    }
    let prefix = q.kind.map_or_else(|| REGISTRY_PREFIX.to_string(), kind_prefix);
    let rx = store.watch(&prefix, from).await?;
    tracing::debug!(from, prefix = %prefix, "watch started");
    Ok(Sse::new(events(rx, state.stopping.clone(), principal)).keep_alive(KeepAlive::default()))
}

fn events(
    rx: WatchStream,
    stopping: tokio::sync::watch::Receiver<bool>,
    principal: Principal,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(Some((rx, stopping, principal)), |state| async move {
        let (mut rx, mut stopping, principal) = state?;
        let item = tokio::select! {
            item = rx.recv() => item?,
            _ = stopping.wait_for(|stop| *stop) => return None,
        };
        let batch = match &item {
            Ok(batch) => Some(convert(batch.clone(), &principal)),
            Err(_) => None,
        };
        let rx = (rx, stopping, principal);
        Some(match item {
            Ok(_) => {
                // A transaction that changed nothing the caller may see still moves its
                // revision on, so that a resume starts after it.
                let batch = batch.unwrap_or(WatchBatch { revision: 0, events: Vec::new() });
                let event = Event::default().id(batch.revision.to_string()).event("batch");
                let event =
                    event.json_data(&batch).unwrap_or_else(|_| Event::default().comment("unencodable"));
                (Ok(event), Some(rx))
            }
            Err(e) => {
                let problem = match &e {
                    WatchError::Compacted { .. } => {
                        ApiError::new(axum::http::StatusCode::GONE, "compacted", e.to_string())
                    }
                    _ => ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        e.to_string(),
                    ),
                };
                let event = Event::default().event("error").json_data(problem.problem()).unwrap_or_default();
                (Ok(event), None)
            }
        })
    })
}

/// The events of one store transaction that the caller may watch: objects of accounts where
/// it holds `watch` on their kind. Objects stored before accounts are the system account's.
fn convert(batch: enjin_store::WatchBatch, principal: &Principal) -> WatchBatch {
    let events = batch
        .events
        .into_iter()
        .filter_map(|e| {
            let (event_type, kv) = match e.kind {
                EventKind::Put => (EventType::Put, e.kv),
                EventKind::Delete => (EventType::Deleted, e.prev?),
            };
            let mut obj: Object<serde_json::Value> = decode(&kv).ok()?;
            if obj.meta.account.is_nil() {
                obj.meta.account = principal.system;
            }
            if !super::objects::may(principal, Verb::Watch, &obj.meta) {
                return None;
            }
            if matches!(obj.meta.kind, Kind::Release | Kind::Node)
                && !principal.allows(Verb::Create, Resource::Kind(Kind::Release), obj.meta.account)
            {
                super::objects::hide_env(&mut obj.spec);
            }
            Some(WatchEvent { event_type, kind: obj.meta.kind, object: serde_json::to_value(obj).ok()? })
        })
        .collect();
    WatchBatch { revision: batch.revision, events }
}
