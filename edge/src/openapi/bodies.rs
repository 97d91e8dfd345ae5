//! Request body properties whose schema the annotations cannot state (free JSON values typed
//! `Object`, unions, cross-field rules), written out to match what the handlers check.

use agentos_bus::id::pattern;
use serde_json::{Value, json};

use crate::agent_actions::MAX_CLIENT_TOOLS;
use crate::agents::{MAX_GRANTS, MAX_HISTORY_MESSAGES};
use crate::embeddings::{MAX_INPUT_CHARS, MAX_INPUTS};
use crate::memory_search::MAX_QUERY_CHARS;
use crate::runs::MAX_INPUT_CHARS as MAX_RUN_INPUT_CHARS;

/// A namespace template (`users.{principal}.notes`): 1 to 8 dot-separated tokens or
/// placeholders, as `agentos_bus::grant::NamespaceTemplate::parse` reads it.
pub(super) const NAMESPACE_TEMPLATE: &str = "^([a-z0-9][a-z0-9_-]{0,62}|\\{(principal|thread|agent)\\})(\\.([a-z0-9][a-z0-9_-]{0,62}|\\{(principal|thread|agent)\\})){0,7}$";

/// Sets the listed properties of the named component schemas, and the cross-field rules.
pub(super) fn complete(schemas: &mut serde_json::Map<String, Value>) {
    for (schema, property, value) in properties() {
        if let Some(props) = schemas
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(Value::as_object_mut)
        {
            props.insert(property.into(), value);
        }
    }
    if let Some(run) = schemas.get_mut("CreateRun").and_then(Value::as_object_mut) {
        // `multitask_strategy` applies to runs on a thread (`400 invalid_multitask_strategy`).
        run.insert(
            "if".into(),
            json!({"required": ["multitask_strategy"],
                "properties": {"multitask_strategy": {"type": "string"}}}),
        );
        run.insert(
            "then".into(),
            json!({"required": ["thread_id"], "properties": {"thread_id": {"type": "string"}}}),
        );
    }
}

fn any() -> Value {
    json!({})
}

fn properties() -> Vec<(&'static str, &'static str, Value)> {
    let nullable = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            let t = o.remove("type").unwrap_or(Value::Null);
            o.insert("type".into(), json!([t, "null"]));
        }
        v
    };
    let range =
        |min: f64, max: f64| json!({"type": ["number", "null"], "minimum": min, "maximum": max});
    let text_part = json!({"type": "object", "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}}});
    let message = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["role"],
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"oneOf": [
                {"type": "null"}, {"type": "string"},
                {"type": "array", "items": text_part}
            ]},
            "name": {"type": ["string", "null"]},
            "tool_calls": {"type": ["array", "null"], "items": {
                "type": "object", "additionalProperties": false, "required": ["id", "function"],
                "properties": {
                    "id": {"type": "string", "pattern": pattern::CALL_ID},
                    "type": {"type": ["string", "null"]},
                    "function": {"type": "object", "additionalProperties": false,
                        "required": ["name"],
                        "properties": {"name": {"type": "string"},
                            "arguments": {"type": "string"}}}
                }
            }},
            "tool_call_id": {"type": ["string", "null"], "pattern": pattern::CALL_ID},
            "refusal": any(), "audio": any(), "function_call": any(), "annotations": any()
        },
        // A tool message answers a call: it names it.
        "if": {"properties": {"role": {"const": "tool"}}},
        "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string"}}}
    });
    let tool = json!({
        "type": "object", "additionalProperties": false, "required": ["type", "function"],
        "properties": {
            "type": {"const": "function"},
            "function": {"type": "object", "additionalProperties": false, "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-zA-Z0-9_.-]{1,64}$"},
                    "description": {"type": "string"},
                    "parameters": any(),
                    "strict": {"type": ["boolean", "null"]}
                }}
        }
    });
    let mut out = vec![
        (
            "ChatRequest",
            "messages",
            json!({"type": "array", "minItems": 1, "items": message}),
        ),
        (
            "ChatRequest",
            "tools",
            json!({"type": ["array", "null"], "items": tool}),
        ),
        (
            "ChatRequest",
            "stream_options",
            json!({"type": ["object", "null"], "additionalProperties": false, "properties": {
                "include_usage": {"type": "boolean"},
                "include_obfuscation": {"type": ["boolean", "null"]}}}),
        ),
        (
            "ChatRequest",
            "stop",
            json!({"oneOf": [{"type": "null"}, {"type": "string"},
                {"type": "array", "maxItems": 4, "items": {"type": "string"}}]}),
        ),
        (
            "ChatRequest",
            "n",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": 1}),
        ),
        (
            "ChatRequest",
            "top_logprobs",
            json!({"type": ["integer", "null"], "minimum": 0, "maximum": 20}),
        ),
        ("ChatRequest", "temperature", range(0.0, 2.0)),
        ("ChatRequest", "top_p", range(0.0, 1.0)),
        ("ChatRequest", "presence_penalty", range(-2.0, 2.0)),
        ("ChatRequest", "frequency_penalty", range(-2.0, 2.0)),
        (
            "EmbeddingsBody",
            "input",
            json!({"oneOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS},
                {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS,
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS}}
            ]}),
        ),
        (
            "EmbeddingsBody",
            "encoding_format",
            json!({"enum": ["float", "base64", null]}),
        ),
        (
            "SearchRequest",
            "filter",
            json!({"type": ["object", "null"]}),
        ),
        (
            "SearchRequest",
            "query",
            json!({"type": ["string", "null"], "maxLength": MAX_QUERY_CHARS}),
        ),
        ("ToolOutputBody", "output", any()),
        (
            "CreateRun",
            "input",
            json!({"type": "string", "maxLength": MAX_RUN_INPUT_CHARS}),
        ),
        (
            "CreateRun",
            "expires_at",
            nullable(json!({"type": "string", "format": "date-time"})),
        ),
        (
            "Placement",
            "node",
            json!({"type": "string", "pattern": pattern::TOKEN}),
        ),
        (
            "MemoryBody",
            "namespaces",
            json!({"type": "array", "maxItems": MAX_GRANTS,
                "items": {"type": "string", "pattern": NAMESPACE_TEMPLATE}}),
        ),
    ];
    // Free JSON the chat route passes on as it is.
    for name in [
        "tool_choice",
        "response_format",
        "logit_bias",
        "prediction",
        "audio",
        "web_search_options",
        "prompt_cache_options",
        "moderation",
        "functions",
        "function_call",
        "metadata",
    ] {
        out.push(("ChatRequest", name, any()));
    }
    let history = json!({"type": ["object", "null"], "additionalProperties": false, "properties": {
        "max_messages": {"type": ["integer", "null"], "minimum": 0,
            "maximum": MAX_HISTORY_MESSAGES},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX}}});
    let client_tools = |nullable: bool| {
        json!({"type": if nullable { json!(["array", "null"]) } else { json!("array") },
            "maxItems": MAX_CLIENT_TOOLS,
            "items": {"$ref": "#/components/schemas/ClientToolBody"}})
    };
    for (schema, nullable) in [("CreateAgent", false), ("UpdateAgent", true)] {
        out.push((schema, "history", history.clone()));
        out.push((schema, "client_tools", client_tools(nullable)));
    }
    out
}
