//! Agent definitions, stored in KV `agentos-agents` and snapshotted into each run request.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ActionKind, Envelope, HistoryLimit, ToolDef};
use crate::grant::AgentMemory;
use crate::id::{AgentId, ModelName, Tenant, ToolName};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub id: AgentId,
    pub tenant: Tenant,
    pub model: ModelName,
    #[serde(default)]
    pub instructions: String,
    #[serde(default)]
    pub tools: Vec<ToolName>,
    pub max_steps: u32,
    /// Backend-specific settings (for `scripted`: `{"script": [...]}`).
    #[serde(default)]
    pub model_config: serde_json::Value,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The memory namespaces its runs may touch through the memory tools.
    #[serde(default, skip_serializing_if = "AgentMemory::is_empty")]
    pub memory: AgentMemory,
    /// How much of a thread's history its runs see.
    #[serde(default)]
    pub history: HistoryLimit,
    /// Tools the caller implements: a call makes the run wait in `requires_action` for its
    /// output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_tools: Vec<ClientTool>,
    /// Server tools (among `tools`) whose calls wait for the caller's approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires_approval: Vec<ToolName>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Envelope for AgentSpec {
    const WHAT: &'static str = "agent";
}

/// A tool with no server implementation: its calls are answered by the run's caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTool {
    pub name: ToolName,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of its arguments.
    #[serde(default = "any_object")]
    pub parameters: serde_json::Value,
}

fn any_object() -> serde_json::Value {
    serde_json::json!({"type": "object"})
}

impl ClientTool {
    /// As the model is shown it.
    pub fn def(&self) -> ToolDef {
        ToolDef {
            name: self.name.to_string(),
            description: self.description.clone(),
            parameters: self.parameters.clone(),
        }
    }
}

impl AgentSpec {
    /// Whether a call of the tool `name` waits for the caller, and why.
    pub fn action_for(&self, name: &str) -> Option<ActionKind> {
        if self.client_tools.iter().any(|t| t.name.as_str() == name) {
            Some(ActionKind::ClientTool)
        } else if self.requires_approval.iter().any(|t| t.as_str() == name) {
            Some(ActionKind::Approval)
        } else {
            None
        }
    }

    /// Whether its runs can wait in `requires_action`.
    pub fn may_wait(&self) -> bool {
        !self.client_tools.is_empty() || !self.requires_approval.is_empty()
    }
}
