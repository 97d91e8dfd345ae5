//! The OpenAI chat request as clients send it, validated and turned into one `ModelRequest`.
//! Every field of OpenAI's request schema is accepted: those AgentOS reads are validated, the
//! others pass to the model worker, whose route decides what reaches the upstream.

use agentos_bus::envelope::{ChatMessage, ModelRequest, Role, ToolCallSpec, ToolDef};
use agentos_bus::id::{CallId, ModelName};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    #[schema(min_items = 1)]
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub stream: bool,
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<StreamOptions>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<InTool>>,
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<Value>,
    pub user: Option<String>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub reasoning_effort: Option<String>,
    pub service_tier: Option<String>,
    pub verbosity: Option<String>,
    pub modalities: Option<Vec<String>>,
    pub prompt_cache_key: Option<String>,
    pub prompt_cache_retention: Option<String>,
    pub safety_identifier: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub prediction: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub audio: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub web_search_options: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub prompt_cache_options: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub moderation: Option<Value>,
    /// Deprecated by OpenAI in favour of `tools`; passed through as they are.
    #[schema(value_type = Option<Vec<Object>>)]
    pub functions: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub function_call: Option<Value>,
    /// Accepted for compatibility; not used.
    #[schema(value_type = Option<Object>)]
    #[serde(rename = "metadata")]
    pub _metadata: Option<Value>,
    /// Accepted for compatibility; not used.
    #[serde(rename = "store")]
    pub _store: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    /// Accepted for compatibility; not used.
    #[serde(rename = "include_obfuscation")]
    pub _include_obfuscation: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    /// Accepted for compatibility; not used.
    #[serde(rename = "name")]
    pub _name: Option<String>,
    pub tool_calls: Option<Vec<InToolCall>>,
    pub tool_call_id: Option<String>,
    /// Accepted for compatibility; not used.
    #[serde(rename = "refusal")]
    pub _refusal: Option<Value>,
    /// Accepted for compatibility; not used.
    #[serde(rename = "audio")]
    pub _audio: Option<Value>,
    /// Accepted for compatibility; not used.
    #[serde(rename = "function_call")]
    pub _function_call: Option<Value>,
    /// Accepted for compatibility; not used.
    #[serde(rename = "annotations")]
    pub _annotations: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub _kind: Option<String>,
    pub function: InFunctionCall,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: InFunction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFunction {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub parameters: Value,
    /// Accepted for compatibility; not used.
    #[serde(rename = "strict")]
    pub _strict: Option<bool>,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message).with_param(param)
}

fn function_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Text of a message's `content`: a string, or an array of `{"type": "text", "text": …}` parts.
fn content_text(content: Option<Value>, i: usize) -> ApiResult<Option<String>> {
    match content {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(bad(
                            &format!("messages[{i}].content"),
                            "only text content parts are supported",
                        ));
                    }
                }
            }
            Ok(Some(text))
        }
        Some(_) => Err(bad(
            &format!("messages[{i}].content"),
            "content must be a string or an array of text parts",
        )),
    }
}

