//! The peer's side: a forwarded run is admitted through this edge's own router with the
//! forwarded bearer token (so it is verified against this cluster's trust configuration, and
//! the tenant, quotas and idempotency rules are the ones an HTTP caller meets); its events go
//! back to the origin until it ends. A refusal goes back too, as the run's `run.failed`.

use std::sync::Arc;
use std::time::Duration;

use agentos_bus::envelope::{ErrorBody, Event, EventData, now};
use agentos_bus::federation::{ForwardCancel, ForwardRun, InboundEntry};
use agentos_bus::id::{NodeId, RunId, Tenant};
use agentos_bus::subject::FedKind;
use agentos_bus::{Error as BusError, key};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use futures::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

use super::Fed;
use crate::AppState;

/// What handling one inbox message came to.
pub(super) enum Outcome {
    Done,
    /// Undecodable: dead-letter it (tenant of its subject, when valid).
    DeadLetter(Option<Tenant>, BusError),
    /// A transient failure: try again later.
    Retry(BusError),
}

impl From<BusError> for Outcome {
    fn from(e: BusError) -> Self {
        Self::Retry(e)
    }
}

/// One request through this edge's router, as the holder of `token`: the status and JSON body.
pub(super) async fn call(
    state: &AppState,
    method: Method,
    path: &str,
    token: &str,
    idempotency_key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let Ok(req) = req.body(body) else {
        return (StatusCode::BAD_REQUEST, Value::Null);
    };
    let router = crate::router(state.clone(), crate::DEFAULT_BODY_LIMIT);
    let Ok(resp) = router.oneshot(req).await;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Tells the origin its run was refused here: event 1 of its journal, `run.failed`.
async fn refuse(
    state: &AppState,
    fed: &Fed,
    origin: &NodeId,
    tenant: &Tenant,
    run: RunId,
    code: &str,
    message: &str,
) -> Result<(), BusError> {
    tracing::warn!(%run, %origin, %tenant, code, message, "forwarded run refused");
    let event = Event {
        seq: 1,
        run_id: run,
        tenant: tenant.clone(),
        ts: now(),
        trace_id: None,
        data: EventData::RunFailed {
            error: ErrorBody::new(
                code,
                format!("peer {} refused the run: {message}", fed.config.node),
            ),
        },
    };
    state
        .bus
        .fed_publish(
            origin,
            FedKind::Event,
            tenant,
            &event,
            &format!("ev-{run}-1"),
            None,
        )
        .await
}

/// A run `from` forwarded for `tenant`.
pub(super) async fn accept(
    state: &AppState,
    fed: &Arc<Fed>,
    from: &NodeId,
    tenant: &Tenant,
    msg: ForwardRun,
    token: Option<&str>,
) -> Outcome {
    let run = msg.request.run_id;
    let refused = |code: &'static str, message: String| async move {
        match refuse(state, fed, from, tenant, run, code, &message).await {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Retry(e),
        }
    };
    if msg.origin != *from || msg.request.tenant != *tenant {
        return refused(
            "forward_mismatch",
            "the message's origin or tenant is not its subject's".into(),
        )
        .await;
    }
    if !fed.config.protocol.contains(msg.protocol) {
        return refused(
            "protocol_unsupported",
            format!("protocol {} is not spoken here", msg.protocol),
        )
        .await;
    }
    let in_key = key::fwd_in(tenant, &run);
    match fed.fwd.get_as::<InboundEntry>(&in_key).await {
        Ok(Some(entry)) => {
            // A redelivery: the run exists here; make sure its events flow back.
            spawn_relay(state, fed, entry.value);
            return Outcome::Done;
        }
        Ok(None) => {}
        Err(e) => return Outcome::Retry(e),
    }
    let Some(token) = token else {
        return refused("missing_token", "the forward carries no token".into()).await;
    };
    // Verified against this cluster's trust configuration, never the origin's word.
    let ctx = match state.auth.authenticate(Some(token)).await {
        Ok(ctx) => ctx,
        Err(e) => return refused(e.code, e.message).await,
    };
    if ctx.tenant != *tenant {
        return refused(
            "tenant_mismatch",
            format!(
                "the forwarded token is for tenant {}, the run for {tenant}",
                ctx.tenant
            ),
        )
        .await;
    }
    let mut body = serde_json::json!({
        "agent_id": msg.request.agent_id,
        "input": msg.request.input,
        "metadata": msg.request.metadata,
    });
    if let Some(at) = msg.request.expires_at
        && let Ok(at) = at.format(&time::format_description::well_known::Rfc3339)
    {
        body["expires_at"] = Value::String(at);
    }
    let idem = format!("fed-{from}-{run}");
    let (status, v) = call(
        state,
        Method::POST,
        "/v1/runs",
        token,
        Some(&idem),
        Some(body),
    )
    .await;
    if status.is_server_error() {
        return Outcome::Retry(BusError::Missing {
            kind: "edge answer",
            name: format!("{status} {v}"),
        });
    }
    let local = v["id"].as_str().and_then(|id| RunId::parse(id).ok());
    let Some(local_run) = local.filter(|_| status.is_success()) else {
        let code = v["error"]["code"].as_str().unwrap_or("forward_refused");
        let message = v["error"]["message"].as_str().unwrap_or("refused");
        let code: &'static str = match code {
            "invalid_signature" => "invalid_signature",
            "token_expired" => "token_expired",
            "token_revoked" => "token_revoked",
            "agent_not_found" => "agent_not_found",
            "tenant_disabled" => "tenant_disabled",
            "not_entitled" => "not_entitled",
            _ => "forward_refused",
        };
        return refused(code, message.to_owned()).await;
    };
    let entry = InboundEntry {
        origin: from.clone(),
        tenant: tenant.clone(),
        origin_run: run,
        local_run,
        done: false,
    };
    match fed.fwd.create_as(&in_key, &entry).await {
        Ok(_) | Err(BusError::AlreadyExists { .. }) => {}
        Err(e) => return Outcome::Retry(e),
    }
    tracing::info!(%run, %local_run, origin = %from, "forwarded run accepted");
    spawn_relay(state, fed, entry);
    Outcome::Done
}

