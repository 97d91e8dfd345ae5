//! Run events: the journal. Every event is `{seq, type, run_id, tenant, ts, data}`; `seq` counts
//! from 1 within a run and is the SSE `id:`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{AgentSpec, Answer, ChatMessage, Envelope, ErrorBody, PendingCall, Usage};
use crate::id::{AgentId, CallId, RunId, Tenant, ToolName};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub run_id: RunId,
    pub tenant: Tenant,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    /// The run's trace (W3C trace id, 32 hex digits), when traces are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(flatten)]
    pub data: EventData,
}

impl Envelope for Event {
    const WHAT: &'static str = "event";
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        self.data.type_name()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventData {
    #[serde(rename = "run.created")]
    RunCreated { agent_id: AgentId, input: String },
    /// `agent` pins the definition of a run submitted without one (published straight onto the
    /// bus), so that editing the agent mid-run changes nothing; absent when the request carried
    /// its own snapshot.
    #[serde(rename = "run.started")]
    RunStarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<Box<AgentSpec>>,
    },
    /// The thread's earlier messages this run sends its model, loaded once before step 1.
    #[serde(rename = "thread.history")]
    ThreadHistory { messages: Vec<ChatMessage> },
    /// The thread's history was longer than the agent's bound: `omitted` older messages are left
    /// out, `kept` are sent.
    #[serde(rename = "thread.history_truncated")]
    ThreadHistoryTruncated {
        omitted: u32,
        kept: u32,
        limit: super::HistoryLimit,
    },
    #[serde(rename = "step.started")]
    StepStarted { step: u32 },
    #[serde(rename = "model.delta")]
    ModelDelta { step: u32, text: String },
    #[serde(rename = "model.completed")]
    ModelCompleted {
        step: u32,
        message: ChatMessage,
        usage: Usage,
    },
    #[serde(rename = "tool.started")]
    ToolStarted {
        step: u32,
        call_id: CallId,
        name: ToolName,
        arguments: serde_json::Value,
    },
    #[serde(rename = "tool.completed")]
    ToolCompleted {
        step: u32,
        call_id: CallId,
        name: ToolName,
        output: serde_json::Value,
    },
    /// A started call's progress, as its tool reported it (any number between `tool.started`
    /// and the call's result; informational: a resumed run ignores them).
    #[serde(rename = "tool.progress")]
    ToolProgress {
        step: u32,
        call_id: CallId,
        name: ToolName,
        progress: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// `name` is what the model asked for, which may not be a valid tool name at all.
    #[serde(rename = "tool.failed")]
    ToolFailed {
        step: u32,
        call_id: CallId,
        name: String,
        error: ErrorBody,
    },
    /// The run waits for its caller: an output for each client tool call, a decision on each
    /// call that requires approval (until `expires_at`, when given).
    #[serde(rename = "run.requires_action")]
    RunRequiresAction {
        step: u32,
        tool_calls: Vec<PendingCall>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        expires_at: Option<OffsetDateTime>,
    },
    /// The answer the run resumes with, one per pending call; `submission` is the message id of
    /// the continuation that carried it.
    #[serde(rename = "run.action_answered")]
    RunActionAnswered {
        step: u32,
        answers: Vec<Answer>,
        submission: String,
    },
    #[serde(rename = "run.completed")]
    RunCompleted { output: String, usage: Usage },
    #[serde(rename = "run.failed")]
    RunFailed { error: ErrorBody },
    #[serde(rename = "run.cancelled")]
    RunCancelled { reason: String },
    /// Nobody answered `run.requires_action` before the run's `expires_at`.
    #[serde(rename = "run.expired")]
    RunExpired {
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
}

impl EventData {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::RunCreated { .. } => "run.created",
            Self::RunStarted { .. } => "run.started",
            Self::ThreadHistory { .. } => "thread.history",
            Self::ThreadHistoryTruncated { .. } => "thread.history_truncated",
            Self::StepStarted { .. } => "step.started",
            Self::ModelDelta { .. } => "model.delta",
            Self::ModelCompleted { .. } => "model.completed",
            Self::ToolStarted { .. } => "tool.started",
            Self::ToolProgress { .. } => "tool.progress",
            Self::ToolCompleted { .. } => "tool.completed",
            Self::ToolFailed { .. } => "tool.failed",
            Self::RunRequiresAction { .. } => "run.requires_action",
            Self::RunActionAnswered { .. } => "run.action_answered",
            Self::RunExpired { .. } => "run.expired",
            Self::RunCompleted { .. } => "run.completed",
            Self::RunFailed { .. } => "run.failed",
            Self::RunCancelled { .. } => "run.cancelled",
        }
    }

    /// The last event of a run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::RunCompleted { .. }
                | Self::RunFailed { .. }
                | Self::RunCancelled { .. }
                | Self::RunExpired { .. }
        )
    }
}
