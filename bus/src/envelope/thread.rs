//! Threads: a conversation that lasts across runs. The record, the messages each run added (its
//! turn) and the runs submitted on it live in KV `agentos-threads`; see `crate::key`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ChatMessage, Envelope};
use crate::id::{AgentId, RunId, Tenant, ThreadId};

/// `<tenant>.<thread_id>`: the thread itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadRecord {
    pub id: ThreadId,
    pub tenant: Tenant,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Envelope for ThreadRecord {
    const WHAT: &'static str = "thread record";
}

/// `<tenant>.<thread_id>.turn.<run_id>`: the messages one run added to the thread (its user
/// input, the model's answers and tool calls, the tool results), written once when it ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadTurn {
    pub run_id: RunId,
    pub messages: Vec<ChatMessage>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Envelope for ThreadTurn {
    const WHAT: &'static str = "thread turn";
}

/// `<tenant>.<thread_id>.run.<run_id>`: a run submitted on the thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadRun {
    pub run_id: RunId,
    pub agent_id: AgentId,
    #[serde(with = "time::serde::rfc3339")]
    pub submitted_at: OffsetDateTime,
}

impl Envelope for ThreadRun {
    const WHAT: &'static str = "thread run";
}

/// `<tenant>.<thread_id>.lock`: the thread's one active run, held under a lease. Taken with KV
/// `create` (no lock yet) or compare-and-set on the revision read (a lapsed lease, a holder that
/// ended, or a release); renewed by the holder the same way. Nothing in any process stands for
/// it: a holder that dies stops renewing, and the lease lapses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadLock {
    pub run_id: RunId,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The holder let go (its run ended): free at once.
    #[serde(default)]
    pub released: bool,
}

impl Envelope for ThreadLock {
    const WHAT: &'static str = "thread lock";
}

impl ThreadLock {
    /// Whether the lock still holds at `now` (held, not released, lease not lapsed).
    pub fn holds(&self, now: OffsetDateTime) -> bool {
        !self.released && self.expires_at > now
    }
}

/// What a run submitted on a busy thread does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultitaskStrategy {
    /// Refused (`409 thread_busy` at the edge; `run.failed` `thread_busy` for direct publishers).
    Reject,
    /// Waits its turn: runs on a thread execute one at a time, in submission (run id) order.
    #[default]
    Enqueue,
    /// The active run is cancelled (reason `interrupted`, its messages so far kept on the
    /// thread); this run starts once it has ended.
    Interrupt,
    /// The active run is cancelled (reason `rollback`) and adds nothing to the thread.
    Rollback,
}

impl MultitaskStrategy {
    pub const ALL: [Self; 4] = [Self::Reject, Self::Enqueue, Self::Interrupt, Self::Rollback];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Enqueue => "enqueue",
            Self::Interrupt => "interrupt",
            Self::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Cancel reasons a multitask strategy gives.
pub const REASON_INTERRUPTED: &str = "interrupted";
pub const REASON_ROLLBACK: &str = "rollback";

/// How much of a thread's history a run of this agent sends to its model: the most recent
/// messages, at most `max_messages` of them and, when set, at most `max_tokens` estimated tokens
/// (4 characters a token). The cut never starts inside a tool exchange: the kept history begins
/// at a user message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLimit {
    #[serde(default = "HistoryLimit::default_max_messages")]
    pub max_messages: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

impl HistoryLimit {
    pub const DEFAULT_MAX_MESSAGES: u32 = 100;

    fn default_max_messages() -> u32 {
        Self::DEFAULT_MAX_MESSAGES
    }

    /// The estimated tokens of a message (4 characters a token, at least 1).
    pub fn estimate(message: &ChatMessage) -> u64 {
        let mut chars = message.content.as_deref().map_or(0, str::len);
        for call in &message.tool_calls {
            chars += call.name.len() + call.arguments.to_string().len();
        }
        (chars as u64).div_ceil(4).max(1)
    }

    /// Splits `history` (oldest first) into what is left out and what is kept.
    pub fn cut(&self, history: Vec<ChatMessage>) -> (usize, Vec<ChatMessage>) {
        let mut start = history.len().saturating_sub(self.max_messages as usize);
        if let Some(budget) = self.max_tokens {
            let mut used = 0u64;
            let mut within = history.len();
            for (i, m) in history.iter().enumerate().rev() {
                used += Self::estimate(m);
                if used > u64::from(budget) {
                    break;
                }
                within = i;
            }
            start = start.max(within);
        }
        // Begin at a user message, so no tool result is kept without the call it answers.
        while start < history.len() && history[start].role != super::Role::User {
            start += 1;
        }
        let kept = history[start..].to_vec();
        (start, kept)
    }
}

impl Default for HistoryLimit {
    fn default() -> Self {
        Self {
            max_messages: Self::DEFAULT_MAX_MESSAGES,
            max_tokens: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Role;

    fn text(role: Role, s: &str) -> ChatMessage {
        ChatMessage::text(role, s)
    }

    #[test]
    fn the_cut_keeps_the_newest_messages_and_starts_at_a_user_message() {
        let history = vec![
            text(Role::User, "one"),
            text(Role::Assistant, "1"),
            text(Role::User, "two"),
            text(Role::Tool, "t"),
            text(Role::Assistant, "2"),
            text(Role::User, "three"),
            text(Role::Assistant, "3"),
        ];
        let all = HistoryLimit::default().cut(history.clone());
        assert_eq!(all, (0, history.clone()));
        let limit = HistoryLimit {
            max_messages: 4,
            max_tokens: None,
        };
        // The last four begin with a tool result: the cut moves on to the next user message.
        let (left_out, kept) = limit.cut(history.clone());
        assert_eq!(left_out, 5);
        assert_eq!(kept, history[5..].to_vec());
        let budget = HistoryLimit {
            max_messages: 100,
            max_tokens: Some(3),
        };
        let (left_out, kept) = budget.cut(history.clone());
        assert_eq!((left_out, kept.len()), (5, 2));
        let none = HistoryLimit {
            max_messages: 0,
            max_tokens: None,
        };
        assert_eq!(none.cut(history), (7, vec![]));
    }
}
