//! Runs: `/v1/runs`. The edge writes the `queued` record (KV create) and publishes the request
//! with `Nats-Msg-Id = run_id`; the orchestrators do the rest.

use agentos_bus::envelope::{
    Envelope, ErrorBody, Event, EventData, MAX_EXPIRY, MultitaskStrategy, PendingCall, RunRecord,
    RunRequest, RunStatus, SubmitMessage, Usage, now,
};
use agentos_bus::id::{AgentId, NodeId, RunId};
use agentos_bus::key::{self, Key};
use agentos_bus::{Error as BusError, SubmitMeta, Versioned};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, REQUEST_ID_HEADER};
use crate::{AppState, AuthContext, agents, events};

/// Most characters (Unicode scalar values, as JSON Schema's `maxLength` counts) of a run's input.
pub const MAX_INPUT_CHARS: usize = 256 * 1024;
/// A replay this soon after the run's creation re-sends its index entry (deduplicated by the
/// server within its 2-minute window).
const INDEX_REPLAY: time::Duration = time::Duration::seconds(60);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", post(create).get(crate::run_list::list))
        .route("/v1/runs/{id}", get(read))
        .route("/v1/runs/{id}/cancel", post(cancel))
}

/// `POST /v1/runs` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    pub agent_id: String,
    pub input: String,
    pub thread_id: Option<String>,
    /// What to do when the thread has an active run: `reject` | `enqueue` (default) |
    /// `interrupt` | `rollback`. Only with `thread_id`.
    #[schema(pattern = "^(reject|enqueue|interrupt|rollback)$")]
    pub multitask_strategy: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Answer with the run's events as SSE instead of the run.
    #[serde(default)]
    pub stream: bool,
    /// RFC 3339 time at which the run, if it then waits in `requires_action`, ends `expired`
    /// (future, at most 7 days away).
    pub expires_at: Option<String>,
    /// Where the run goes: `{"node": "<peer>"}` forwards it to a federation peer. Without it, a
    /// run whose agent only a peer serves is forwarded there.
    pub placement: Option<Placement>,
}

/// `placement` of `POST /v1/runs`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub node: String,
    /// `local`: when the peer cannot take the run now (its link is down, it is unknown or
    /// incompatible) and this cluster has the agent, run it here instead of waiting for the
    /// peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// Where a placed run goes when its peer cannot take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    Local,
}

/// A run as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunView {
    pub id: String,
    pub object: &'static str,
    pub agent_id: String,
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<ErrorBody>,
    #[schema(value_type = Object)]
    pub usage: Usage,
    pub steps: u32,
    pub thread_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Who created the run: the token's `sub`, or `nats:<tenant>` for a run published
    /// straight onto the bus.
    pub created_by: Option<String>,
    /// What a run in `requires_action` waits for: its pending calls (`call_id`, `name`,
    /// `arguments`, `kind`: `client_tool` | `approval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub required_action: Option<RequiredActionView>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<OffsetDateTime>,
    /// The run's trace (W3C trace id), when the platform exports traces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The federation peer the run was forwarded to; absent for a run that lives here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why the run is still in its status (`waiting_for_peer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<OffsetDateTime>,
}

/// A waiting run's pending calls.
#[derive(Debug, Serialize)]
pub struct RequiredActionView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub tool_calls: Vec<PendingCall>,
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> Self {
        let required_action = r
            .required_action
            .filter(|_| r.status == RunStatus::RequiresAction)
            .map(|a| RequiredActionView {
                kind: "submit_tool_outputs",
                tool_calls: a.tool_calls,
            });
        Self {
            id: r.id.to_string(),
            object: "run",
            agent_id: r.agent_id.to_string(),
            status: r.status.as_str().to_owned(),
            input: r.input,
            output: r.output,
            error: r.error,
            usage: r.usage,
            steps: r.steps,
            thread_id: r.thread_id.map(String::from),
            metadata: r.metadata,
            created_by: r.created_by,
            required_action,
            expires_at: r.expires_at,
            trace_id: r.trace_id,
            node: r.node.map(String::from),
            status_reason: r.status_reason,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

pub(crate) fn run_key(auth: &AuthContext, id: &RunId) -> Key {
    key::run(&auth.tenant, id)
}

pub(crate) fn parse_status(s: &str) -> ApiResult<RunStatus> {
    serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
        ApiError::bad_request("invalid_status", format!("unknown status {s:?}"))
            .with_param("status")
    })
}

