//! The deterministic `scripted` backend, for tests and demos. The agent's
//! `model_config.script` is a list of turns; turn k answers step k:
//! `{"text": "..."}` (streamed as several deltas) or
//! `{"tool_calls": [{"name": "...", "arguments": {...}}]}`. With no script it echoes the last
//! user message. Past the end of the script it answers `script_exhausted`. In a text turn,
//! `{last_tool_output}` stands for the content of the last tool result in the conversation, so
//! a scripted agent can answer with what a tool found.

use agentos_bus::envelope::{
    ChatMessage, ErrorBody, ModelReply, ModelRequest, Role, ToolCallSpec, Usage,
};
use agentos_bus::id::{CallId, ToolName};
use serde::Deserialize;

use super::DeltaSink;

#[derive(Clone, Copy, Debug, Default)]
pub struct Scripted;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    script: Option<Vec<Turn>>,
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Turn {
    Text { text: String },
    ToolCalls { tool_calls: Vec<ScriptedCall> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    name: ToolName,
    #[serde(default)]
    arguments: serde_json::Value,
}

/// Whitespace-separated words: the scripted backend's token count.
fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Splits text into deltas of about two words, keeping every character.
fn deltas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut seen = 0;
    for (i, piece) in text.split_inclusive(' ').enumerate() {
        current.push_str(piece);
        seen = i + 1;
        if seen % 2 == 0 {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() || seen == 0 {
        out.push(current);
    }
    out
}

/// The placeholder a scripted text turn may hold for the last tool result.
const LAST_TOOL_OUTPUT: &str = "{last_tool_output}";

fn with_last_tool_output(text: &str, req: &ModelRequest) -> String {
    if !text.contains(LAST_TOOL_OUTPUT) {
        return text.to_owned();
    }
    let last = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Tool)
        .and_then(|m| m.content.as_deref())
        .unwrap_or_default();
    text.replace(LAST_TOOL_OUTPUT, last)
}

fn turn_index(req: &ModelRequest) -> usize {
    if req.step > 0 {
        return req.step as usize - 1;
    }
    req.messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
}

impl Scripted {
    pub(super) async fn complete(
        &self,
        req: &ModelRequest,
        sink: &mut DeltaSink<'_>,
    ) -> ModelReply {
        let config: Config = match req.config {
            serde_json::Value::Null => Config { script: None },
            ref v => match serde_json::from_value(v.clone()) {
                Ok(c) => c,
                Err(e) => {
                    return ModelReply::Error {
                        error: ErrorBody::new(
                            "invalid_model_config",
                            format!("scripted model_config: {e}"),
                        ),
                    };
                }
            },
        };
        let prompt_tokens: u64 = req
            .messages
            .iter()
            .map(|m| m.content.as_deref().map_or(0, words))
            .sum();
        let turn = match &config.script {
            None => {
                let last_user = req
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .and_then(|m| m.content.clone())
                    .unwrap_or_default();
                Turn::Text { text: last_user }
            }
            // An agent run names its step; a chat call is at step "assistant turns so far + 1".
            Some(script) => match script.get(turn_index(req)) {
                Some(Turn::Text { text }) => Turn::Text {
                    text: with_last_tool_output(text, req),
                },
                Some(Turn::ToolCalls { tool_calls }) => Turn::ToolCalls {
                    tool_calls: tool_calls
                        .iter()
                        .map(|c| ScriptedCall {
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        })
                        .collect(),
                },
                None => {
                    return ModelReply::Error {
                        error: ErrorBody::new(
                            "script_exhausted",
                            format!(
                                "the script has {} turns; step {} has none",
                                script.len(),
                                req.step
                            ),
                        ),
                    };
                }
            },
        };
        match turn {
            Turn::Text { text } => {
                if req.stream {
                    for d in deltas(&text) {
                        sink.send(d).await;
                    }
                }
                let completion_tokens = words(&text);
                ModelReply::Final {
                    message: ChatMessage::text(Role::Assistant, text),
                    usage: Usage::new(prompt_tokens, completion_tokens),
                    finish_reason: "stop".into(),
                    usage_estimated: false,
                    logprobs: None,
                }
            }
            Turn::ToolCalls { tool_calls } => {
                let mut calls = Vec::with_capacity(tool_calls.len());
                for (i, c) in tool_calls.into_iter().enumerate() {
                    let id = match CallId::parse(format!("call_{}_{}", req.step, i + 1)) {
                        Ok(id) => id,
                        Err(e) => {
                            return ModelReply::Error {
                                error: ErrorBody::new("internal", e.to_string()),
                            };
                        }
                    };
                    calls.push(ToolCallSpec {
                        id,
                        name: c.name.to_string(),
                        arguments: c.arguments,
                    });
                }
                let completion_tokens = calls.len() as u64;
                ModelReply::Final {
                    message: ChatMessage {
                        role: Role::Assistant,
                        content: None,
                        tool_calls: calls,
                        tool_call_id: None,
                    },
                    usage: Usage::new(prompt_tokens, completion_tokens),
                    finish_reason: "tool_calls".into(),
                    usage_estimated: false,
                    logprobs: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_every_character() {
        for text in ["", "one", "one two", "The answer is 42.", "a  b   c "] {
            let d = deltas(text);
            assert_eq!(d.concat(), text);
            assert!(!d.is_empty());
        }
        assert_eq!(deltas("The answer is 42.").len(), 2);
    }

    #[test]
    fn a_text_turn_can_quote_the_last_tool_result() {
        let req = ModelRequest {
            run_id: None,
            step: 2,
            messages: vec![
                ChatMessage::text(Role::User, "hi"),
                ChatMessage::text(Role::Tool, "first"),
                ChatMessage::text(Role::Tool, "{\"fact\": \"teal\"}"),
            ],
            tools: Vec::new(),
            config: serde_json::Value::Null,
            params: Default::default(),
            stream: false,
        };
        assert_eq!(
            with_last_tool_output("found: {last_tool_output}", &req),
            "found: {\"fact\": \"teal\"}"
        );
        assert_eq!(with_last_tool_output("plain", &req), "plain");
    }
}
