//! What to do next for a run, derived from its journal alone. Pure: the orchestrator replays the
//! journal into a [`Next`] action, performs it, appends the result, and asks again. This is what
//! makes a resumed run continue exactly where the last one stopped.

use agentos_bus::envelope::{ChatMessage, Event, EventData, Role, ToolCallSpec, Usage};

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
    /// The model answered without tool calls: the run is complete.
    Complete { output: String },
    /// `max_steps` reached without a final answer.
    TooManySteps(u32),
    /// The journal already ends the run.
    Finished,
}

pub fn next(journal: &[Event], max_steps: u32) -> Next {
    if journal.is_empty() {
        return Next::Create;
    }
    if journal.iter().any(|e| e.data.is_terminal()) {
        return Next::Finished;
    }
    if !journal
        .iter()
        .any(|e| matches!(e.data, EventData::RunStarted {}))
    {
        return Next::Start;
    }
    let step = journal
        .iter()
        .filter_map(|e| match e.data {
            EventData::StepStarted { step } => Some(step),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if step == 0 {
        return start_step(1, max_steps);
    }
    let Some(message) = journal.iter().find_map(|e| match &e.data {
        EventData::ModelCompleted {
            step: s, message, ..
        } if *s == step => Some(message),
        _ => None,
    }) else {
        return Next::CallModel(step);
    };
    if message.tool_calls.is_empty() {
        return Next::Complete {
            output: message.content.clone().unwrap_or_default(),
        };
    }
    for call in &message.tool_calls {
        let done = journal.iter().any(|e| match &e.data {
            EventData::ToolCompleted {
                step: s, call_id, ..
            }
            | EventData::ToolFailed {
                step: s, call_id, ..
            } => *s == step && call_id == &call.id,
            _ => false,
        });
        if done {
            continue;
        }
        let started = journal.iter().any(|e| {
            matches!(&e.data, EventData::ToolStarted { step: s, call_id, .. } if *s == step && call_id == &call.id)
        });
        return if started {
            Next::InvokeTool(step, call.clone())
        } else {
            Next::StartTool(step, call.clone())
        };
    }
    start_step(step + 1, max_steps)
}

fn start_step(step: u32, max_steps: u32) -> Next {
    if step > max_steps {
        Next::TooManySteps(max_steps)
    } else {
        Next::StartStep(step)
    }
}

/// The conversation so far, as the model sees it.
pub fn messages(instructions: &str, input: &str, journal: &[Event]) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    if !instructions.is_empty() {
        out.push(ChatMessage::text(Role::System, instructions));
    }
    out.push(ChatMessage::text(Role::User, input));
    for e in journal {
        match &e.data {
            EventData::ModelCompleted { message, .. } => out.push(message.clone()),
            EventData::ToolCompleted {
                call_id, output, ..
            } => out.push(ChatMessage {
                role: Role::Tool,
                content: Some(output.to_string()),
                tool_calls: Vec::new(),
                tool_call_id: Some(call_id.clone()),
            }),
            EventData::ToolFailed { call_id, error, .. } => out.push(ChatMessage {
                role: Role::Tool,
                content: Some(serde_json::json!({"error": error}).to_string()),
                tool_calls: Vec::new(),
                tool_call_id: Some(call_id.clone()),
            }),
            _ => {}
        }
    }
    out
}

/// Total usage of the model calls in the journal.
pub fn usage(journal: &[Event]) -> Usage {
    let mut total = Usage::default();
    for e in journal {
        if let EventData::ModelCompleted { usage, .. } = &e.data {
            total.add(*usage);
        }
    }
    total
}

/// Steps started so far.
pub fn steps(journal: &[Event]) -> u32 {
    journal
        .iter()
        .filter(|e| matches!(e.data, EventData::StepStarted { .. }))
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentos_bus::envelope::{ErrorBody, now};
    use agentos_bus::id::{AgentId, CallId, RunId, Tenant, ToolName};
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
                data,
            })
            .collect()
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
        data.push(EventData::RunStarted {});
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