pub(crate) fn parse_run_id(id: &str) -> ApiResult<RunId> {
    RunId::parse(id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param("id"))
}

/// The caller's run, or 404 (also for another tenant's run).
pub(crate) async fn load(
    state: &AppState,
    auth: &AuthContext,
    id: &RunId,
) -> ApiResult<Versioned<RunRecord>> {
    state
        .runs
        .get_as::<RunRecord>(&run_key(auth, id))
        .await?
        .ok_or_else(|| ApiError::not_found("run_not_found", format!("no run {id}")))
}

/// `expires_at`: any RFC 3339 time, capped at [`MAX_EXPIRY`] from now (a run waits at most that
/// long). A time already past ends the run as soon as it waits. JSON Schema cannot state a
/// bound relative to the present, so the server takes every time the schema allows.
pub(crate) fn expiry(at: &str, now: OffsetDateTime) -> ApiResult<OffsetDateTime> {
    let at =
        OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).map_err(|e| {
            ApiError::bad_request(
                "invalid_expires_at",
                format!("expires_at must be an RFC 3339 time: {e}"),
            )
            .with_param("expires_at")
        })?;
    Ok(at.min(now + MAX_EXPIRY).to_offset(time::UtcOffset::UTC))
}

/// FNV-1a of the canonical body: enough to tell a reused idempotency key from a retry.
fn body_hash(body: &CreateRun) -> String {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The run an idempotency key maps to: an index entry `<tenant>.idem-<uuidv5(key)>` in the runs
/// bucket, created once (KV `create`), holding a fresh time-ordered run id. Run ids stay UUIDv7,
/// so lists stay in submission order.
pub(crate) async fn idempotent_run_id(
    state: &AppState,
    auth: &AuthContext,
    key: &str,
) -> ApiResult<RunId> {
    let index = key::idempotency(&auth.tenant, key);
    let fresh = RunId::new();
    match state.runs.create(&index, fresh.to_string().into()).await {
        Ok(_) => Ok(fresh),
        Err(BusError::AlreadyExists { .. }) => {
            let entry = state
                .runs
                .get(&index)
                .await?
                .ok_or_else(|| ApiError::conflict("concurrent_update", "retry"))?;
            let id = std::str::from_utf8(&entry.value)
                .map_err(|e| ApiError::internal("idempotency index", e))?;
            RunId::parse(id).map_err(|e| ApiError::internal("idempotency index", e))
        }
        Err(e) => Err(e.into()),
    }
}

/// Start a run.
#[utoipa::path(post, path = "/v1/runs", request_body = CreateRun,
    params(("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the same run")),
    responses((status = 201, description = "created", body = RunView), (status = 200, description = "idempotent replay", body = RunView),
        (status = 404, description = "unknown agent"), (status = 409, description = "idempotency key reused with another body")))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRun>,
) -> ApiResult<Response> {
    let agent_id = AgentId::parse(body.agent_id.clone())
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param("agent_id"))?;
    if body.input.chars().count() > MAX_INPUT_CHARS {
        return Err(ApiError::bad_request(
            "input_too_large",
            format!("input is limited to {MAX_INPUT_CHARS} characters"),
        )
        .with_param("input"));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            // As documented (`^[!-~]{1,255}$`): `to_str` would also pass spaces and tabs.
            Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(k.to_owned())
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1..=255 visible ASCII characters",
                ));
            }
        },
    };
    crate::threads::check_metadata(&body.metadata)?;
    let thread_id = body
        .thread_id
        .as_deref()
        .map(|t| crate::threads::parse_thread_id(t, "thread_id"))
        .transpose()?;
    let strategy = match body.multitask_strategy.as_deref() {
        None => None,
        Some(s) => Some(MultitaskStrategy::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_multitask_strategy",
                format!(
                    "multitask_strategy must be reject, enqueue, interrupt or rollback, not {s:?}"
                ),
            )
            .with_param("multitask_strategy")
        })?),
    };
    if strategy.is_some() && thread_id.is_none() {
        return Err(ApiError::bad_request(
            "invalid_multitask_strategy",
            "multitask_strategy applies to runs on a thread: give a thread_id",
        )
        .with_param("multitask_strategy"));
    }
    if let Some(p) = &body.placement {
        let node = agentos_bus::id::NodeId::parse(p.node.clone()).map_err(|e| {
            ApiError::bad_request("invalid_id", e.to_string()).with_param("placement.node")
        })?;
        let remote = state
            .federation
            .as_ref()
            .is_none_or(|f| f.config.node != node);
        let fall_back = p.fallback == Some(Fallback::Local)
            && !crate::federation::can_take(&state, &node).await?
            && agents::load(&state, &auth, &agent_id).await.is_ok();
        if remote && !fall_back {
            return crate::federation::forward(&state, &auth, &headers, &body, node).await;
        }
    }
    let submitted_at = now();
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|at| expiry(at, submitted_at))
        .transpose()?;
    let agent = match agents::load(&state, &auth, &agent_id).await {
        Ok(agent) => agent.value,
        // Not here: a federation peer may serve it.
        Err(e) => match crate::federation::auto_place(&state, &auth, &agent_id).await? {
            Some(node) => {
                return crate::federation::forward(&state, &auth, &headers, &body, node).await;
            }
            None => return Err(e),
        },
    };
    state
        .entitled(&auth.tenant, |e| e.check_agent(&agent))
        .await?;
    if let Some(thread) = &thread_id {
        crate::threads::load(&state, &auth, thread).await?;
    }
    let run_id = match &idempotency_key {
        Some(k) => idempotent_run_id(&state, &auth, k).await?,
        None => RunId::new(),
    };
    if let (Some(thread), Some(MultitaskStrategy::Reject)) = (&thread_id, strategy) {
        crate::thread_lock::claim_or_refuse(&state, &auth, thread, run_id).await?;
    }
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let req = RunRequest {
        run_id,
        tenant: auth.tenant.clone(),
        agent_id,
        agent: Some(agent),
        input: body.input.clone(),
        thread_id: thread_id.clone(),
        multitask_strategy: strategy,
        metadata: body.metadata.clone(),
        submitted_at,
        expires_at,
    };
    let mut record = RunRecord::queued(&req);
    record.request_hash = idempotency_key.as_ref().map(|_| body_hash(&body));
    record.created_by = Some(auth.subject.clone());
    record.created_by_roles.clone_from(&auth.roles);
    let (status, record) = match state
        .runs
        .create_as(&run_key(&auth, &run_id), &record)
        .await
    {
        Ok(_) => (StatusCode::CREATED, record),
        Err(BusError::AlreadyExists { .. }) => {
            let existing = load(&state, &auth, &run_id).await?.value;
            if existing.request_hash != record.request_hash {
                return Err(ApiError::conflict(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request body",
                ));
            }
            (StatusCode::OK, existing)
        }
        Err(e) => return Err(e.into()),
    };
    // The run index entry: one more publish, sent before the submission and its ack awaited
    // after it, so the two round trips overlap. On a replay it completes an earlier attempt
    // that died before it (within the dedup window, so it is never stored twice).
    let index = if status == StatusCode::CREATED || now() - record.created_at < INDEX_REPLAY {
        Some(
            state
                .bus
                .index_run(&auth.tenant, &record.agent_id, &run_id)
                .await?,
        )
    } else {
        None
    };
    // Listed on its thread before it is submitted (idempotent, so replays are harmless).
    if let Some(thread) = &thread_id {
        let entry = agentos_bus::envelope::ThreadRun {
            run_id,
            agent_id: record.agent_id.clone(),
            submitted_at: record.created_at,
        };
        state.threads.add_run(&auth.tenant, thread, &entry).await?;
    }
    // Published on replays too: if an earlier attempt died between the record and the publish,
    // this completes it; otherwise Nats-Msg-Id dedups it.
    state
        .bus
        .submit(
            &SubmitMessage::Run(Box::new(req)),
            &SubmitMeta {
                request_id: request_id.as_deref(),
            },
        )
        .await?;
    tracing::info!(run = %run_id, tenant = %auth.tenant, "run submitted");
    if status == StatusCode::CREATED {
        crate::metric_definitions::run_submitted(&auth.tenant);
    }
    if let Some(Err(e)) = match index {
        Some(p) => Some(p.stored().await),
        None => None,
    } {
        // Submitted all the same: the run is missing from lists until a replay or a backfill.
        tracing::error!(error = %e, run = %run_id, tenant = %auth.tenant, "run index write failed; the run is not listed");
    }
    if status == StatusCode::CREATED {
        // Submitted: from here on the answer is 201 whatever the audit write does, or a retry
        // without an idempotency key would run it twice.
        let details = serde_json::json!({"agent_id": record.agent_id});
        crate::admin::record_committed(&state, &auth, "run.create", run_id.to_string(), details)
            .await;
    }
    if body.stream {
        return events::sse(&state, &auth, run_id, 0).await;
    }
    Ok((status, Json(RunView::from(record))).into_response())
}

