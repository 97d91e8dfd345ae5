//! The origin's side of forwarding, and `GET /v1/federation/peers`.

use agentos_bus::Error as BusError;
use agentos_bus::envelope::{RunRecord, RunRequest, now};
use agentos_bus::federation::{ForwardCancel, ForwardRun, FwdEntry, FwdState, PeerRecord};
use agentos_bus::id::{AgentId, NodeId, RunId};
use agentos_bus::key;
use agentos_bus::subject::FedKind;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::{Fed, WAITING_FOR_PEER};
use crate::error::{ApiError, ApiResult};
use crate::runs::{CreateRun, MAX_INPUT_CHARS, RunView};
use crate::{AppState, AuthContext, events};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/federation/peers", get(peers))
}

fn fed(state: &AppState) -> ApiResult<&std::sync::Arc<Fed>> {
    state.federation.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "federation_disabled",
            "this cluster is not federated ([federation] node and peers)",
        )
    })
}

/// A peer as `GET /v1/federation/peers` shows it.
#[derive(Debug, Serialize)]
struct PeerView {
    node: String,
    version: String,
    protocol: agentos_bus::federation::ProtocolRange,
    /// `compatible`, or `incompatible` (no common protocol version: never used).
    status: &'static str,
    /// The version both speak, when compatible.
    protocol_version: Option<u32>,
    /// `up` while announcements arrive (within three of the peer's intervals), else `down`.
    link: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    last_seen: OffsetDateTime,
    /// Whether the caller's tenant may place runs on the peer (`[federation] tenant-peers`).
    allowed: bool,
    /// The caller's tenant's agents the peer serves (every `<tenant>/<agent>` for an admin).
    agents: Vec<String>,
    models: Vec<String>,
    tools: Vec<String>,
}

fn view(p: PeerRecord, auth: &AuthContext, fed: &Fed, at: OffsetDateTime) -> PeerView {
    let common = p.protocol_with(fed.config.protocol);
    let prefix = format!("{}/", auth.tenant);
    let agents = p
        .announcement
        .agents
        .iter()
        .filter_map(|a| {
            if auth.is_admin() {
                Some(a.clone())
            } else {
                a.strip_prefix(&prefix).map(str::to_owned)
            }
        })
        .collect();
    PeerView {
        node: p.announcement.node.to_string(),
        version: p.announcement.version.clone(),
        protocol: p.announcement.protocol,
        status: if common.is_some() {
            "compatible"
        } else {
            "incompatible"
        },
        protocol_version: common,
        link: if p.link_up(at) { "up" } else { "down" },
        last_seen: p.last_seen,
        allowed: fed
            .config
            .tenant_peers
            .allows(&auth.tenant, &p.announcement.node),
        agents,
        models: p.announcement.models.clone(),
        tools: p.announcement.tools.clone(),
    }
}

/// The peers this cluster knows: version, protocol, capabilities, link state, last seen.
#[utoipa::path(get, path = "/v1/federation/peers", responses((status = 200, description = "the peers (`data`) and this node (`node`)"), (status = 404, description = "federation_disabled")))]
pub(crate) async fn peers(
    State(state): State<AppState>,
    auth: AuthContext,
) -> ApiResult<Json<Value>> {
    let fed = fed(&state)?;
    let at = now();
    let data: Vec<PeerView> = fed
        .known_peers()
        .await?
        .into_iter()
        .map(|p| view(p, &auth, fed, at))
        .collect();
    Ok(Json(serde_json::json!({
        "object": "list",
        "node": fed.config.node,
        "data": data,
    })))
}

/// Whether `node` can take a run now: a known, compatible peer whose link is up.
pub(crate) async fn can_take(state: &AppState, node: &NodeId) -> ApiResult<bool> {
    let Some(fed) = state.federation.as_ref() else {
        return Ok(false);
    };
    Ok(fed
        .peer(node)
        .await?
        .is_some_and(|p| p.protocol_with(fed.config.protocol).is_some() && p.link_up(now())))
}

/// The peer that serves `agent` of the caller's tenant when this cluster does not: compatible,
/// allowed for the tenant, link up preferred. `None` when not federated or nobody does.
pub(crate) async fn auto_place(
    state: &AppState,
    auth: &AuthContext,
    agent: &AgentId,
) -> ApiResult<Option<NodeId>> {
    let Some(fed) = state.federation.as_ref() else {
        return Ok(None);
    };
    let wanted = format!("{}/{agent}", auth.tenant);
    let at = now();
    let mut serving: Vec<PeerRecord> = fed
        .known_peers()
        .await?
        .into_iter()
        .filter(|p| {
            p.protocol_with(fed.config.protocol).is_some()
                && p.announcement.agents.contains(&wanted)
                && fed
                    .config
                    .tenant_peers
                    .allows(&auth.tenant, &p.announcement.node)
        })
        .collect();
    serving.sort_by_key(|p| !p.link_up(at));
    Ok(serving.into_iter().next().map(|p| p.announcement.node))
}

