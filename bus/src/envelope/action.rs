//! Human in the loop: a run that needs an answer from outside. When the model calls a client
//! tool (declared in the agent, implemented by the caller) or a server tool that requires
//! approval, the run journals `run.requires_action` with the pending calls and waits in
//! JetStream, holding nothing. An answer arrives as a [`super::Continuation`]; it is checked
//! against the pending calls here, by the edge and again by the orchestrator, and journaled whole
//! as `run.action_answered`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Continuation;
use crate::id::CallId;

/// Why a call waits for the outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// A client tool: the caller runs it and sends its output.
    ClientTool,
    /// A server tool marked `requires_approval`: the caller approves (optionally with edited
    /// arguments) or rejects it.
    Approval,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientTool => "client_tool",
            Self::Approval => "approval",
        }
    }
}

/// One call the run waits on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingCall {
    pub call_id: CallId,
    pub name: String,
    pub arguments: serde_json::Value,
    pub kind: ActionKind,
}

/// What a waiting run needs, as its record shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequiredAction {
    pub step: u32,
    pub tool_calls: Vec<PendingCall>,
    /// The journal sequence of the `run.requires_action` event.
    pub seq: u64,
    /// The submission (a continuation's [`super::SubmitMessage::msg_id`]) that claimed this wait:
    /// the first answer to claim it is the one the run resumes with, a different one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

/// One answer, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// A client tool's output.
    Output {
        call_id: CallId,
        output: serde_json::Value,
    },
    /// An approved call; `arguments` replaces the model's when given.
    Approved {
        call_id: CallId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arguments: Option<serde_json::Value>,
    },
    /// A rejected call: the model sees it as the tool's error.
    Rejected {
        call_id: CallId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl Answer {
    pub fn call_id(&self) -> &CallId {
        match self {
            Self::Output { call_id, .. }
            | Self::Approved { call_id, .. }
            | Self::Rejected { call_id, .. } => call_id,
        }
    }
}

/// A caller's decision on a call that requires approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub call_id: CallId,
    pub approve: bool,
    /// Replaces the model's arguments (approvals only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// Told to the model when the call is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why an answer does not fit the wait. `index` and `field` locate the offending entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("{field}[{index}]: the run waits on no call {call_id}")]
    UnknownCall {
        field: &'static str,
        index: usize,
        call_id: String,
    },
    #[error("{field}[{index}]: call {call_id} is answered twice")]
    Duplicate {
        field: &'static str,
        index: usize,
        call_id: String,
    },
    #[error("{field}[{index}]: call {call_id} needs {needs}, not {field}")]
    WrongKind {
        field: &'static str,
        index: usize,
        call_id: String,
        needs: &'static str,
    },
    #[error("{field}[{index}]: `arguments` is only for approved calls")]
    ArgumentsOnRejection { field: &'static str, index: usize },
    #[error("no answer for call(s) {}", .0.join(", "))]
    Missing(Vec<String>),
}

impl AnswerError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownCall { .. } => "unknown_call_id",
            Self::Duplicate { .. } => "duplicate_call_id",
            Self::WrongKind { .. } => "wrong_answer_kind",
            Self::ArgumentsOnRejection { .. } => "invalid_approval",
            Self::Missing(_) => "missing_tool_outputs",
        }
    }

    /// The request field at fault, as `tool_outputs[2].call_id`.
    pub fn param(&self) -> Option<String> {
        match self {
            Self::UnknownCall { field, index, .. }
            | Self::Duplicate { field, index, .. }
            | Self::WrongKind { field, index, .. } => Some(format!("{field}[{index}].call_id")),
            Self::ArgumentsOnRejection { field, index } => {
                Some(format!("{field}[{index}].arguments"))
            }
            Self::Missing(_) => Some("tool_outputs".into()),
        }
    }
}

