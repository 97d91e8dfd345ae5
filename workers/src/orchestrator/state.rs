//! A run's state, folded from its journal one event at a time. The orchestrator applies each
//! event it reads or appends and asks [`RunState::next`] what to do; both cost the same however
//! long the run is (a step's tool calls aside), so a run's total cost grows with its length, not
//! with its square. What to do next depends on the journal alone: that is what makes a resumed
//! run continue exactly where the last one stopped.

use std::collections::HashMap;

use agentos_bus::envelope::{
    ActionKind, AgentSpec, Answer, ChatMessage, Event, EventData, PendingCall, Role, ToolCallSpec,
    Usage,
};
use agentos_bus::id::CallId;
use time::OffsetDateTime;

#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Empty journal: append `run.created`.
    Create,
    /// Append `run.started`.
    Start,
    /// Append `step.started` for this step.
    StartStep(u32),
    /// The step's model call has no `model.completed` yet.
    CallModel(u32),
    /// Append `tool.started` for this call.
    StartTool(u32, ToolCallSpec),
    /// `tool.started` is journaled but has no result: invoke (again) with the same key.
    InvokeTool(u32, ToolCallSpec),
    /// Calls of the step wait for the caller (client tools, approvals): journal
    /// `run.requires_action`.
    RequireAction(u32, Vec<PendingCall>),
    /// `run.requires_action` is journaled and unanswered: the run waits.
    Wait(Waiting),
    /// The model answered without tool calls: the run is complete.
    Complete { output: String },
    /// `max_steps` reached without a final answer.
    TooManySteps(u32),
    /// The journal already ends the run.
    Finished,
}

/// Where one tool call of the current step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// `tool.started`, no result yet.
    Started,
    Done,
}

/// The run's open `run.requires_action`.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub step: u32,
    /// Sequence of the `run.requires_action` event.
    pub seq: u64,
    pub calls: Vec<PendingCall>,
    pub expires_at: Option<OffsetDateTime>,
}

/// The terminal event, once journaled.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub seq: u64,
    pub ts: OffsetDateTime,
    pub data: EventData,
}

#[derive(Clone, Debug, Default)]
pub struct RunState {
    /// Sequence of the last event applied (0: empty journal).
    pub seq: u64,
    created: bool,
    started: bool,
    ended: Option<Ended>,
    /// The highest step started, and how many `step.started` there are.
    step: u32,
    steps: u32,
    /// The current step's answer (its first `model.completed`).
    answer: Option<ChatMessage>,
    /// The current step's tool calls.
    calls: HashMap<CallId, Call>,
    usage: Usage,
    /// The model's messages and tool results so far, in order.
    conversation: Vec<ChatMessage>,
    /// The agent pinned by `run.started` (runs submitted without a snapshot).
    pinned: Option<AgentSpec>,
    /// The thread's earlier messages (`thread.history`), once loaded.
    history: Option<Vec<ChatMessage>>,
    /// The open `run.requires_action`, until answered.
    waiting: Option<Waiting>,
    /// The current step's approved calls, with the caller's replacement arguments if any.
    approved: HashMap<CallId, Option<serde_json::Value>>,
    /// The submissions of the `run.action_answered` so far, and the latest.
    answers: std::collections::HashSet<String>,
    last_answer: Option<String>,
}

