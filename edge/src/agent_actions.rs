//! What in an agent's definition makes its runs wait for the caller: client tools (declared
//! here, implemented by the caller) and the server tools whose calls need approval.

use agentos_bus::envelope::{AgentSpec, ClientTool};
use agentos_bus::id::ToolName;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// Most client tools one agent declares.
const MAX_CLIENT_TOOLS: usize = 64;

/// A client tool as a client writes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientToolBody {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}(\.[a-z0-9][a-z0-9_-]{0,62}){0,3}$")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments (default: any object).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
}

pub(crate) fn client_tools(body: Vec<ClientToolBody>) -> ApiResult<Vec<ClientTool>> {
    if body.len() > MAX_CLIENT_TOOLS {
        return Err(invalid(
            "client_tools",
            format!("at most {MAX_CLIENT_TOOLS} client tools"),
        ));
    }
    body.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let name = ToolName::parse(t.name)
                .map_err(|e| invalid(&format!("client_tools[{i}].name"), e.to_string()))?;
            let parameters = t
                .parameters
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            if let Err(e) = jsonschema::validator_for(&parameters) {
                return Err(invalid(
                    &format!("client_tools[{i}].parameters"),
                    format!("not a valid JSON Schema: {e}"),
                ));
            }
            Ok(ClientTool {
                name,
                description: t.description,
                parameters,
            })
        })
        .collect()
}

pub(crate) fn requires_approval(names: Vec<String>) -> ApiResult<Vec<ToolName>> {
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            ToolName::parse(n)
                .map_err(|e| invalid(&format!("requires_approval[{i}]"), e.to_string()))
        })
        .collect()
}

/// The definition as a whole: client tool names are unique and no server tool's; every tool
/// that requires approval is one of the agent's tools.
pub(crate) fn check(spec: &AgentSpec) -> ApiResult<()> {
    for (i, t) in spec.client_tools.iter().enumerate() {
        if spec.tools.contains(&t.name) {
            return Err(invalid(
                &format!("client_tools[{i}].name"),
                format!("{} is also a server tool of the agent", t.name),
            ));
        }
        if spec.client_tools[..i].iter().any(|o| o.name == t.name) {
            return Err(invalid(
                &format!("client_tools[{i}].name"),
                format!("client tool {} is declared twice", t.name),
            ));
        }
    }
    for (i, name) in spec.requires_approval.iter().enumerate() {
        if !spec.tools.contains(name) {
            return Err(invalid(
                &format!("requires_approval[{i}]"),
                format!("{name} is not one of the agent's tools"),
            ));
        }
    }
    Ok(())
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_agent", message).with_param(param)
}