/// Validates an OpenAI request and turns it into the bus's model request.
pub(super) fn to_model_request(r: ChatRequest) -> ApiResult<(ModelName, ModelRequest, bool, bool)> {
    let model = ModelName::parse(r.model.clone()).map_err(|_| {
        ApiError::not_found(
            "model_not_found",
            format!("The model `{}` does not exist", r.model),
        )
        .with_param("model")
    })?;
    if r.messages.is_empty() {
        return Err(bad("messages", "messages must not be empty"));
    }
    if r.top_logprobs.is_some_and(|n| n > 20) {
        return Err(bad("top_logprobs", "top_logprobs must be between 0 and 20"));
    }
    if r.n.is_some_and(|n| n != 1) {
        return Err(bad("n", "only n = 1 is supported"));
    }
    if let Some(t) = r.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(bad(
            "temperature",
            format!("temperature must be between 0 and 2, got {t}"),
        ));
    }
    if let Some(p) = r.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
        return Err(bad(
            "top_p",
            format!("top_p must be between 0 and 1, got {p}"),
        ));
    }
    for (name, v) in [
        ("presence_penalty", r.presence_penalty),
        ("frequency_penalty", r.frequency_penalty),
    ] {
        if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(bad(name, format!("{name} must be between -2 and 2")));
        }
    }
    match &r.stop {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(bad(
                "stop",
                "stop must be a string or an array of at most 4 strings",
            ));
        }
    }
    let mut messages = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!("unknown role {other:?}"),
                ));
            }
        };
        let tool_call_id = match (role, m.tool_call_id) {
            (Role::Tool, None) => {
                return Err(bad(
                    &format!("messages[{i}].tool_call_id"),
                    "a tool message needs tool_call_id",
                ));
            }
            (_, id) => id
                .map(CallId::parse)
                .transpose()
                .map_err(|e| bad(&format!("messages[{i}].tool_call_id"), e.to_string()))?,
        };
        let mut tool_calls = Vec::new();
        for (j, c) in m.tool_calls.into_iter().flatten().enumerate() {
            let id = CallId::parse(c.id)
                .map_err(|e| bad(&format!("messages[{i}].tool_calls[{j}].id"), e.to_string()))?;
            let arguments = serde_json::from_str(&c.function.arguments)
                .unwrap_or(Value::String(c.function.arguments));
            tool_calls.push(ToolCallSpec {
                id,
                name: c.function.name,
                arguments,
            });
        }
        messages.push(ChatMessage {
            role,
            content: content_text(m.content, i)?,
            tool_calls,
            tool_call_id,
        });
    }
    let mut tools = Vec::new();
    for (i, t) in r.tools.into_iter().flatten().enumerate() {
        if t.kind != "function" {
            return Err(bad(
                &format!("tools[{i}].type"),
                "only function tools are supported",
            ));
        }
        if !function_name_ok(&t.function.name) {
            return Err(bad(
                &format!("tools[{i}].function.name"),
                "function names are [a-zA-Z0-9_.-]{1,64}",
            ));
        }
        tools.push(ToolDef {
            name: t.function.name,
            description: t.function.description,
            parameters: t.function.parameters,
        });
    }
    let mut params = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            params.insert(k.to_owned(), v);
        }
    };
    put("tool_choice", r.tool_choice);
    put(
        "parallel_tool_calls",
        r.parallel_tool_calls.map(Value::from),
    );
    put("response_format", r.response_format);
    put("stop", r.stop);
    put("max_tokens", r.max_tokens.map(Value::from));
    put(
        "max_completion_tokens",
        r.max_completion_tokens.map(Value::from),
    );
    put("temperature", r.temperature.map(Value::from));
    put("top_p", r.top_p.map(Value::from));
    put("seed", r.seed.map(Value::from));
    put("presence_penalty", r.presence_penalty.map(Value::from));
    put("frequency_penalty", r.frequency_penalty.map(Value::from));
    put("logit_bias", r.logit_bias);
    put("user", r.user.map(Value::from));
    put("logprobs", r.logprobs.map(Value::from));
    put("top_logprobs", r.top_logprobs.map(Value::from));
    put("reasoning_effort", r.reasoning_effort.map(Value::from));
    put("service_tier", r.service_tier.map(Value::from));
    put("verbosity", r.verbosity.map(Value::from));
    put("modalities", r.modalities.map(Value::from));
    put("prompt_cache_key", r.prompt_cache_key.map(Value::from));
    put(
        "prompt_cache_retention",
        r.prompt_cache_retention.map(Value::from),
    );
    put("safety_identifier", r.safety_identifier.map(Value::from));
    put("prediction", r.prediction);
    put("audio", r.audio);
    put("web_search_options", r.web_search_options);
    put("prompt_cache_options", r.prompt_cache_options);
    put("moderation", r.moderation);
    put("functions", r.functions);
    put("function_call", r.function_call);
    let include_usage = r.stream_options.is_some_and(|o| o.include_usage);
    let req = ModelRequest {
        run_id: None,
        step: 0,
        messages,
        tools,
        config: Value::Null,
        stream: r.stream,
        params,
    };
    Ok((model, req, r.stream, include_usage))
}