/// Read a run.
#[utoipa::path(get, path = "/v1/runs/{id}", params(("id" = String, Path)), responses((status = 200, description = "the run", body = RunView), (status = 404, description = "not found")))]
pub async fn read(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let id = parse_run_id(&id)?;
    Ok(Json(load(&state, &auth, &id).await?.value.into()))
}

/// Cancel a run. A queued run is cancelled at once; a running one is signalled and ends
/// `cancelled` as soon as its orchestrator notices (in-flight model and tool calls are aborted).
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", params(("id" = String, Path)), responses((status = 202, description = "cancelling or cancelled", body = RunView), (status = 409, description = "already finished")))]
pub async fn cancel(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    let id = parse_run_id(&id)?;
    let key = run_key(&auth, &id);
    for _ in 0..10 {
        let current = load(&state, &auth, &id).await?;
        let mut rec = current.value;
        if rec.status.is_terminal() {
            return Err(ApiError::conflict(
                "run_already_finished",
                format!("run {id} is already {}", rec.status.as_str()),
            ));
        }
        let how = match rec.node.clone() {
            Some(node) => {
                crate::federation::ensure_enabled(&state)?;
                Cancel::Forward(node)
            }
            None if rec.status == RunStatus::Queued
                && cancel_before_start(&state, &rec).await? =>
            {
                Cancel::Now
            }
            None => Cancel::Signal,
        };
        rec.updated_at = now();
        rec.status = if matches!(how, Cancel::Now) {
            rec.finished_at = Some(rec.updated_at);
            rec.last_seq = 1;
            RunStatus::Cancelled
        } else {
            RunStatus::Cancelling
        };
        match state
            .runs
            .update(&key, rec.encode(), current.revision)
            .await
        {
            Ok(_) => {
                match &how {
                    Cancel::Now => {}
                    Cancel::Signal => state.bus.publish_cancel(&auth.tenant, &id).await?,
                    Cancel::Forward(node) => {
                        crate::federation::forward_cancel(&state, &auth, id, node).await?;
                    }
                }
                tracing::info!(run = %id, status = rec.status.as_str(), "cancel requested");
                crate::admin::record_committed(
                    &state,
                    &auth,
                    "run.cancel",
                    id.to_string(),
                    Value::Null,
                )
                .await;
                return Ok((StatusCode::ACCEPTED, Json(rec.into())));
            }
            Err(BusError::WrongRevision { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the run kept changing; retry",
    ))
}

/// How a cancel reaches its run.
enum Cancel {
    /// Not started: `run.cancelled` took journal position 1, so no orchestrator will start it.
    Now,
    /// Started here: its orchestrator hears the cancel signal.
    Signal,
    /// Forwarded: the peer that runs it gets the cancel.
    Forward(NodeId),
}

/// Claims journal position 1 with `run.cancelled` for a run not started yet. `false` when an
/// orchestrator got there first: the cancel signal then reaches it instead.
async fn cancel_before_start(state: &AppState, rec: &RunRecord) -> ApiResult<bool> {
    let event = Event {
        seq: 1,
        run_id: rec.id,
        tenant: rec.tenant.clone(),
        ts: now(),
        trace_id: rec.trace_id.clone(),
        data: EventData::RunCancelled {
            reason: "cancelled before start".into(),
        },
    };
    match state.bus.append(&event, 0).await {
        Ok(_) => Ok(true),
        Err(BusError::WrongLastSequence { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_rfc3339_expiry_is_taken_and_capped_at_seven_days() {
        let now = OffsetDateTime::now_utc();
        for at in [
            "0000-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2001-01-01T00:00:00Z",
            "2999-01-01t00:00:00.123456789z",
        ] {
            let taken = expiry(at, now).expect(at);
            assert!(taken <= now + MAX_EXPIRY, "{at}");
            assert_eq!(taken.offset(), time::UtcOffset::UTC, "{at}");
        }
        let soon = expiry("2001-01-01T00:00:00Z", now).expect("past");
        assert!(
            soon < now,
            "a time past stays past: the run expires when it waits"
        );
        assert!(expiry("yesterday", now).is_err());
    }
}