/// Forwards a run to `node`: the record here (`queued`, `waiting_for_peer`, `node`), the
/// forward index entry, the run index entry, then the request into `AGENTOS_FED_OUT` with
/// `Nats-Msg-Id` = the run id and the caller's token. The peer sources it whenever the link is up.
pub(crate) async fn forward(
    state: &AppState,
    auth: &AuthContext,
    headers: &HeaderMap,
    body: &CreateRun,
    node: NodeId,
) -> ApiResult<Response> {
    let fed = fed(state)?;
    let peer = fed.peer(&node).await?.ok_or_else(|| {
        ApiError::not_found("peer_not_found", format!("no federation peer {node}"))
            .with_param("placement.node")
    })?;
    if !fed.config.tenant_peers.allows(&auth.tenant, &node) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "peer_not_allowed",
            format!(
                "tenant {} may not place runs on peer {node} ([federation] tenant-peers)",
                auth.tenant
            ),
        )
        .with_param("placement.node"));
    }
    let Some(protocol) = peer.protocol_with(fed.config.protocol) else {
        return Err(ApiError::conflict(
            "peer_incompatible",
            format!(
                "peer {node} speaks protocol {}-{}, this node {}-{}",
                peer.announcement.protocol.min,
                peer.announcement.protocol.max,
                fed.config.protocol.min,
                fed.config.protocol.max
            ),
        )
        .with_param("placement.node"));
    };
    if body.thread_id.is_some() || body.multitask_strategy.is_some() {
        return Err(ApiError::bad_request(
            "federation_unsupported",
            "threads and multitask strategies are not forwarded: a thread lives in one cluster",
        )
        .with_param(if body.thread_id.is_some() {
            "thread_id"
        } else {
            "multitask_strategy"
        }));
    }
    let submitted_at = now();
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|at| crate::runs::expiry(at, submitted_at))
        .transpose()?;
    let agent_id = AgentId::parse(body.agent_id.clone())
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param("agent_id"))?;
    if body.input.chars().count() > MAX_INPUT_CHARS {
        return Err(ApiError::bad_request(
            "input_too_large",
            format!("input is limited to {MAX_INPUT_CHARS} characters"),
        )
        .with_param("input"));
    }
    let token = auth.token.clone().ok_or_else(|| {
        ApiError::bad_request(
            "federation_needs_token",
            "a forwarded run carries the caller's bearer token; this edge has none",
        )
    })?;
    let run_id = match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) if !k.is_empty() && k.len() <= 255 => {
            crate::runs::idempotent_run_id(state, auth, k).await?
        }
        _ => RunId::new(),
    };
    let req = RunRequest {
        run_id,
        tenant: auth.tenant.clone(),
        agent_id,
        agent: None,
        input: body.input.clone(),
        thread_id: None,
        multitask_strategy: None,
        metadata: body.metadata.clone(),
        submitted_at,
        expires_at,
    };
    let mut record = RunRecord::queued(&req);
    record.node = Some(node.clone());
    record.status_reason = Some(WAITING_FOR_PEER.to_owned());
    record.created_by = Some(auth.subject.clone());
    record.created_by_roles.clone_from(&auth.roles);
    let run_key = key::run(&auth.tenant, &run_id);
    let (status, record) = match state.runs.create_as(&run_key, &record).await {
        Ok(_) => (StatusCode::CREATED, record),
        Err(BusError::AlreadyExists { .. }) => (
            StatusCode::OK,
            crate::runs::load(state, auth, &run_id).await?.value,
        ),
        Err(e) => return Err(e.into()),
    };
    let entry = FwdEntry {
        node: node.clone(),
        tenant: auth.tenant.clone(),
        run_id,
        state: FwdState::Pending,
        created_at: record.created_at,
    };
    match fed
        .fwd
        .create_as(&key::fwd_out(&auth.tenant, &run_id), &entry)
        .await
    {
        Ok(_) | Err(BusError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if status == StatusCode::CREATED {
        state
            .bus
            .index_run(&auth.tenant, &record.agent_id, &run_id)
            .await?
            .stored()
            .await?;
    }
    let msg = ForwardRun {
        origin: fed.config.node.clone(),
        protocol,
        request: req,
    };
    state
        .bus
        .fed_publish(
            &node,
            FedKind::Run,
            &auth.tenant,
            &msg,
            &run_id.to_string(),
            Some(&token),
        )
        .await?;
    tracing::info!(run = %run_id, tenant = %auth.tenant, %node, "run forwarded");
    if status == StatusCode::CREATED {
        let details = serde_json::json!({"agent_id": record.agent_id, "node": node});
        crate::admin::record_committed(state, auth, "run.create", run_id.to_string(), details)
            .await;
    }
    if body.stream {
        return events::sse(state, auth, run_id, 0).await;
    }
    Ok((status, Json(RunView::from(record))).into_response())
}

/// Refuses before anything changes when this edge cannot reach the peers (a run forwarded while
/// federation was on, cancelled after it was turned off).
pub(crate) fn ensure_enabled(state: &AppState) -> ApiResult<()> {
    fed(state).map(|_| ())
}

/// Sends the cancel of a forwarded run to the peer that runs it, once the origin's record shows
/// `cancelling`; the peer's `run.cancelled` comes back like any other event.
pub(crate) async fn forward_cancel(
    state: &AppState,
    auth: &AuthContext,
    id: RunId,
    node: &NodeId,
) -> ApiResult<()> {
    let msg = ForwardCancel {
        origin: fed(state)?.config.node.clone(),
        run_id: id,
        tenant: auth.tenant.clone(),
    };
    state
        .bus
        .fed_publish(
            node,
            FedKind::Cancel,
            &auth.tenant,
            &msg,
            &format!("cancel-{id}"),
            auth.token.as_deref(),
        )
        .await?;
    tracing::info!(run = %id, %node, "cancel forwarded");
    Ok(())
}