impl RequiredAction {
    /// The answers a continuation gives, in the order of the pending calls, if it answers every
    /// pending call exactly once and each the way its kind needs.
    pub fn answers(&self, c: &Continuation) -> Result<Vec<Answer>, AnswerError> {
        let kinds: HashMap<&CallId, ActionKind> = self
            .tool_calls
            .iter()
            .map(|p| (&p.call_id, p.kind))
            .collect();
        let mut given: HashMap<CallId, Answer> = HashMap::new();
        let mut seen = HashSet::new();
        let mut check = |field: &'static str,
                         index: usize,
                         call_id: &CallId,
                         needs: ActionKind|
         -> Result<(), AnswerError> {
            let Some(kind) = kinds.get(call_id) else {
                return Err(AnswerError::UnknownCall {
                    field,
                    index,
                    call_id: call_id.to_string(),
                });
            };
            if !seen.insert(call_id.clone()) {
                return Err(AnswerError::Duplicate {
                    field,
                    index,
                    call_id: call_id.to_string(),
                });
            }
            if *kind != needs {
                return Err(AnswerError::WrongKind {
                    field,
                    index,
                    call_id: call_id.to_string(),
                    needs: match kind {
                        ActionKind::ClientTool => "a tool output",
                        ActionKind::Approval => "an approval",
                    },
                });
            }
            Ok(())
        };
        for (i, o) in c.tool_outputs.iter().enumerate() {
            check("tool_outputs", i, &o.call_id, ActionKind::ClientTool)?;
            given.insert(
                o.call_id.clone(),
                Answer::Output {
                    call_id: o.call_id.clone(),
                    output: o.output.clone(),
                },
            );
        }
        for (i, a) in c.approvals.iter().enumerate() {
            check("approvals", i, &a.call_id, ActionKind::Approval)?;
            let answer = if a.approve {
                Answer::Approved {
                    call_id: a.call_id.clone(),
                    arguments: a.arguments.clone(),
                }
            } else {
                if a.arguments.is_some() {
                    return Err(AnswerError::ArgumentsOnRejection {
                        field: "approvals",
                        index: i,
                    });
                }
                Answer::Rejected {
                    call_id: a.call_id.clone(),
                    reason: a.reason.clone(),
                }
            };
            given.insert(a.call_id.clone(), answer);
        }
        let missing: Vec<String> = self
            .tool_calls
            .iter()
            .filter(|p| !given.contains_key(&p.call_id))
            .map(|p| p.call_id.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(AnswerError::Missing(missing));
        }
        Ok(self
            .tool_calls
            .iter()
            .filter_map(|p| given.remove(&p.call_id))
            .collect())
    }
}

/// How claiming a wait for an answer went (see [`super::RunRecord::claim_answer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Claimed now: write the record (compare-and-set) to make it stick.
    Write,
    /// This submission had claimed it already.
    Ours,
    /// Another answer claimed it first.
    Taken,
    /// The run is past this wait (answered and resumed, or ended): read its journal again.
    Moved,
}

/// How far from submission a run's `expires_at` may be: the run queue's age limit, which the
/// expiry timer lives under. A run without `expires_at` waits as long as it takes.
pub const MAX_EXPIRY: time::Duration = time::Duration::days(7);

/// Whether `expires_at` has passed at `now`.
pub fn expired(expires_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ToolOutput;
    use serde_json::json;

    fn call(id: &str, kind: ActionKind) -> PendingCall {
        PendingCall {
            call_id: CallId::parse(id).expect("id"),
            name: "t".into(),
            arguments: json!({}),
            kind,
        }
    }

    fn wait() -> RequiredAction {
        RequiredAction {
            step: 1,
            tool_calls: vec![
                call("c1", ActionKind::ClientTool),
                call("c2", ActionKind::Approval),
            ],
            seq: 5,
            answered_by: None,
        }
    }

    fn cont(outputs: &[&str], approvals: &[(&str, bool)]) -> Continuation {
        Continuation {
            run_id: crate::id::RunId::new(),
            tenant: "t".parse().expect("tenant"),
            tool_outputs: outputs
                .iter()
                .map(|id| ToolOutput {
                    call_id: CallId::parse(*id).expect("id"),
                    output: json!("x"),
                })
                .collect(),
            approvals: approvals
                .iter()
                .map(|(id, approve)| Approval {
                    call_id: CallId::parse(*id).expect("id"),
                    approve: *approve,
                    arguments: None,
                    reason: None,
                })
                .collect(),
        }
    }

    #[test]
    fn an_answer_must_cover_every_pending_call_once_and_the_right_way() {
        let w = wait();
        let ok = w.answers(&cont(&["c1"], &[("c2", false)])).expect("fits");
        assert_eq!(ok.len(), 2);
        assert!(matches!(ok[1], Answer::Rejected { .. }));
        let code = |c| w.answers(&c).expect_err("refused").code();
        assert_eq!(code(cont(&["c1"], &[])), "missing_tool_outputs");
        assert_eq!(
            code(cont(&["c1", "c9"], &[("c2", true)])),
            "unknown_call_id"
        );
        assert_eq!(
            code(cont(&["c1", "c1"], &[("c2", true)])),
            "duplicate_call_id"
        );
        assert_eq!(code(cont(&["c1", "c2"], &[])), "wrong_answer_kind");
        let e = w.answers(&cont(&["c1", "c9"], &[])).expect_err("refused");
        assert_eq!(e.param().as_deref(), Some("tool_outputs[1].call_id"));
    }
}
