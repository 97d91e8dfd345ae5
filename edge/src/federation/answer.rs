//! Answers to forwarded runs waiting in `requires_action` (human in the loop across clusters).
//!
//! Origin side: `POST /v1/runs/{id}/tool_outputs` checks the answer against the wait the
//! relayed `run.requires_action` projected into the record here and claims that wait, exactly
//! as for a local run; only then does the claimed answer go to the peer
//! ([`forward`]), so the peer never hears two different answers to one wait. A retry of the
//! same answer is sent again (deduplicated by its `Nats-Msg-Id`).
//!
//! Peer side ([`accept`]): the answer is replayed through this edge's own router against the
//! local run, with the answerer's token, so the peer's trust configuration and claim rule apply.
//!
//! The submission a run journals in `run.action_answered` names the run (`<run>:cont:<digest>`);
//! the relay renames it to the origin's run id ([`at_origin`]) so the origin recognizes a retry
//! of the answer its run resumed with.

use agentos_bus::envelope::{Continuation, EventData};
use agentos_bus::federation::{ForwardAnswer, InboundEntry};
use agentos_bus::id::{NodeId, RunId, Tenant};
use agentos_bus::subject::FedKind;
use agentos_bus::{Error as BusError, key};
use axum::http::Method;

use super::Fed;
use super::inbound::{Outcome, call};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, AuthContext};

/// What sending an answer to a peer needs (this cluster's federation and the caller's token),
/// checked before the answer claims the wait, so a claim is never left without its forward.
pub(crate) fn sender<'a>(
    state: &'a AppState,
    auth: &'a AuthContext,
) -> ApiResult<(&'a Fed, &'a str)> {
    let fed = state.federation.as_deref().ok_or_else(|| {
        ApiError::conflict(
            "federation_disabled",
            "this run lives on a peer, and this cluster is not federated any more",
        )
    })?;
    let token = auth.token.as_deref().ok_or_else(|| {
        ApiError::bad_request(
            "federation_needs_token",
            "an answer to a forwarded run carries the caller's bearer token; this edge has none",
        )
    })?;
    Ok((fed, token))
}

/// Sends the answer that claimed the wait of forwarded run `answer.run_id` to `node`.
pub(crate) async fn forward(
    state: &AppState,
    auth: &AuthContext,
    node: &NodeId,
    answer: Continuation,
) -> ApiResult<()> {
    let (fed, token) = sender(state, auth)?;
    let (run, msg_id) = (answer.run_id, format!("answer-{}", answer.msg_id()));
    let msg = ForwardAnswer {
        origin: fed.config.node.clone(),
        answer,
    };
    state
        .bus
        .fed_publish(
            node,
            FedKind::Answer,
            &auth.tenant,
            &msg,
            &msg_id,
            Some(token),
        )
        .await?;
    tracing::info!(%run, %node, "answer forwarded");
    Ok(())
}

/// An answer `from` forwarded for one of the runs it placed here.
pub(super) async fn accept(
    state: &AppState,
    fed: &Fed,
    from: &NodeId,
    tenant: &Tenant,
    msg: ForwardAnswer,
    token: Option<&str>,
) -> Outcome {
    let run = msg.answer.run_id;
    if msg.origin != *from || msg.answer.tenant != *tenant {
        tracing::warn!(%from, %tenant, "forwarded answer names another origin or tenant; dropped");
        return Outcome::Done;
    }
    let entry = match fed
        .fwd
        .get_as::<InboundEntry>(&key::fwd_in(tenant, &run))
        .await
    {
        Ok(Some(e)) => e.value,
        Ok(None) => {
            tracing::warn!(%run, %from, "answer for a run not forwarded here; dropped");
            return Outcome::Done;
        }
        Err(e) => return Outcome::Retry(e),
    };
    let Some(token) = token else {
        tracing::warn!(%run, "forwarded answer without a token; dropped");
        return Outcome::Done;
    };
    let body = serde_json::json!({
        "tool_outputs": msg.answer.tool_outputs,
        "approvals": msg.answer.approvals,
    });
    let path = format!("/v1/runs/{}/tool_outputs", entry.local_run);
    let (status, v) = call(state, Method::POST, &path, token, None, Some(body)).await;
    if status.is_server_error() {
        return Outcome::Retry(BusError::Missing {
            kind: "edge answer",
            name: format!("{status} {v}"),
        });
    }
    if status.is_success() {
        tracing::info!(%run, local = %entry.local_run, "forwarded answer applied");
    } else {
        // The run moved on here meanwhile (expired, cancelled): it ends as this cluster says,
        // and its end travels back like any event.
        tracing::warn!(%run, local = %entry.local_run, %status, error = %v["error"], "forwarded answer refused");
    }
    Outcome::Done
}

/// `event` as the origin journals it: a `run.action_answered` names its submission by the
/// origin's run id, not this cluster's.
pub(super) fn at_origin(event: &mut EventData, local: &RunId, origin: &RunId) {
    if let EventData::RunActionAnswered { submission, .. } = event
        && let Some(rest) = submission.strip_prefix(&local.to_string())
    {
        *submission = format!("{origin}{rest}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answered_submission_is_renamed_to_the_origin_run() {
        let (local, origin) = (RunId::new(), RunId::new());
        let mut e = EventData::RunActionAnswered {
            step: 1,
            answers: Vec::new(),
            submission: format!("{local}:cont:abc"),
        };
        at_origin(&mut e, &local, &origin);
        match e {
            EventData::RunActionAnswered { submission, .. } => {
                assert_eq!(submission, format!("{origin}:cont:abc"));
            }
            other => panic!("{other:?}"),
        }
    }
}
