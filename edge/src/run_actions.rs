//! Answering a run that waits in `requires_action`: `POST /v1/runs/{id}/tool_outputs`, with the
//! outputs of its client tool calls and the decisions on its calls that require approval.
//!
//! The answer is checked against the run's pending calls, published as a continuation on the
//! tenant's runs subject (`Nats-Msg-Id` from its content, so a retry is deduplicated), then
//! claimed in the run record: the first answer to claim a wait is the one the run resumes with,
//! whether the edge or an orchestrator claimed it. A different answer is refused with `409`; the
//! same answer again is accepted again and changes nothing.

use agentos_bus::envelope::{
    Approval, Claim, Continuation, EventData, RequiredAction, RunRecord, RunStatus, SubmitMessage,
    ToolOutput,
};
use agentos_bus::id::{CallId, RunId};
use agentos_bus::{Error as BusError, SubmitMeta};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, REQUEST_ID_HEADER};
use crate::runs::{RunView, load, parse_run_id, run_key};
use crate::{AppState, AuthContext};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/runs/{id}/tool_outputs", post(submit))
}

/// `POST /v1/runs/{id}/tool_outputs` body: one entry per pending call.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitAnswers {
    /// Outputs of the pending client tool calls.
    #[serde(default)]
    pub tool_outputs: Vec<ToolOutputBody>,
    /// Decisions on the pending calls that require approval.
    #[serde(default)]
    pub approvals: Vec<ApprovalBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolOutputBody {
    pub call_id: String,
    /// The tool's result: a string (as OpenAI's API), or any JSON value.
    #[schema(value_type = Object)]
    pub output: Value,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    pub call_id: String,
    pub approve: bool,
    /// Replaces the model's arguments (an object; approvals only).
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Value>,
    /// Told to the model when the call is rejected.
    pub reason: Option<String>,
}

fn call_id(id: String, param: String) -> ApiResult<CallId> {
    CallId::parse(id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param(param))
}

fn continuation(auth: &AuthContext, run: RunId, body: SubmitAnswers) -> ApiResult<Continuation> {
    let tool_outputs = body
        .tool_outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            Ok(ToolOutput {
                call_id: call_id(o.call_id, format!("tool_outputs[{i}].call_id"))?,
                output: o.output,
            })
        })
        .collect::<ApiResult<_>>()?;
    let approvals = body
        .approvals
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            if a.arguments.as_ref().is_some_and(|v| !v.is_object()) {
                return Err(ApiError::bad_request(
                    "invalid_approval",
                    "arguments must be a JSON object",
                )
                .with_param(format!("approvals[{i}].arguments")));
            }
            Ok(Approval {
                call_id: call_id(a.call_id, format!("approvals[{i}].call_id"))?,
                approve: a.approve,
                arguments: a.arguments,
                reason: a.reason,
            })
        })
        .collect::<ApiResult<_>>()?;
    Ok(Continuation {
        run_id: run,
        tenant: auth.tenant.clone(),
        tool_outputs,
        approvals,
    })
}

fn not_waiting(rec: &RunRecord) -> ApiError {
    ApiError::conflict(
        "run_not_waiting",
        format!(
            "run {} is {}, not requires_action",
            rec.id,
            rec.status.as_str()
        ),
    )
}

fn already_answered(run: &RunId) -> ApiError {
    ApiError::conflict(
        "already_answered",
        format!("run {run} was already answered with different outputs"),
    )
}

/// Answer a run waiting in `requires_action`.
#[utoipa::path(post, path = "/v1/runs/{id}/tool_outputs", params(("id" = String, Path)), request_body = SubmitAnswers,
    responses((status = 202, description = "accepted: the run resumes with this answer", body = RunView),
        (status = 400, description = "the answer does not fit the pending calls: `unknown_call_id`, `missing_tool_outputs`, `duplicate_call_id`, `wrong_answer_kind`, `invalid_approval`"),
        (status = 404, description = "no such run"),
        (status = 409, description = "`run_not_waiting`, or `already_answered` with a different answer")))]
