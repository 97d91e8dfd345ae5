//! Agent definitions: `/v1/agents`. Stored in KV `agentos-agents` under `<tenant>.<agent_id>`.

use agentos_bus::Error as BusError;
use agentos_bus::envelope::{AgentSpec, HistoryLimit, now};
use agentos_bus::grant::{AgentMemory, NamespaceTemplate};
use agentos_bus::id::{AgentId, ModelName, ToolName};
use agentos_bus::key::{self, Key};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::agent_actions::{self, ClientToolBody};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::tools::Warning;
use crate::{AppState, AuthContext};

pub const DEFAULT_MAX_STEPS: u32 = 10;
pub const MAX_STEPS_LIMIT: u32 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agents", get(list).post(create))
        .route("/v1/agents/{id}", get(read).patch(update).delete(remove))
}

/// `POST /v1/agents` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// Token `[a-z0-9][a-z0-9_-]{0,62}`; generated when absent.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub id: Option<String>,
    pub model: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[schema(minimum = 1, maximum = 100)]
    pub max_steps: Option<u32>,
    #[serde(default)]
    pub model_config: Value,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Memory namespaces its runs may use through the memory tools.
    pub memory: Option<MemoryBody>,
    /// How much of a thread's history a run sees: `{max_messages = 100, max_tokens?}`.
    #[schema(value_type = Option<Object>)]
    pub history: Option<HistoryBody>,
    /// Tools the caller implements: a call makes the run wait in `requires_action`.
    #[serde(default)]
    pub client_tools: Vec<ClientToolBody>,
    /// Tools (among `tools`) whose calls wait for the caller's approval.
    #[serde(default)]
    pub requires_approval: Vec<String>,
}

/// The history bound as a client writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryBody {
    pub max_messages: Option<u32>,
    pub max_tokens: Option<u32>,
}

/// Most messages a run may take from its thread.
pub const MAX_HISTORY_MESSAGES: u32 = 10_000;

fn history(body: Option<HistoryBody>) -> ApiResult<HistoryLimit> {
    let Some(body) = body else {
        return Ok(HistoryLimit::default());
    };
    let max_messages = body
        .max_messages
        .unwrap_or(HistoryLimit::DEFAULT_MAX_MESSAGES);
    if max_messages > MAX_HISTORY_MESSAGES {
        return Err(ApiError::bad_request(
            "invalid_history",
            format!("history.max_messages must be 0..={MAX_HISTORY_MESSAGES}"),
        )
        .with_param("history.max_messages"));
    }
    if body.max_tokens == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_history",
            "history.max_tokens must be at least 1",
        )
        .with_param("history.max_tokens"));
    }
    Ok(HistoryLimit {
        max_messages,
        max_tokens: body.max_tokens,
    })
}

/// `memory` of an agent: namespace templates (`users.{principal}`, `{thread}`, `shared.faq`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryBody {
    pub namespaces: Vec<String>,
}

/// Most namespace templates one agent grants.
pub(crate) const MAX_GRANTS: usize = 32;

fn memory(body: Option<MemoryBody>) -> ApiResult<AgentMemory> {
    let Some(body) = body else {
        return Ok(AgentMemory::default());
    };
    if body.namespaces.len() > MAX_GRANTS {
        return Err(ApiError::bad_request(
            "invalid_memory_namespace",
            format!("at most {MAX_GRANTS} namespaces"),
        )
        .with_param("memory.namespaces"));
    }
    let namespaces = body
        .namespaces
        .into_iter()
        .map(|n| {
            NamespaceTemplate::parse(n).map_err(|e| {
                ApiError::bad_request("invalid_memory_namespace", e.to_string())
                    .with_param("memory.namespaces")
            })
        })
        .collect::<ApiResult<_>>()?;
    Ok(AgentMemory { namespaces })
}

/// `PATCH /v1/agents/{id}` body: fields to replace.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    pub model: Option<String>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 100)]
    pub max_steps: Option<u32>,
    pub model_config: Option<Value>,
    pub metadata: Option<Map<String, Value>>,
    pub memory: Option<MemoryBody>,
    #[schema(value_type = Option<Object>)]
    pub history: Option<HistoryBody>,
    pub client_tools: Option<Vec<ClientToolBody>>,
    pub requires_approval: Option<Vec<String>>,
}

/// An agent as written by `POST` and `PATCH`: the definition, and what its author should know.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentWritten {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub agent: AgentSpec,
    /// Present when there is something to warn about: a tool nobody serves right now
    /// (`tool_unavailable`), a tool that requires approval but is not among `tools`
    /// (`approval_tool_not_listed`). The agent is stored all the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

impl AgentWritten {
    async fn new(state: &AppState, agent: AgentSpec, mut warnings: Vec<Warning>) -> Self {
        warnings.extend(crate::tools::unserved(state, &agent.tools).await);
        Self { agent, warnings }
    }
}

fn param<T>(r: agentos_bus::Result<T>, name: &str) -> ApiResult<T> {
    r.map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param(name))
}

fn tools(names: Vec<String>) -> ApiResult<Vec<ToolName>> {
    names
        .into_iter()
        .map(|n| param(ToolName::parse(n), "tools"))
        .collect()
}

/// Metadata within the bounds threads have (at most 16 keys of at most 64 characters).
fn metadata(m: Map<String, Value>) -> ApiResult<Map<String, Value>> {
    crate::threads::check_metadata(&m)?;
    Ok(m)
}

