//! `GET /v1/tools`: the tools the caller's tenant may use, as the workers serving them declare
//! them (NATS service discovery: each tool endpoint's `agentos.tool` metadata); and the
//! warnings an agent definition gets for naming a tool nobody serves right now.

use std::time::Duration;

use agentos_bus::TOOL_CACHE_TTL;
use agentos_bus::id::ToolName;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::error::ApiResult;
use crate::{AppState, AuthContext};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/tools", get(list))
}

/// One tool, as its worker declares it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ToolView {
    /// The tool name (1–4 dotted tokens), as agents list it in `tools`.
    pub name: String,
    /// Always `tool`.
    pub object: &'static str,
    pub description: String,
    /// The JSON Schema of the tool's arguments.
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    /// Whether running a call twice with the same arguments is harmless.
    pub idempotent: bool,
    /// How long one call may take, in milliseconds.
    pub timeout_ms: u64,
}

/// `GET /v1/tools` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ToolList {
    /// Always `list`.
    pub object: &'static str,
    /// By name.
    pub data: Vec<ToolView>,
}

/// List the tools the caller's tenant may use, with their argument schemas.
#[utoipa::path(get, path = "/v1/tools",
    responses((status = 200, description = "the tools served right now that the tenant's entitlements cover, by name", body = ToolList)))]
pub async fn list(State(state): State<AppState>, auth: AuthContext) -> ApiResult<Json<ToolList>> {
    let declared = state.tools.get(Duration::ZERO).await?;
    let tenant = state.tenants.get(&auth.tenant).await?;
    let data = declared
        .values()
        .filter(|t| {
            tenant
                .as_ref()
                .is_none_or(|r| r.entitlements.check_tool(t.name.as_str()).is_ok())
        })
        .map(|t| ToolView {
            name: t.name.to_string(),
            object: "tool",
            description: t.description.clone(),
            parameters: t.parameters.clone(),
            idempotent: t.idempotent,
            timeout_ms: t.timeout_ms,
        })
        .collect();
    Ok(Json(ToolList {
        object: "list",
        data,
    }))
}

/// Something about an accepted agent definition its author should know.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Warning {
    /// `tool_unavailable`: no worker serves `tool` right now; `approval_tool_not_listed`: `tool`
    /// requires approval but is not one of the agent's tools.
    pub code: &'static str,
    pub tool: String,
    pub message: String,
}

/// A warning for each of `tools` that nobody serves right now. An agent may be defined before
/// its workers start, so this never refuses; when discovery itself fails there are no warnings.
pub(crate) async fn unserved(state: &AppState, tools: &[ToolName]) -> Vec<Warning> {
    if tools.is_empty() {
        return Vec::new();
    }
    // A recent list that has them all will do; a tool missing from it is looked for right now.
    let mut declared = state.tools.get(TOOL_CACHE_TTL).await;
    if let Ok(d) = &declared
        && !tools.iter().all(|t| d.contains_key(t))
    {
        declared = state.tools.get(Duration::ZERO).await;
    }
    let declared = match declared {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "tool discovery failed; agent written without checking its tools");
            return Vec::new();
        }
    };
    tools
        .iter()
        .filter(|t| !declared.contains_key(*t))
        .map(|t| Warning {
            code: "tool_unavailable",
            tool: t.to_string(),
            message: format!(
                "no worker serves tool {t} right now; a run calling it fails that call with tool_unavailable until one does"
            ),
        })
        .collect()
}
