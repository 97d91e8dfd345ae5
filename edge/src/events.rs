//! Following a run: `GET /v1/runs/{id}/events` (SSE, resumable) and `GET /v1/runs/{id}/wait`.

use std::convert::Infallible;
use std::time::Duration;

use agentos_bus::id::RunId;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::runs::{RunView, load, parse_run_id};
use crate::{AppState, AuthContext};

const HEARTBEAT: Duration = Duration::from_secs(15);
const DEFAULT_WAIT_S: u64 = 30;
const MAX_WAIT_S: u64 = 300;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/runs/{id}/events", get(events))
        .route("/v1/runs/{id}/wait", get(wait))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Resume after this event sequence (same as `Last-Event-ID`).
    pub after: Option<u64>,
}

/// The run's events from sequence `after + 1`, live, closing after the terminal event.
pub(crate) async fn sse(
    state: &AppState,
    auth: &AuthContext,
    run: RunId,
    after: u64,
) -> ApiResult<Response> {
    let slot = state.limits.open_stream(&auth.tenant)?;
    let last = state.bus.last_event(&auth.tenant, &run).await?;
    let finished = last.is_some_and(|s| s.event.data.is_terminal() && s.event.seq <= after);
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        if finished {
            Box::pin(futures::stream::empty())
        } else {
            // The read starts at event `after + 1`; the filter below only guards against a
            // journal whose sequences are not what they should be.
            let journal = state
                .bus
                .follow_journal_after(&auth.tenant, &run, after)
                .await?;
            // Ends right after yielding the terminal event, without waiting for another message.
            let events =
                futures::stream::unfold((journal, false), move |(mut journal, done)| async move {
                    if done {
                        return None;
                    }
                    while let Some(item) = journal.next().await {
                        match item {
                            Ok(stored) if stored.event.seq > after => {
                                let terminal = stored.event.data.is_terminal();
                                return Some((stored.event, (journal, terminal)));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "skipping an undecodable journal entry")
                            }
                        }
                    }
                    None
                });
            let open = crate::metric_definitions::OpenSse::open();
            Box::pin(events.map(move |event| {
                // The open-streams gauge and the tenant's stream slot, both released when the
                // stream ends or the client leaves.
                let _held = (&open, &slot);
                let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
                Ok(SseEvent::default()
                    .id(event.seq.to_string())
                    .event(event.type_name())
                    .data(data))
            }))
        };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response())
}

/// Stream a run's events (SSE). `id:` is the event's sequence; resume with `Last-Event-ID` or
/// `?after=`; comment heartbeats every 15 s; closes after the terminal event.
#[utoipa::path(get, path = "/v1/runs/{id}/events", params(("id" = String, Path), EventsQuery,
    ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "the run's events", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let id = parse_run_id(&id)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let from_header = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                // As documented: 1 to 19 digits (`u64::from_str` would also take a `+`).
                .filter(|s| (1..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be an event sequence number",
                    )
                })?,
        ),
    };
    load(&state, &auth, &id).await?;
    sse(&state, &auth, id, from_header.or(q.after).unwrap_or(0)).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait, 0..=300 (default 30).
    #[param(minimum = 0, maximum = 300)]
    pub timeout_s: Option<u64>,
}

/// Long-poll until the run is terminal or waits in `requires_action` for the caller, or the
/// timeout passes; answers the run either way.
#[utoipa::path(get, path = "/v1/runs/{id}/wait", params(("id" = String, Path), WaitQuery), responses((status = 200, description = "the run", body = RunView)))]
pub async fn wait(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<RunView>> {
    let id = parse_run_id(&id)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let timeout_s = q.timeout_s.unwrap_or(DEFAULT_WAIT_S);
    if timeout_s > MAX_WAIT_S {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            format!("timeout_s must be at most {MAX_WAIT_S}"),
        )
        .with_param("timeout_s"));
    }
    // Register before reading, so a terminal update between the two is not missed. The guard
    // unregisters on every way out of this function, a failed read included.
    let mut waiter = state.waiters.register(id);
    let rec = load(&state, &auth, &id).await?.value;
    if crate::watch::settled(&rec) {
        return Ok(Json(rec.into()));
    }
    match tokio::time::timeout(Duration::from_secs(timeout_s), waiter.done()).await {
        Ok(Some(rec)) => Ok(Json(rec.into())),
        _ => {
            drop(waiter);
            Ok(Json(load(&state, &auth, &id).await?.value.into()))
        }
    }
}