fn max_steps(n: Option<u32>) -> ApiResult<u32> {
    match n.unwrap_or(DEFAULT_MAX_STEPS) {
        n @ 1..=MAX_STEPS_LIMIT => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_max_steps",
            format!("max_steps must be 1..={MAX_STEPS_LIMIT}"),
        )
        .with_param("max_steps")),
    }
}

pub(crate) fn agent_key(auth: &AuthContext, id: &AgentId) -> Key {
    key::agent(&auth.tenant, id)
}

pub(crate) async fn load(
    state: &AppState,
    auth: &AuthContext,
    id: &AgentId,
) -> ApiResult<agentos_bus::Versioned<AgentSpec>> {
    state
        .agents
        .get_as::<AgentSpec>(&agent_key(auth, id))
        .await?
        .ok_or_else(|| {
            ApiError::not_found("agent_not_found", format!("no agent {id}")).with_param("agent_id")
        })
}

fn parse_id(id: String) -> ApiResult<AgentId> {
    param(AgentId::parse(id), "id")
}

/// Create an agent.
#[utoipa::path(post, path = "/v1/agents", request_body = CreateAgent,
    responses((status = 201, description = "created; `warnings` names tools nobody serves right now", body = AgentWritten), (status = 409, description = "id taken")))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    ApiJson(body): ApiJson<CreateAgent>,
) -> ApiResult<(StatusCode, Json<AgentWritten>)> {
    let id = match body.id {
        Some(id) => parse_id(id)?,
        None => parse_id(format!(
            "agent-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ))?,
    };
    let ts = now();
    let spec = AgentSpec {
        id,
        tenant: auth.tenant.clone(),
        model: param(ModelName::parse(body.model), "model")?,
        instructions: body.instructions,
        tools: tools(body.tools)?,
        max_steps: max_steps(body.max_steps)?,
        model_config: body.model_config,
        metadata: metadata(body.metadata)?,
        memory: memory(body.memory)?,
        history: history(body.history)?,
        client_tools: agent_actions::client_tools(body.client_tools)?,
        requires_approval: agent_actions::requires_approval(body.requires_approval)?,
        created_at: ts,
        updated_at: ts,
    };
    let warnings = agent_actions::check(&spec)?;
    match state
        .agents
        .create_as(&agent_key(&auth, &spec.id), &spec)
        .await
    {
        Ok(_) => Ok((
            StatusCode::CREATED,
            Json(AgentWritten::new(&state, spec, warnings).await),
        )),
        Err(BusError::AlreadyExists { .. }) => Err(ApiError::conflict(
            "agent_exists",
            format!("agent {} already exists", spec.id),
        )
        .with_param("id")),
        Err(e) => Err(e.into()),
    }
}

/// List the caller's agents.
#[utoipa::path(get, path = "/v1/agents", responses((status = 200, description = "the agents", body = Object)))]
pub async fn list(State(state): State<AppState>, auth: AuthContext) -> ApiResult<Json<Value>> {
    let mut keys = state.agents.keys(&auth.tenant).await?;
    keys.sort();
    let mut data = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(a) = state.agents.get_as::<AgentSpec>(&key).await? {
            data.push(a.value);
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// Read an agent.
#[utoipa::path(get, path = "/v1/agents/{id}", params(("id" = String, Path)), responses((status = 200, description = "the agent", body = Object), (status = 404, description = "not found")))]
pub async fn read(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentSpec>> {
    Ok(Json(load(&state, &auth, &parse_id(id)?).await?.value))
}

/// Update an agent (compare-and-set on its revision).
#[utoipa::path(patch, path = "/v1/agents/{id}", params(("id" = String, Path)), request_body = UpdateAgent, responses((status = 200, description = "updated; `warnings` names tools nobody serves right now", body = AgentWritten)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateAgent>,
) -> ApiResult<Json<AgentWritten>> {
    let id = parse_id(id)?;
    let current = load(&state, &auth, &id).await?;
    let mut spec = current.value;
    if let Some(m) = body.model {
        spec.model = param(ModelName::parse(m), "model")?;
    }
    if let Some(i) = body.instructions {
        spec.instructions = i;
    }
    if let Some(t) = body.tools {
        spec.tools = tools(t)?;
    }
    if body.max_steps.is_some() {
        spec.max_steps = max_steps(body.max_steps)?;
    }
    if let Some(c) = body.model_config {
        spec.model_config = c;
    }
    if let Some(m) = body.metadata {
        spec.metadata = metadata(m)?;
    }
    if body.memory.is_some() {
        spec.memory = memory(body.memory)?;
    }
    if body.history.is_some() {
        spec.history = history(body.history)?;
    }
    if let Some(c) = body.client_tools {
        spec.client_tools = agent_actions::client_tools(c)?;
    }
    if let Some(r) = body.requires_approval {
        spec.requires_approval = agent_actions::requires_approval(r)?;
    }
    let warnings = agent_actions::check(&spec)?;
    spec.updated_at = now();
    match state
        .agents
        .update_as(&agent_key(&auth, &id), &spec, current.revision)
        .await
    {
        Ok(_) => Ok(Json(AgentWritten::new(&state, spec, warnings).await)),
        Err(BusError::WrongRevision { .. }) => Err(ApiError::conflict(
            "concurrent_update",
            "the agent changed meanwhile; retry",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Delete an agent. Runs already submitted keep their snapshot.
#[utoipa::path(delete, path = "/v1/agents/{id}", params(("id" = String, Path)), responses((status = 200, description = "deleted")))]
pub async fn remove(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(id)?;
    load(&state, &auth, &id).await?;
    state.agents.delete(&agent_key(&auth, &id)).await?;
    Ok(Json(
        json!({"id": id, "object": "agent.deleted", "deleted": true}),
    ))
}
