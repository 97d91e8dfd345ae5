//! Runs on a thread. Before step 1 the driver loads the thread's earlier messages once, cuts them
//! to the agent's [`agentos_bus::envelope::HistoryLimit`] and journals them (`thread.history`,
//! and `thread.history_truncated` when something was left out), so every model call of the run,
//! and every redelivery, sends the same history. When the run completes, its own messages (the
//! user input, the model's answers and tool calls, the tool results) become its turn on the
//! thread: written once, keyed by the run id.

use agentos_bus::envelope::{
    AgentSpec, ChatMessage, ErrorBody, EventData, REASON_INTERRUPTED, Role, ThreadTurn,
};

use super::drive::{Driver, Stop};
use super::port::Port;

impl<P: Port> Driver<'_, P> {
    /// Whether the run still has to load its thread's history (before step 1).
    pub(super) fn needs_history(&self) -> bool {
        self.req.thread_id.is_some() && !self.state.history_loaded() && self.state.steps() == 0
    }

    /// Journals the thread's history as the agent's bound allows; `Ok(Err(_))` when the thread
    /// is gone, which fails the run.
    pub(super) async fn load_history(
        &mut self,
        agent: &AgentSpec,
    ) -> Result<Result<(), ErrorBody>, Stop> {
        let Some(thread) = &self.req.thread_id else {
            return Ok(Ok(()));
        };
        let Some(turns) = self.port.thread_turns(&self.req.tenant, thread).await? else {
            return Ok(Err(ErrorBody::new(
                "thread_not_found",
                format!("thread {thread} does not exist"),
            )));
        };
        let history: Vec<_> = turns
            .into_iter()
            .filter(|t| t.run_id != self.req.run_id)
            .flat_map(|t| t.messages)
            .collect();
        let (omitted, kept) = agent.history.cut(history);
        if omitted > 0 {
            self.append(EventData::ThreadHistoryTruncated {
                omitted: u32::try_from(omitted).unwrap_or(u32::MAX),
                kept: u32::try_from(kept.len()).unwrap_or(u32::MAX),
                limit: agent.history,
            })
            .await?;
        }
        self.append(EventData::ThreadHistory { messages: kept })
            .await?;
        Ok(Ok(()))
    }

    /// Adds the run's messages to its thread once it has completed (a no-op for other runs and
    /// on a repeat).
    pub(super) async fn record_turn(&mut self) -> Result<(), Stop> {
        let Some(thread) = &self.req.thread_id else {
            return Ok(());
        };
        let Some(ended) = self.state.ended() else {
            return Ok(());
        };
        let keeps = match &ended.data {
            EventData::RunCompleted { .. } => true,
            EventData::RunCancelled { reason } => reason == REASON_INTERRUPTED,
            _ => false,
        };
        if !keeps {
            return Ok(());
        }
        let mut messages = self.state.own_messages(&self.req.input);
        // An interrupted run may stop inside a tool exchange: keep the messages up to the last
        // model message whose tool calls all have results, so no call goes unanswered.
        if let Some(cut) = unanswered_calls(&messages) {
            messages.truncate(cut);
        }
        let turn = ThreadTurn {
            run_id: self.req.run_id,
            messages,
            created_at: ended.ts,
        };
        self.port
            .add_thread_turn(&self.req.tenant, thread, &turn)
            .await?;
        Ok(())
    }
}

/// The index of the first model message with a tool call that has no result after it.
fn unanswered_calls(messages: &[ChatMessage]) -> Option<usize> {
    messages.iter().enumerate().find_map(|(i, m)| {
        let unanswered = m.role == Role::Assistant
            && m.tool_calls.iter().any(|call| {
                !messages[i + 1..]
                    .iter()
                    .any(|r| r.role == Role::Tool && r.tool_call_id.as_ref() == Some(&call.id))
            });
        unanswered.then_some(i)
    })
}