impl RunState {
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.apply(e);
        }
        state
    }

    /// Takes one more journal event into account.
    pub fn apply(&mut self, event: &Event) {
        self.seq = event.seq;
        match &event.data {
            EventData::RunCreated { .. } => self.created = true,
            EventData::RunStarted { agent } => {
                self.started = true;
                if self.pinned.is_none() {
                    self.pinned = agent.as_deref().cloned();
                }
            }
            EventData::ThreadHistory { messages } => {
                if self.history.is_none() {
                    self.history = Some(messages.clone());
                }
            }
            EventData::ThreadHistoryTruncated { .. } => {}
            EventData::StepStarted { step } => {
                self.steps += 1;
                if *step > self.step {
                    self.step = *step;
                    self.answer = None;
                    self.calls.clear();
                    self.approved.clear();
                }
            }
            EventData::ModelDelta { .. } | EventData::ToolProgress { .. } => {}
            EventData::RunRequiresAction {
                step,
                tool_calls,
                expires_at,
            } => {
                self.waiting = Some(Waiting {
                    step: *step,
                    seq: event.seq,
                    calls: tool_calls.clone(),
                    expires_at: *expires_at,
                });
            }
            EventData::RunActionAnswered {
                step,
                answers,
                submission,
            } => {
                self.waiting = None;
                self.answers.insert(submission.clone());
                self.last_answer = Some(submission.clone());
                for answer in answers {
                    self.take_answer(*step, answer);
                }
            }
            EventData::ModelCompleted {
                step,
                message,
                usage,
            } => {
                self.usage.add(*usage);
                self.conversation.push(message.clone());
                if *step == self.step && self.answer.is_none() {
                    self.answer = Some(message.clone());
                }
            }
            EventData::ToolStarted { step, call_id, .. } => {
                if *step == self.step {
                    self.calls.entry(call_id.clone()).or_insert(Call::Started);
                }
            }
            EventData::ToolCompleted {
                step,
                call_id,
                output,
                ..
            } => {
                self.conversation
                    .push(tool_message(call_id, output.to_string()));
                self.done(*step, call_id);
            }
            EventData::ToolFailed {
                step,
                call_id,
                error,
                ..
            } => {
                let content = serde_json::json!({ "error": error }).to_string();
                self.conversation.push(tool_message(call_id, content));
                self.done(*step, call_id);
            }
            EventData::RunCompleted { .. }
            | EventData::RunFailed { .. }
            | EventData::RunCancelled { .. }
            | EventData::RunExpired { .. } => {
                if self.ended.is_none() {
                    self.ended = Some(Ended {
                        seq: event.seq,
                        ts: event.ts,
                        data: event.data.clone(),
                    });
                }
            }
        }
    }

    /// A client tool's output and a rejection answer the call (the model sees them as the
    /// tool's result); an approval lets the call start.
    fn take_answer(&mut self, step: u32, answer: &Answer) {
        match answer {
            Answer::Output { call_id, output } => {
                let content = match output {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                self.conversation.push(tool_message(call_id, content));
                self.done(step, call_id);
            }
            Answer::Rejected { call_id, reason } => {
                let error = serde_json::json!({ "error": {
                    "code": "rejected",
                    "message": reason.as_deref().unwrap_or("the call was not approved"),
                }});
                self.conversation
                    .push(tool_message(call_id, error.to_string()));
                self.done(step, call_id);
            }
            Answer::Approved { call_id, arguments } => {
                if step == self.step {
                    self.approved.insert(call_id.clone(), arguments.clone());
                }
            }
        }
    }

    fn done(&mut self, step: u32, call: &CallId) {
        if step == self.step {
            self.calls.insert(call.clone(), Call::Done);
        }
    }

    /// What to do next, for a run of `agent`.
    pub fn next(&self, agent: &AgentSpec) -> Next {
        let max_steps = agent.max_steps;
        if self.seq == 0 {
            return Next::Create;
        }
        if self.ended.is_some() {
            return Next::Finished;
        }
        if !self.started {
            return Next::Start;
        }
        if self.step == 0 {
            return start_step(1, max_steps);
        }
        let Some(answer) = &self.answer else {
            return Next::CallModel(self.step);
        };
        if answer.tool_calls.is_empty() {
            return Next::Complete {
                output: answer.content.clone().unwrap_or_default(),
            };
        }
        // Calls that need no one run first, in order; those waiting for the caller are asked
        // for together once the others are done.
        let mut pending = Vec::new();
        for call in &answer.tool_calls {
            match self.calls.get(&call.id) {
                Some(Call::Done) => continue,
                Some(Call::Started) => return Next::InvokeTool(self.step, self.effective(call)),
                None => match agent.action_for(&call.name) {
                    None => return Next::StartTool(self.step, call.clone()),
                    Some(ActionKind::Approval) if self.approved.contains_key(&call.id) => {
                        return Next::StartTool(self.step, self.effective(call));
                    }
                    Some(kind) => pending.push(PendingCall {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                        kind,
                    }),
                },
            }
        }
        if pending.is_empty() {
            return start_step(self.step + 1, max_steps);
        }
        match &self.waiting {
            Some(waiting) if waiting.step == self.step => Next::Wait(waiting.clone()),
            _ => Next::RequireAction(self.step, pending),
        }
    }

    /// The call as it runs: with the arguments its approver gave, if any.
    fn effective(&self, call: &ToolCallSpec) -> ToolCallSpec {
        match self.approved.get(&call.id) {
            Some(Some(arguments)) => ToolCallSpec {
                arguments: arguments.clone(),
                ..call.clone()
            },
            _ => call.clone(),
        }
    }

    /// The open `run.requires_action`, if the run waits.
    pub fn waiting(&self) -> Option<&Waiting> {
        self.waiting.as_ref()
    }

    /// The submission of the latest answer journaled.
    pub fn last_answer(&self) -> Option<&str> {
        self.last_answer.as_deref()
    }

    /// Whether the answer `submission` is journaled.
    pub fn answered(&self, submission: &str) -> bool {
        self.answers.contains(submission)
    }

    /// The conversation so far, as the model sees it.
    pub fn messages(&self, instructions: &str, input: &str) -> Vec<ChatMessage> {
        let history = self.history.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(history.len() + self.conversation.len() + 2);
        if !instructions.is_empty() {
            out.push(ChatMessage::text(Role::System, instructions));
        }
        out.extend(history.iter().cloned());
        out.push(ChatMessage::text(Role::User, input));
        out.extend(self.conversation.iter().cloned());
        out
    }

    /// This run's own messages: its input, then the model's messages and tool results.
    pub fn own_messages(&self, input: &str) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(self.conversation.len() + 1);
        out.push(ChatMessage::text(Role::User, input));
        out.extend(self.conversation.iter().cloned());
        out
    }

    /// Whether `thread.history` is journaled.
    pub fn history_loaded(&self) -> bool {
        self.history.is_some()
    }

    /// Total usage of the model calls so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Steps started so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }

    pub fn has_started(&self) -> bool {
        self.started
    }

    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// The agent definition `run.started` pinned, if any.
    pub fn pinned_agent(&self) -> Option<&AgentSpec> {
        self.pinned.as_ref()
    }
}

