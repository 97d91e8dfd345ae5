//! Tool calls on `agentos.tool.<tenant>.<tool…>`: one request; any number of `progress` replies,
//! then one final reply. Documented for implementers in other languages in
//! `docs/bus-protocol.md`.

use serde::{Deserialize, Serialize};

use super::{Envelope, ErrorBody};
use crate::id::{CallId, Namespace, RunId, ToolName};

/// What a tool declares about itself, advertised by whoever serves it (as the `agentos.tool`
/// metadata of its NATS micro endpoint, see [`crate::TOOL_SPEC_KEY`]): the model is shown its
/// name, description and argument schema; the orchestrator validates arguments against the
/// schema before the call and waits at most `timeout_ms` for the reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: ToolName,
    /// What the tool does, for the model.
    pub description: String,
    /// The JSON Schema of the tool's arguments (an object schema).
    pub parameters: serde_json::Value,
    /// Whether running the call twice with the same arguments is harmless.
    #[serde(default)]
    pub idempotent: bool,
    /// How long one call may take.
    pub timeout_ms: u64,
}

impl Envelope for ToolSpec {
    const WHAT: &'static str = "tool spec";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolRequest {
    pub tool: ToolName,
    #[serde(default)]
    pub arguments: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    #[serde(default)]
    pub step: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<CallId>,
    /// `<run_id>:<step>:<call_id>`; a repeated key returns the recorded result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// How long the caller waits, so a tool can give up in time.
    pub timeout_ms: u64,
    /// True when the caller journaled `tool.started` for this key just before this request, so
    /// no earlier attempt can exist and the worker may skip looking for a recorded result.
    #[serde(default)]
    pub first_attempt: bool,
    /// The memory namespaces this call may touch (and those below them), resolved by the
    /// orchestrator from the agent's grants for this run. Only platform processes can publish
    /// on tool subjects, so a tool worker trusts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_namespaces: Vec<Namespace>,
}

impl Envelope for ToolRequest {
    const WHAT: &'static str = "tool request";
}

impl ToolRequest {
    /// The idempotency key for a call within a run.
    pub fn key_for(run: &RunId, step: u32, call: &CallId) -> String {
        format!("{run}:{step}:{call}")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ToolReply {
    Ok {
        output: serde_json::Value,
    },
    Error {
        error: ErrorBody,
        /// True when the tool did not run, so trying again is safe.
        #[serde(default)]
        retryable: bool,
    },
    /// The key is claimed by a call that is still running (this request did not run the tool):
    /// ask again after this long for its recorded reply.
    InProgress {
        retry_after_ms: u64,
    },
    /// Not final: how far the call has come (an MCP progress notification, say). A tool sends
    /// any number before its final reply; the caller journals each as `tool.progress`.
    Progress {
        progress: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

impl Envelope for ToolReply {
    const WHAT: &'static str = "tool reply";
}

impl ToolReply {
    /// Whether this reply ends the call (everything but `progress`).
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Progress { .. })
    }
}

/// A worker's claim on a call's key, stored in `agentos-tool-results` under the key before the
/// tool runs and replaced by its reply: a second request with the key meanwhile is answered
/// [`ToolReply::InProgress`] instead of running the tool again. A claim older than its lease
/// belongs to a worker that died; the next request takes it over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolClaim {
    #[serde(with = "time::serde::rfc3339")]
    pub claimed_at: time::OffsetDateTime,
    pub lease_ms: u64,
}

/// What `agentos-tool-results` holds under a call's key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolRecord {
    Replied(ToolReply),
    Claimed(ToolClaim),
}

impl Envelope for ToolRecord {
    const WHAT: &'static str = "tool result record";
}