/// A cancel `from` forwarded: the canceller's token cancels the local run through the router.
pub(super) async fn cancel(
    state: &AppState,
    fed: &Fed,
    from: &NodeId,
    tenant: &Tenant,
    msg: ForwardCancel,
    token: Option<&str>,
) -> Outcome {
    if msg.origin != *from || msg.tenant != *tenant {
        tracing::warn!(%from, %tenant, "forwarded cancel names another origin or tenant; dropped");
        return Outcome::Done;
    }
    let entry = match fed
        .fwd
        .get_as::<InboundEntry>(&key::fwd_in(tenant, &msg.run_id))
        .await
    {
        Ok(Some(e)) => e.value,
        Ok(None) => return Outcome::Done,
        Err(e) => return Outcome::Retry(e),
    };
    let Some(token) = token else {
        tracing::warn!(run = %msg.run_id, "forwarded cancel without a token; dropped");
        return Outcome::Done;
    };
    let path = format!("/v1/runs/{}/cancel", entry.local_run);
    let (status, v) = call(state, Method::POST, &path, token, None, None).await;
    if status.is_server_error() {
        return Outcome::Retry(BusError::Missing {
            kind: "edge answer",
            name: format!("{status} {v}"),
        });
    }
    tracing::info!(run = %msg.run_id, local = %entry.local_run, %status, "forwarded cancel applied");
    Outcome::Done
}

/// Relays a forwarded run's events back to its origin (once per process per run).
pub(super) fn spawn_relay(state: &AppState, fed: &Arc<Fed>, entry: InboundEntry) {
    if entry.done {
        return;
    }
    {
        let Ok(mut relaying) = fed.relaying.lock() else {
            return;
        };
        if !relaying.insert(entry.origin_run) {
            return;
        }
    }
    let (state, fed) = (state.clone(), fed.clone());
    tokio::spawn(async move {
        let mut after = 0;
        let mut delay = Duration::from_millis(100);
        loop {
            match relay(&state, &fed, &entry, &mut after).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(run = %entry.origin_run, error = %e, "relay interrupted; resuming");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Ok(mut relaying) = fed.relaying.lock() {
            relaying.remove(&entry.origin_run);
        }
    });
}

/// Follows the local journal from event `after + 1` and publishes each event, renamed to the
/// origin's run id, with `Nats-Msg-Id` `ev-<run>-<seq>`; the origin appends each once.
async fn relay(
    state: &AppState,
    fed: &Fed,
    entry: &InboundEntry,
    after: &mut u64,
) -> Result<(), BusError> {
    let mut journal = state
        .bus
        .follow_journal_after(&entry.tenant, &entry.local_run, *after)
        .await?;
    while let Some(item) = journal.next().await {
        let mut event = item?.event;
        if event.seq <= *after {
            continue;
        }
        let (seq, terminal) = (event.seq, event.data.is_terminal());
        event.run_id = entry.origin_run;
        super::answer::at_origin(&mut event.data, &entry.local_run, &entry.origin_run);
        state
            .bus
            .fed_publish(
                &entry.origin,
                FedKind::Event,
                &entry.tenant,
                &event,
                &format!("ev-{}-{seq}", entry.origin_run),
                None,
            )
            .await?;
        *after = seq;
        if terminal {
            let done = InboundEntry {
                done: true,
                ..entry.clone()
            };
            fed.fwd
                .put_as(&key::fwd_in(&entry.tenant, &entry.origin_run), &done)
                .await?;
            return Ok(());
        }
    }
    Err(BusError::Missing {
        kind: "journal follower",
        name: entry.local_run.to_string(),
    })
}