pub async fn submit(
    State(state): State<AppState>,
    auth: AuthContext,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SubmitAnswers>,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    let id = parse_run_id(&id)?;
    let answer = continuation(&auth, id, body)?;
    let rec = load(&state, &auth, &id).await?.value;
    let wait = match (&rec.required_action, rec.status) {
        (Some(wait), RunStatus::RequiresAction) => wait.clone(),
        // A retry of the answer the run already resumed with is accepted again.
        _ if answers_after(&state, &auth, &id, 0)
            .await?
            .contains(&answer.msg_id()) =>
        {
            return Ok((StatusCode::ACCEPTED, Json(rec.into())));
        }
        _ => return Err(not_waiting(&rec)),
    };
    wait.answers(&answer).map_err(|e| {
        let err = ApiError::bad_request(e.code(), e.to_string());
        match e.param() {
            Some(p) => err.with_param(p),
            None => err,
        }
    })?;
    let submission = answer.msg_id();
    if wait
        .answered_by
        .as_ref()
        .is_some_and(|by| *by != submission)
    {
        return Err(already_answered(&id));
    }
    let calls = answer.tool_outputs.len() + answer.approvals.len();
    let rec = if let Some(node) = rec.node.clone() {
        // A forwarded run: claimed here first, so only the answer that won goes to the peer
        // (whose own claim rule then applies); a retry of it is sent again, deduplicated.
        crate::federation::answer::sender(&state, &auth)?;
        let rec = claim(&state, &auth, &id, &wait, &submission).await?;
        crate::federation::answer::forward(&state, &auth, &node, answer).await?;
        rec
    } else {
        // Published before it is claimed: a claim always has its answer on the bus, so whoever
        // claimed a wait, the answer that won reaches an orchestrator.
        let request_id = headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
        state
            .bus
            .submit(
                &SubmitMessage::Continuation(answer),
                &SubmitMeta { request_id },
            )
            .await?;
        claim(&state, &auth, &id, &wait, &submission).await?
    };
    tracing::info!(run = %id, calls, "run answered");
    let details = serde_json::json!({ "calls": calls });
    crate::admin::record_committed(&state, &auth, "run.answer", id.to_string(), details).await;
    Ok((StatusCode::ACCEPTED, Json(rec.into())))
}

/// Claims `wait` for `submission` in the run record, or learns from the journal which answer
/// the run resumed with if it has moved on already.
async fn claim(
    state: &AppState,
    auth: &AuthContext,
    run: &RunId,
    wait: &RequiredAction,
    submission: &str,
) -> ApiResult<RunRecord> {
    for _ in 0..10 {
        let current = load(state, auth, run).await?;
        let mut rec = current.value;
        let same_wait = rec.status == RunStatus::RequiresAction
            && rec.required_action.as_ref().map(|a| a.seq) == Some(wait.seq);
        if !same_wait {
            return moved_on(state, auth, rec, wait, submission).await;
        }
        match rec.claim_answer(wait, submission) {
            Claim::Ours => return Ok(rec),
            Claim::Taken => return Err(already_answered(&rec.id)),
            Claim::Moved => return moved_on(state, auth, rec, wait, submission).await,
            Claim::Write => {}
        }
        rec.updated_at = agentos_bus::envelope::now();
        match state
            .runs
            .update_as(&run_key(auth, &rec.id), &rec, current.revision)
            .await
        {
            Ok(_) => return Ok(rec),
            Err(BusError::WrongRevision { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the run kept changing; retry",
    ))
}

/// The run left the wait: it resumed with this answer (accepted again), with another (`409
/// already_answered`), or it ended without one (`409 run_not_waiting`).
async fn moved_on(
    state: &AppState,
    auth: &AuthContext,
    rec: RunRecord,
    wait: &RequiredAction,
    submission: &str,
) -> ApiResult<RunRecord> {
    match answers_after(state, auth, &rec.id, wait.seq).await?.first() {
        Some(by) if by == submission => Ok(rec),
        Some(_) => Err(already_answered(&rec.id)),
        None => Err(not_waiting(&rec)),
    }
}

/// The submissions of the answers journaled after event `after`, in order.
async fn answers_after(
    state: &AppState,
    auth: &AuthContext,
    run: &RunId,
    after: u64,
) -> ApiResult<Vec<String>> {
    let journal = state.bus.read_journal(&auth.tenant, run).await?;
    Ok(journal
        .into_iter()
        .filter(|s| s.event.seq > after)
        .filter_map(|s| match s.event.data {
            EventData::RunActionAnswered { submission, .. } => Some(submission),
            _ => None,
        })
        .collect())
}
