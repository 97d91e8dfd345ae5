//! Agent definitions, stored in KV `agentos-agents` and snapshotted into each run request.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Envelope, HistoryLimit};
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
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Envelope for AgentSpec {
    const WHAT: &'static str = "agent";
}
