//! Run requests, continuations and the run record (the KV projection of a run's journal).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    AgentSpec, Approval, Claim, Envelope, ErrorBody, MultitaskStrategy, RequiredAction, Usage,
};
use crate::id::{AgentId, CallId, NodeId, RunId, Tenant, ThreadId};

/// A new run, published on `agentos.runs.<tenant>.submit` with `Nats-Msg-Id = run_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub run_id: RunId,
    pub tenant: Tenant,
    pub agent_id: AgentId,
    /// The agent as it was at submission; a direct publisher may omit it and the orchestrator
    /// loads the current definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
    pub input: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<ThreadId>,
    /// What to do when the thread is busy (runs with a `thread_id`; default `enqueue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multitask_strategy: Option<MultitaskStrategy>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub submitted_at: OffsetDateTime,
    /// A run still waiting in `requires_action` at this time ends `expired`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
}

impl RunRequest {
    /// The request of a run that started before, rebuilt from its record (an answer or a wake
    /// carries only the run's id). Its agent is the one `run.started` pinned (every run whose
    /// agent may wait pins it); a resumed run waits its turn on its thread, whatever its
    /// strategy.
    pub fn resumed(rec: &RunRecord) -> Self {
        Self {
            run_id: rec.id,
            tenant: rec.tenant.clone(),
            agent_id: rec.agent_id.clone(),
            agent: None,
            input: rec.input.clone(),
            thread_id: rec.thread_id.clone(),
            multitask_strategy: None,
            metadata: rec.metadata.clone(),
            submitted_at: rec.created_at,
            expires_at: rec.expires_at,
        }
    }
}

/// The answer to a run waiting in `requires_action`: an output for each client tool call, an
/// approval or rejection for each call that requires approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Continuation {
    pub run_id: RunId,
    pub tenant: Tenant,
    #[serde(default)]
    pub tool_outputs: Vec<ToolOutput>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

/// Look at a run again: a waiting run whose `expires_at` passed (a scheduled message), or one
/// a cancel was asked for. Harmless for a run that is not waiting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wake {
    pub run_id: RunId,
    pub tenant: Tenant,
    /// Tells wakes apart for deduplication.
    pub nonce: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolOutput {
    pub call_id: CallId,
    pub output: serde_json::Value,
}

/// What travels on the submit subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubmitMessage {
    Run(Box<RunRequest>),
    Continuation(Continuation),
    Wake(Wake),
}

impl Envelope for SubmitMessage {
    const WHAT: &'static str = "submit message";
}

impl SubmitMessage {
    pub fn run_id(&self) -> RunId {
        match self {
            Self::Run(r) => r.run_id,
            Self::Continuation(c) => c.run_id,
            Self::Wake(w) => w.run_id,
        }
    }

    pub fn tenant(&self) -> &Tenant {
        match self {
            Self::Run(r) => &r.tenant,
            Self::Continuation(c) => &c.tenant,
            Self::Wake(w) => &w.tenant,
        }
    }

    /// The `Nats-Msg-Id` it is submitted with. A run: its id. A continuation: the run id and a
    /// digest of its answers, so a client's retried answer is deduplicated and a different answer
    /// is not. A wake: its nonce.
    pub fn msg_id(&self) -> String {
        match self {
            Self::Run(r) => r.run_id.to_string(),
            Self::Continuation(c) => c.msg_id(),
            Self::Wake(w) => format!("{}:wake:{}", w.run_id, w.nonce),
        }
    }
}

impl Continuation {
    /// See [`SubmitMessage::msg_id`]; also names the answer that claimed a wait.
    pub fn msg_id(&self) -> String {
        // A retried answer serializes to the same bytes.
        let content =
            serde_json::to_vec(&(&self.tool_outputs, &self.approvals)).unwrap_or_default();
        let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &content);
        format!("{}:cont:{}", self.run_id, digest.simple())
    }
}

/// `queued → running → (requires_action ⇄ running) → completed | failed | cancelled | expired`;
/// `cancelling` is the window between a cancel request and the run acknowledging it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    RequiresAction,
    Cancelling,
    Completed,
    Failed,
    Cancelled,
    /// Waited in `requires_action` past its `expires_at`.
    Expired,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::RequiresAction => "requires_action",
            Self::Cancelling => "cancelling",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// The run record in KV `agentos-runs` under `<tenant>.<run_id>`: a projection of the journal
/// for fast reads and lists. The journal wins when they disagree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub tenant: Tenant,
    pub agent_id: AgentId,
    pub status: RunStatus,
    pub input: String,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub steps: u32,
    #[serde(default)]
    pub thread_id: Option<ThreadId>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Who created the run: the caller's `sub` for runs created through the edge,
    /// `nats:<tenant>` for runs published straight onto the bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The creator's roles when the run was created (none for direct NATS publishers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_by_roles: Vec<String>,
    /// Hash of the submitted body when an `Idempotency-Key` was used, to spot a reused key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// Why a cancel was asked for (`interrupted`, `rollback` by a multitask strategy); none for
    /// a client's cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// What a run in `requires_action` waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_action: Option<RequiredAction>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// The trace the run belongs to (W3C trace id, 32 hex digits), when traces are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The peer this run was forwarded to (federation); none for a run that lives here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Why a run is still in its status, when it says more than the status
    /// (`waiting_for_peer`: forwarded, the peer has not taken it yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The journal sequence this record reflects.
    #[serde(default)]
    pub last_seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl Envelope for RunRecord {
    const WHAT: &'static str = "run record";
}

impl RunRecord {
    /// Claims the wait `wait` for the answer `submission`: the first answer to claim a wait is
    /// the one its run resumes with, whoever claims it (the edge that took the answer, or the
    /// orchestrator that holds it).
    pub fn claim_answer(&mut self, wait: &RequiredAction, submission: &str) -> Claim {
        // A run that has moved past this wait (or ended) takes no answer for it: a driver
        // holding a stale journal must not write a wait back into the record (found by the
        // simulation).
        if self.status.is_terminal() || self.last_seq > wait.seq {
            return Claim::Moved;
        }
        match &mut self.required_action {
            Some(current) if current.seq == wait.seq => match &current.answered_by {
                Some(by) if by == submission => Claim::Ours,
                Some(_) => Claim::Taken,
                None => {
                    current.answered_by = Some(submission.to_owned());
                    Claim::Write
                }
            },
            _ => {
                self.required_action = Some(RequiredAction {
                    answered_by: Some(submission.to_owned()),
                    ..wait.clone()
                });
                Claim::Write
            }
        }
    }

    /// A fresh `queued` record for a request.
    pub fn queued(req: &RunRequest) -> Self {
        Self {
            id: req.run_id,
            tenant: req.tenant.clone(),
            agent_id: req.agent_id.clone(),
            status: RunStatus::Queued,
            input: req.input.clone(),
            output: None,
            error: None,
            usage: Usage::default(),
            steps: 0,
            thread_id: req.thread_id.clone(),
            metadata: req.metadata.clone(),
            created_by: None,
            created_by_roles: Vec::new(),
            request_hash: None,
            cancel_reason: None,
            required_action: None,
            expires_at: req.expires_at,
            // The trace of the request that creates the record (the edge's, or the run's first
            // delivery for direct publishers).
            trace_id: crate::trace::current_trace_id(),
            node: None,
            status_reason: None,
            last_seq: 0,
            created_at: req.submitted_at,
            updated_at: req.submitted_at,
            started_at: None,
            finished_at: None,
        }
    }
}
