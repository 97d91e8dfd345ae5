//! Per-route switches for what OpenAI-compatible upstreams accept (`[model.routes.<name>.compat]`):
//! which request parameters pass through, where the completion-token limit goes, and how an
//! assistant message's `null` content is sent. The defaults suit llama.cpp, vLLM, Ollama and
//! OpenAI's own non-reasoning models.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A route's compatibility settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Compat {
    /// The request field that carries the completion-token limit upstream.
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
    /// Only these request parameters pass through (default: every one the edge accepted).
    pub allow_params: Option<Vec<String>>,
    /// These request parameters are dropped (default: none).
    #[serde(default)]
    pub deny_params: Vec<String>,
    /// How an assistant message with tool calls and `null` content is sent.
    #[serde(default)]
    pub null_content: NullContent,
    /// How a `json_schema` response format is sent.
    #[serde(default)]
    pub response_format: ResponseFormat,
}

/// `as-sent` (default), or `json-object-schema`: `{"type": "json_object", "schema": …}`, the
/// form llama-cpp-python's server constrains output with (it refuses `json_schema`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseFormat {
    #[default]
    AsSent,
    JsonObjectSchema,
}

/// Where the limit goes: `max_tokens` (default; llama.cpp, vLLM, Ollama read only this one),
/// `max_completion_tokens` (OpenAI's reasoning models refuse `max_tokens`), or `both`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
    Both,
}

/// `empty` (default): `""`, which every upstream takes; `null`: as OpenAI's schema allows;
/// `omit`: no `content` key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullContent {
    #[default]
    Empty,
    Null,
    Omit,
}

/// The two fields a completion-token limit may arrive in.
const LIMIT_FIELDS: [&str; 2] = ["max_completion_tokens", "max_tokens"];

impl Compat {
    /// Filters the caller's parameters for this upstream and writes the completion-token limit
    /// into the field(s) it reads. Returns the limit.
    pub fn params(&self, params: &mut Map<String, Value>) -> Option<u64> {
        let limit = LIMIT_FIELDS
            .iter()
            .find_map(|k| params.get(*k).and_then(Value::as_u64));
        params.retain(|k, _| {
            let keep = !LIMIT_FIELDS.contains(&k.as_str())
                && self
                    .allow_params
                    .as_ref()
                    .is_none_or(|allow| allow.iter().any(|a| a == k))
                && !self.deny_params.iter().any(|d| d == k);
            if !keep && !LIMIT_FIELDS.contains(&k.as_str()) {
                tracing::debug!(param = %k, "request parameter not passed to this upstream");
            }
            keep
        });
        if self.response_format == ResponseFormat::JsonObjectSchema
            && let Some(f) = params.get_mut("response_format")
            && f["type"] == "json_schema"
        {
            let schema = f["json_schema"]["schema"].take();
            *f = serde_json::json!({"type": "json_object", "schema": schema});
        }
        if let Some(n) = limit {
            let fields: &[&str] = match self.max_tokens_field {
                MaxTokensField::MaxTokens => &["max_tokens"],
                MaxTokensField::MaxCompletionTokens => &["max_completion_tokens"],
                MaxTokensField::Both => &LIMIT_FIELDS,
            };
            for f in fields {
                params.insert((*f).to_owned(), Value::from(n));
            }
        }
        limit
    }

    /// Sets an assistant message's `content` (`None`: it was `null`) on `msg`.
    pub fn assistant_content(&self, msg: &mut Value, content: Option<&str>, has_calls: bool) {
        match (content, has_calls, self.null_content) {
            (Some(c), _, _) => msg["content"] = Value::from(c),
            (None, true, NullContent::Empty) => msg["content"] = Value::from(""),
            (None, true, NullContent::Omit) => {}
            (None, _, _) => msg["content"] = Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_limit_goes_where_the_upstream_reads_it() {
        let mut p = params(json!({"max_completion_tokens": 16, "temperature": 0}));
        assert_eq!(Compat::default().params(&mut p), Some(16));
        assert_eq!(
            Value::Object(p),
            json!({"max_tokens": 16, "temperature": 0})
        );
        let both = Compat {
            max_tokens_field: MaxTokensField::Both,
            ..Compat::default()
        };
        let mut p = params(json!({"max_tokens": 8}));
        assert_eq!(both.params(&mut p), Some(8));
        assert_eq!(
            Value::Object(p),
            json!({"max_tokens": 8, "max_completion_tokens": 8})
        );
    }

    #[test]
    fn allow_and_deny_lists_filter_parameters() {
        let c: Compat = serde_json::from_value(
            json!({"allow-params": ["temperature", "logprobs"], "deny-params": ["logprobs"]}),
        )
        .expect("compat");
        let mut p = params(
            json!({"temperature": 1, "logprobs": true, "service_tier": "auto", "max_tokens": 4}),
        );
        assert_eq!(c.params(&mut p), Some(4));
        assert_eq!(Value::Object(p), json!({"temperature": 1, "max_tokens": 4}));
        assert!(serde_json::from_value::<Compat>(json!({"nope": 1})).is_err());
    }

    #[test]
    fn json_schema_can_travel_as_json_object() {
        let c: Compat =
            serde_json::from_value(json!({"response-format": "json-object-schema"})).expect("c");
        let mut p = params(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "W", "schema": {"type": "object"}}}}));
        c.params(&mut p);
        assert_eq!(
            p["response_format"],
            json!({"type": "json_object", "schema": {"type": "object"}})
        );
    }

    #[test]
    fn null_content_is_normalized_per_route() {
        let mut m = json!({"role": "assistant"});
        Compat::default().assistant_content(&mut m, None, true);
        assert_eq!(m["content"], "");
        for (mode, want) in [
            (NullContent::Null, Some(Value::Null)),
            (NullContent::Omit, None),
        ] {
            let mut m = json!({"role": "assistant"});
            let c = Compat {
                null_content: mode,
                ..Compat::default()
            };
            c.assistant_content(&mut m, None, true);
            assert_eq!(m.get("content").cloned(), want);
        }
    }
}
