//! What in an agent's definition makes its runs wait for the caller: client tools (declared
//! here, implemented by the caller) and the server tools whose calls need approval.

use agentos_bus::envelope::{AgentSpec, ClientTool};
use agentos_bus::id::ToolName;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::tools::Warning;

/// Most client tools one agent declares.
pub(crate) const MAX_CLIENT_TOOLS: usize = 64;

/// A client tool as a client writes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientToolBody {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}(\.[a-z0-9][a-z0-9_-]{0,62}){0,3}$")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments, an object (default: any object).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
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
                .map_or_else(|| serde_json::json!({"type": "object"}), Value::Object);
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

/// The definition as a whole. Client tool names are unique and no server tool's: a clash is
/// `409 tool_name_conflict` (a rule between entries that JSON Schema cannot state, so not a
/// `400` of the request's shape). A tool that requires approval but is not one of the agent's
/// tools can never be called: the agent is stored with a warning.
pub(crate) fn check(spec: &AgentSpec) -> ApiResult<Vec<Warning>> {
    for (i, t) in spec.client_tools.iter().enumerate() {
        let clash = if spec.tools.contains(&t.name) {
            format!("{} is also a server tool of the agent", t.name)
        } else if spec.client_tools[..i].iter().any(|o| o.name == t.name) {
            format!("client tool {} is declared twice", t.name)
        } else {
            continue;
        };
        return Err(ApiError::conflict("tool_name_conflict", clash)
            .with_param(format!("client_tools[{i}].name")));
    }
    Ok(spec
        .requires_approval
        .iter()
        .filter(|name| !spec.tools.contains(name))
        .map(|name| Warning {
            code: "approval_tool_not_listed",
            tool: name.to_string(),
            message: format!(
                "{name} requires approval but is not one of the agent's tools, so it is never called"
            ),
        })
        .collect())
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_agent", message).with_param(param)
}