fn tool_message(call: &CallId, content: String) -> ChatMessage {
    ChatMessage {
        role: Role::Tool,
        content: Some(content),
        tool_calls: Vec::new(),
        tool_call_id: Some(call.clone()),
    }
}

fn start_step(step: u32, max_steps: u32) -> Next {
    if step > max_steps {
        Next::TooManySteps(max_steps)
    } else {
        Next::StartStep(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentos_bus::envelope::{ErrorBody, now};
    use agentos_bus::id::{AgentId, RunId, Tenant, ToolName};
    use serde_json::json;

    fn journal(data: Vec<EventData>) -> Vec<Event> {
        let run = RunId::new();
        let tenant = Tenant::parse("t").expect("tenant");
        data.into_iter()
            .enumerate()
            .map(|(i, data)| Event {
                seq: i as u64 + 1,
                run_id: run,
                tenant: tenant.clone(),
                ts: now(),
                trace_id: None,
                data,
            })
            .collect()
    }

    fn agent(max_steps: u32) -> AgentSpec {
        AgentSpec {
            id: AgentId::parse("a").expect("a"),
            tenant: Tenant::parse("t").expect("tenant"),
            model: "m".parse().expect("model"),
            instructions: String::new(),
            tools: vec![],
            max_steps,
            model_config: json!({}),
            metadata: Default::default(),
            memory: Default::default(),
            history: Default::default(),
            client_tools: vec![],
            requires_approval: vec![],
            created_at: now(),
            updated_at: now(),
        }
    }

    fn next(journal: &[Event], max_steps: u32) -> Next {
        RunState::fold(journal).next(&agent(max_steps))
    }

    fn messages(instructions: &str, input: &str, journal: &[Event]) -> Vec<ChatMessage> {
        RunState::fold(journal).messages(instructions, input)
    }

    fn usage(journal: &[Event]) -> Usage {
        RunState::fold(journal).usage()
    }

    fn steps(journal: &[Event]) -> u32 {
        RunState::fold(journal).steps()
    }

    fn call(id: &str) -> ToolCallSpec {
        ToolCallSpec {
            id: CallId::parse(id).expect("id"),
            name: "echo".into(),
            arguments: json!({}),
        }
    }

    fn asks_for(calls: Vec<ToolCallSpec>) -> EventData {
        EventData::ModelCompleted {
            step: 1,
            message: ChatMessage {
                role: Role::Assistant,
                content: None,
                tool_calls: calls,
                tool_call_id: None,
            },
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            },
        }
    }

    #[test]
    fn walks_a_run_with_tool_calls_from_the_journal() {
        let created = EventData::RunCreated {
            agent_id: AgentId::parse("a").expect("a"),
            input: "hi".into(),
        };
        let mut data = vec![];
        assert_eq!(next(&journal(data.clone()), 5), Next::Create);
        data.push(created);
        assert_eq!(next(&journal(data.clone()), 5), Next::Start);
        data.push(EventData::RunStarted { agent: None });
        assert_eq!(next(&journal(data.clone()), 5), Next::StartStep(1));
        data.push(EventData::StepStarted { step: 1 });
        assert_eq!(next(&journal(data.clone()), 5), Next::CallModel(1));
        data.push(asks_for(vec![call("c1"), call("c2")]));
        assert_eq!(
            next(&journal(data.clone()), 5),
            Next::StartTool(1, call("c1"))
        );
        let started = |id: &str| EventData::ToolStarted {
            step: 1,
            call_id: CallId::parse(id).expect("id"),
            name: ToolName::parse("echo").expect("tool"),
            arguments: json!({}),
        };
        data.push(started("c1"));
        assert_eq!(
            next(&journal(data.clone()), 5),
            Next::InvokeTool(1, call("c1"))
        );
        data.push(EventData::ToolCompleted {
            step: 1,
            call_id: CallId::parse("c1").expect("id"),
            name: ToolName::parse("echo").expect("tool"),
            output: json!(1),
        });
        assert_eq!(
            next(&journal(data.clone()), 5),
            Next::StartTool(1, call("c2"))
        );
        data.push(started("c2"));
        data.push(EventData::ToolFailed {
            step: 1,
            call_id: CallId::parse("c2").expect("id"),
            name: "echo".into(),
            error: ErrorBody::new("x", "y"),
        });
        assert_eq!(next(&journal(data.clone()), 1), Next::TooManySteps(1));
        assert_eq!(next(&journal(data.clone()), 5), Next::StartStep(2));
        let msgs = messages("be brief", "hi", &journal(data.clone()));
        assert_eq!(
            msgs.iter().map(|m| m.role).collect::<Vec<_>>(),
            vec![
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool
            ]
        );
        data.push(EventData::StepStarted { step: 2 });
        data.push(EventData::ModelCompleted {
            step: 2,
            message: ChatMessage::text(Role::Assistant, "done"),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
                total_tokens: 2,
            },
        });
        assert_eq!(
            next(&journal(data.clone()), 5),
            Next::Complete {
                output: "done".into()
            }
        );
        assert_eq!(usage(&journal(data.clone())).total_tokens, 5);
        assert_eq!(steps(&journal(data.clone())), 2);
        data.push(EventData::RunCompleted {
            output: "done".into(),
            usage: Usage::default(),
        });
        assert_eq!(next(&journal(data), 5), Next::Finished);
    }
}
