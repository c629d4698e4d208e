//! `GET /v1/bus/tail`: verified bus messages on a topic, as server-sent events.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use enjin_bus::topic;
use enjin_model::api::TailQuery;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use crate::extract::ApiQuery;
use crate::problem::ApiError;

pub async fn tail(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<TailQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    topic::validate_pattern(&q.topic).map_err(|e| {
        ApiError::bad_request(format!("invalid topic {:?}: {e}", q.topic)).with_field("topic")
    })?;
    // The API document promises ASCII patterns, so that its length limit (in characters) is the
    // bus's (in bytes).
    if !q.topic.is_ascii() {
        return Err(ApiError::bad_request(format!("invalid topic {:?}: tail patterns are ASCII", q.topic))
            .with_field("topic"));
    }
    let no_bus = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("this server runs no bus for ring {}", q.ring),
        )
    };
    let authority = state.bus.as_ref().filter(|b| b.ring() == q.ring.get()).ok_or_else(no_bus)?;
    // A key service without a hub (`enjin server`) has no bus to tail, as for another ring.
    let rx = authority.tail().map_err(|e| match e {
        crate::bus::BusError::NoHub => no_bus(),
        e => e.into(),
    })?;
    let stopping = state.stopping.clone();
    let pattern = q.topic;
    let stream =
        futures_util::stream::unfold((rx, stopping, pattern), |(mut rx, mut stopping, pattern)| async move {
            loop {
                let msg = tokio::select! {
                    m = rx.recv() => m,
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                match msg {
                    Ok(m) if topic::matches(&pattern, &m.topic) => {
                        let event = Event::default().event("message").json_data(&m).unwrap_or_default();
                        return Some((Ok(event), (rx, stopping, pattern)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        let event = Event::default()
                            .event("lagged")
                            .data(format!("{n} messages skipped: this tail fell behind"));
                        return Some((Ok(event), (rx, stopping, pattern)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
