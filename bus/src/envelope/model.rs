//! Model calls on `agentos.model.<tenant>.<model>`: one request, then a stream of replies on the
//! reply inbox — zero or more `delta` and `tool_call_delta`, then exactly one `final` or `error`.

use serde::{Deserialize, Serialize};

use super::{Envelope, ErrorBody};
use crate::id::{CallId, RunId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<CallId>,
}

impl ChatMessage {
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool call the model asked for. `name` is the model's word: for an agent it must be one of
/// the agent's tools (a [`crate::id::ToolName`]); through the chat API it is any function name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCallSpec {
    pub id: CallId,
    pub name: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub parameters: serde_json::Value,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }

    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// The agent-loop step this call serves (1-based); scripted backends key on it.
    #[serde(default)]
    pub step: u32,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub tools: Vec<ToolDef>,
    /// Backend-specific settings from the agent definition.
    #[serde(default)]
    pub config: serde_json::Value,
    /// OpenAI request parameters passed through to the backend: `temperature`, `top_p`,
    /// `max_tokens`, `stop`, `seed`, `response_format`, `tool_choice`, … (validated at the edge).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub stream: bool,
}

impl Envelope for ModelRequest {
    const WHAT: &'static str = "model request";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelReply {
    Delta {
        text: String,
    },
    /// A fragment of a streamed tool call (OpenAI's `delta.tool_calls[i]`): the first fragment
    /// of call `index` carries `id` and `name`, later ones more `arguments` text.
    ToolCallDelta {
        index: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        arguments: String,
    },
    Final {
        message: ChatMessage,
        usage: Usage,
        finish_reason: String,
        /// True when the backend counted `usage` itself (the upstream reported none).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        usage_estimated: bool,
        /// The upstream's token log probabilities (OpenAI's `choices[0].logprobs`), when the
        /// request asked for them and the upstream sent them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprobs: Option<serde_json::Value>,
    },
    Error {
        error: ErrorBody,
    },
}

impl Envelope for ModelReply {
    const WHAT: &'static str = "model reply";
}
