//! Token counts for an upstream that reports no usage. Unknown usage is never zero: the counts
//! are estimated and the reply says so (`usage_estimated`). Prompt: about four characters a
//! token, plus four a message for the chat template. Completion: the streamed fragments (servers
//! stream about one token a chunk), or four characters a token when that is more.

use agentos_bus::envelope::{ModelRequest, Usage};
use serde_json::Value;

/// Characters per token, roughly, for English text and JSON.
const CHARS_PER_TOKEN: usize = 4;
/// Tokens a chat template adds around each message.
const PER_MESSAGE: u64 = 4;

fn tokens(chars: usize) -> u64 {
    chars.div_ceil(CHARS_PER_TOKEN) as u64
}

/// The estimated prompt tokens of `req` (messages and tool definitions).
pub fn prompt(req: &ModelRequest) -> u64 {
    let mut n = 0;
    for m in &req.messages {
        n += PER_MESSAGE + tokens(m.content.as_deref().map_or(0, str::len));
        for c in &m.tool_calls {
            n += tokens(c.name.len()) + tokens(arguments_len(&c.arguments));
        }
    }
    for t in &req.tools {
        n += tokens(t.name.len() + t.description.len()) + tokens(arguments_len(&t.parameters));
    }
    n
}

fn arguments_len(v: &Value) -> usize {
    match v {
        Value::Null => 0,
        Value::String(s) => s.len(),
        v => v.to_string().len(),
    }
}

/// The estimated usage of a completion of `chars` characters streamed in `fragments` chunks.
pub fn usage(req: &ModelRequest, fragments: u64, chars: usize) -> Usage {
    Usage::new(prompt(req), fragments.max(tokens(chars)))
}

#[cfg(test)]
mod tests {
    use agentos_bus::envelope::{ChatMessage, ModelRequest, Role};

    use super::*;

    #[test]
    fn estimates_are_never_zero_for_real_text() {
        let req = ModelRequest {
            run_id: None,
            step: 0,
            messages: vec![ChatMessage::text(Role::User, "What colour is the sky?")],
            tools: Vec::new(),
            config: Value::Null,
            params: Default::default(),
            stream: false,
        };
        let u = usage(&req, 3, 10);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (4 + 6, 3));
        assert_eq!(usage(&req, 1, 40).completion_tokens, 10);
        assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);
    }
}
