//! The `openai` backend: any OpenAI-compatible HTTP upstream (OpenAI, vLLM, llama.cpp server,
//! Ollama). The upstream is always asked to stream; deltas pass straight through to the caller.
//! Connections are pooled by one `reqwest::Client` per route. A transient failure (connection
//! error, 429, a 5xx not caused by the request itself) is retried with exponential backoff, within
//! a per-request budget — only before the first token, never after. Upstream errors are
//! sanitized (`upstream_error`); the route's quirk switches are in `compat`. The gateway enforces
//! the completion-token limit on the stream itself, and counts usage the upstream did not report
//! (`estimate`). The API key comes from an environment variable or a file and is never logged.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use agentos_bus::envelope::{
    ChatMessage, ErrorBody, ModelReply, ModelRequest, Role, ToolCallSpec, Usage,
};
use agentos_bus::id::CallId;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::DeltaSink;
use super::compat::Compat;
use super::{estimate, upstream_error};

/// Longest total backoff of one request's retries.
const RETRY_BUDGET: Duration = Duration::from_secs(10);

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
pub struct OpenAi {
    http: reqwest::Client,
    /// e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    base_url: String,
    api_key: Option<Secret>,
    /// Longest wait for the response headers of one attempt.
    request_timeout: Duration,
    /// Longest wait between two streamed chunks.
    idle_timeout: Duration,
    max_retries: usize,
    compat: Compat,
}

#[derive(Clone, Debug)]
pub struct OpenAiOptions {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_retries: usize,
    pub compat: Compat,
}

/// Why an attempt failed, and whether another attempt may help.
struct Failure {
    error: ErrorBody,
    retryable: bool,
}

impl OpenAi {
    pub fn new(o: OpenAiOptions) -> crate::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(o.request_timeout)
            .build()
            .map_err(|source| crate::Error::HttpClient {
                what: format!("the upstream {}", o.base_url),
                source,
            })?;
        Ok(Self {
            http,
            base_url: o.base_url.trim_end_matches('/').to_owned(),
            api_key: o.api_key,
            request_timeout: o.request_timeout,
            idle_timeout: o.idle_timeout,
            max_retries: o.max_retries,
            compat: o.compat,
        })
    }

    /// One POST of `body` to `<base>/<path>`, with the key, within the request timeout; the
    /// caller reads the answer. Used by the embeddings pass-through.
    pub(super) async fn post(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, ErrorBody> {
        let mut r = self
            .http
            .post(format!("{}/{path}", self.base_url))
            .json(body);
        if let Some(key) = &self.api_key {
            r = r.bearer_auth(&key.0);
        }
        match tokio::time::timeout(self.request_timeout, r.send()).await {
            Err(_) => Err(ErrorBody::new(
                "upstream_timeout",
                format!(
                    "no response from the upstream within {:?}",
                    self.request_timeout
                ),
            )),
            Ok(Err(e)) => Err(ErrorBody::new(
                "upstream_unavailable",
                format!("cannot reach the upstream: {}", without_url(&e)),
            )),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    pub(super) async fn complete(
        &self,
        upstream_model: &str,
        req: &ModelRequest,
        sink: &mut DeltaSink<'_>,
    ) -> ModelReply {
        let names = Aliases::new(req);
        let defaults = match config_params(req) {
            Ok(d) => d,
            Err(e) => return ModelReply::Error { error: e },
        };
        let (body, limit) = request_body(upstream_model, req, defaults, &names, &self.compat);
        let url = format!("{}/chat/completions", self.base_url);
        let send = || async {
            let mut r = self.http.post(&url).json(&body);
            if let Some(key) = &self.api_key {
                r = r.bearer_auth(&key.0);
            }
            // The upstream joins the run's trace, as a child of this model call's span.
            for (name, value) in agentos_bus::trace::current_headers() {
                r = r.header(name, value);
            }
            let resp = tokio::time::timeout(self.request_timeout, r.send())
                .await
                .map_err(|_| Failure {
                    error: ErrorBody::new(
                        "upstream_timeout",
                        format!(
                            "no response from the upstream within {:?}",
                            self.request_timeout
                        ),
                    ),
                    retryable: true,
                })?
                .map_err(|e| Failure {
                    error: ErrorBody::new(
                        "upstream_unavailable",
                        format!("cannot reach the upstream: {}", without_url(&e)),
                    ),
                    retryable: true,
                })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let text = resp.text().await.unwrap_or_default();
            let c = upstream_error::classify(status.as_u16(), &text);
            // The full answer goes to the log, once; the caller gets the sanitized message.
            tracing::warn!(status = status.as_u16(), code = c.code, retryable = c.retryable, body = %text, "upstream error");
            Err(Failure {
                error: ErrorBody::new(c.code, c.message),
                retryable: c.retryable,
            })
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.max_retries)
            .with_total_delay(Some(RETRY_BUDGET));
        let resp = match send
            .retry(backoff)
            .when(|f: &Failure| f.retryable)
            .notify(|f: &Failure, after| tracing::warn!(code = %f.error.code, ?after, "upstream attempt failed; retrying"))
            .await
        {
            Ok(r) => r,
            Err(f) => return ModelReply::Error { error: f.error },
        };
        self.stream(resp, req, &names, limit, sink).await
    }

    /// Reads the upstream's SSE stream, passing deltas through; builds the final reply. Stops
    /// at `limit` generated chunks whatever the upstream does (`finish_reason: "length"`).
    async fn stream(
        &self,
        resp: reqwest::Response,
        req: &ModelRequest,
        names: &Aliases,
        limit: Option<u64>,
        sink: &mut DeltaSink<'_>,
    ) -> ModelReply {
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut acc = Acc::default();
        loop {
            let chunk = match tokio::time::timeout(self.idle_timeout, body.next()).await {
                Err(_) => {
                    return error(
                        "upstream_timeout",
                        format!("the upstream sent nothing for {:?}", self.idle_timeout),
                    );
                }
                Ok(None) => {
                    return error(
                        "upstream_stream_interrupted",
                        "the upstream closed the stream before it finished",
                    );
                }
                Ok(Some(Err(e))) => {
                    return error(
                        "upstream_stream_interrupted",
                        format!("the upstream stream broke: {}", without_url(&e)),
                    );
                }
                Ok(Some(Ok(bytes))) => bytes,
            };
            buf.extend_from_slice(&chunk);
            while let Some(end) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end).collect();
                for line in String::from_utf8_lossy(&event).lines() {
                    let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                        continue;
                    };
                    if data == "[DONE]" {
                        return acc.finish(req);
                    }
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        return error(
                            "invalid_upstream_reply",
                            "the upstream sent a chunk that is not JSON",
                        );
                    };
                    if let Some(e) = v.get("error") {
                        tracing::warn!(error = %e, "upstream error in its stream");
                        return error("upstream_error", upstream_error::in_stream(e));
                    }
                    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                        acc.usage(u);
                    }
                    let Some(choice) = v["choices"].get(0) else {
                        continue;
                    };
                    if generates(&choice["delta"]) && limit.is_some_and(|l| acc.fragments >= l) {
                        // The upstream ignored the limit: stop here (dropping the body closes
                        // the connection, which stops a well-behaved server generating).
                        acc.finish_reason = Some("length".into());
                        return acc.finish(req);
                    }
                    acc.choice(choice, names, sink).await;
                }
            }
        }
    }
}

/// Whether a delta carries generated text: content or tool-call arguments.
fn generates(delta: &Value) -> bool {
    delta["content"].as_str().is_some_and(|t| !t.is_empty())
        || delta["tool_calls"].as_array().is_some_and(|calls| {
            calls.iter().any(|c| {
                c["function"]["arguments"]
                    .as_str()
                    .is_some_and(|a| !a.is_empty())
            })
        })
}

/// One tool call as it streams in.
#[derive(Clone, Default)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// What the stream has said so far.
#[derive(Default)]
struct Acc {
    content: String,
    calls: Vec<Call>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// Chunks that carried generated text.
    fragments: u64,
    logprobs: Vec<Value>,
}

impl Acc {
    /// Takes the upstream's usage figures; absent or all-zero figures are unknown, not zero.
    fn usage(&mut self, u: &Value) {
        let (p, c) = (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64());
        if p.unwrap_or(0) + c.unwrap_or(0) > 0 {
            self.usage = Some(Usage::new(p.unwrap_or(0), c.unwrap_or(0)));
        }
    }

    /// Applies one streamed choice, passing its deltas on. Servers that repeat a call's `id` and
    /// `function.name` in every delta (llama-cpp-python) are read as sending them once, and
    /// they are passed on once: clients append every string fragment.
    async fn choice(&mut self, choice: &Value, names: &Aliases, sink: &mut DeltaSink<'_>) {
        if let Some(r) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(r.to_owned());
        }
        if let Some(lp) = choice["logprobs"]["content"].as_array() {
            self.logprobs.extend(lp.iter().cloned());
        }
        let delta = &choice["delta"];
        if generates(delta) {
            self.fragments += 1;
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.content.push_str(text);
            sink.send(text.to_owned()).await;
        }
        for tc in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = tc["index"].as_u64().unwrap_or(0) as usize;
            if self.calls.len() <= index {
                self.calls.resize(index + 1, Call::default());
            }
            let call = &mut self.calls[index];
            let id = tc["id"]
                .as_str()
                .filter(|id| !id.is_empty() && call.id.is_empty())
                .map(str::to_owned);
            if let Some(id) = &id {
                call.id.clone_from(id);
            }
            let name = tc["function"]["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(|n| names.original(n))
                .filter(|n| *n != call.name);
            if let Some(name) = &name {
                call.name.push_str(name);
            }
            let args = tc["function"]["arguments"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            call.arguments.push_str(&args);
            if id.is_some() || name.is_some() || !args.is_empty() {
                sink.tool_call(index as u32, id, name, args).await;
            }
        }
    }

    fn finish(self, req: &ModelRequest) -> ModelReply {
        let finish_reason = self.finish_reason.unwrap_or_else(|| "stop".into());
        let chars = self.content.len()
            + self
                .calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum::<usize>();
        let (usage, usage_estimated) = match self.usage {
            Some(u) => (u, false),
            None => (estimate::usage(req, self.fragments, chars), true),
        };
        let logprobs =
            (!self.logprobs.is_empty()).then(|| json!({"content": self.logprobs, "refusal": null}));
        final_reply(
            self.content,
            self.calls,
            finish_reason,
            usage,
            usage_estimated,
            logprobs,
        )
    }
}

fn error(code: &str, message: impl Into<String>) -> ModelReply {
    ModelReply::Error {
        error: ErrorBody::new(code, message),
    }
}

/// reqwest errors print the URL, which may carry credentials or internal hosts.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<upstream>");
    }
    s
}

fn find_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn final_reply(
    content: String,
    calls: Vec<Call>,
    finish_reason: String,
    usage: Usage,
    usage_estimated: bool,
    logprobs: Option<Value>,
) -> ModelReply {
    let mut tool_calls = Vec::with_capacity(calls.len());
    for (i, c) in calls.into_iter().enumerate() {
        let id = CallId::parse(if c.id.is_empty() {
            format!("call_{i}")
        } else {
            c.id
        });
        let Ok(id) = id else {
            return error(
                "invalid_upstream_reply",
                "the upstream sent a tool call id that is not [A-Za-z0-9_-]{1,256}",
            );
        };
        let arguments = serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments));
        tool_calls.push(ToolCallSpec {
            id,
            name: c.name,
            arguments,
        });
    }
    ModelReply::Final {
        message: ChatMessage {
            role: Role::Assistant,
            content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
            tool_calls,
            tool_call_id: None,
        },
        usage,
        finish_reason,
        usage_estimated,
        logprobs,
    }
}

/// OpenAI function names are `[a-zA-Z0-9_-]{1,64}`; AgentOS tool names may be dotted
/// (`math.eval`). Dotted names travel upstream as aliases and come back translated.
struct Aliases {
    to_upstream: HashMap<String, String>,
    to_original: HashMap<String, String>,
}

impl Aliases {
    fn new(req: &ModelRequest) -> Self {
        let mut to_upstream = HashMap::new();
        let mut to_original = HashMap::new();
        let mut taken: std::collections::HashSet<String> =
            req.tools.iter().map(|t| t.name.clone()).collect();
        for t in req.tools.iter().filter(|t| t.name.contains('.')) {
            let mut alias = t.name.replace('.', "_");
            while taken.contains(&alias) {
                alias.push('_');
            }
            taken.insert(alias.clone());
            to_upstream.insert(t.name.clone(), alias.clone());
            to_original.insert(alias, t.name.clone());
        }
        Self {
            to_upstream,
            to_original,
        }
    }

    fn upstream<'a>(&'a self, name: &'a str) -> &'a str {
        self.to_upstream.get(name).map_or(name, String::as_str)
    }

    fn original(&self, name: &str) -> String {
        self.to_original
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }
}

/// The request parameters an agent's (or the route's) `model_config` sets: `{"params": {…}}`,
/// under the request's own. Like the Agents SDK's `reset_tool_choice`, a `tool_choice` from
/// here is not sent once the model has a tool result to answer from, so a forced call cannot
/// loop.
fn config_params(req: &ModelRequest) -> Result<Map<String, Value>, ErrorBody> {
    let params = match &req.config {
        Value::Null => return Ok(Map::new()),
        Value::Object(o) => match o.get("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => {
                return Err(ErrorBody::new(
                    "invalid_model_config",
                    "model_config.params must be an object of OpenAI request parameters",
                ));
            }
        },
        _ => {
            return Err(ErrorBody::new(
                "invalid_model_config",
                "the openai backend's model_config is an object: {\"params\": {…}}",
            ));
        }
    };
    let answered = req.messages.last().is_some_and(|m| m.role == Role::Tool);
    Ok(params
        .into_iter()
        .filter(|(k, _)| !(answered && k == "tool_choice"))
        .collect())
}

/// The upstream request, and the completion-token limit it carries.
fn request_body(
    model: &str,
    req: &ModelRequest,
    defaults: Map<String, Value>,
    names: &Aliases,
    compat: &Compat,
) -> (Value, Option<u64>) {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let mut v = json!({"role": role(m.role)});
            if m.role == Role::Assistant {
                compat.assistant_content(&mut v, m.content.as_deref(), !m.tool_calls.is_empty());
            } else {
                v["content"] = json!(m.content);
            }
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function", "function": {
                            "name": names.upstream(&c.name), "arguments": arguments_string(&c.arguments)}})
                    })
                    .collect();
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            v
        })
        .collect();
    let mut body = Map::new();
    // Caller parameters first, filtered for the route; what must hold for streaming wins.
    let mut params = req.params.clone();
    for (k, v) in defaults {
        params.entry(k).or_insert(v);
    }
    let limit = compat.params(&mut params);
    body.extend(params);
    // A tool_choice naming a dotted tool names its alias.
    if let Some(name) = body
        .get_mut("tool_choice")
        .and_then(|c| c.get_mut("function"))
        .and_then(|f| f.get_mut("name"))
        && let Some(n) = name.as_str()
    {
        *name = json!(names.upstream(n));
    }
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": names.upstream(&t.name), "description": t.description});
                if !t.parameters.is_null() {
                    f["parameters"] = t.parameters.clone();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    (Value::Object(body), limit)
}

/// OpenAI carries arguments as a JSON string.
pub fn arguments_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "{}".into(),
        v => v.to_string(),
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

#[cfg(test)]
mod tests {
    use agentos_bus::envelope::{ChatMessage, ModelRequest, Role, ToolCallSpec, ToolDef};
    use serde_json::json;

    use super::{Aliases, OpenAiOptions, Secret, config_params, request_body};

    /// An upstream's API key never reaches a log line: the route and its options print it
    /// redacted (the worker logs its routes with `?`).
    #[test]
    fn an_api_key_never_prints() {
        let opts = OpenAiOptions {
            base_url: "https://api.example.com/v1".into(),
            api_key: Some(Secret::new("sk-live-do-not-print")),
            request_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            max_retries: 0,
            compat: Default::default(),
        };
        let route = super::OpenAi::new(opts.clone()).expect("client");
        for shown in [format!("{opts:?}"), format!("{route:?}")] {
            assert!(!shown.contains("sk-live"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn config_params_are_defaults_and_a_forced_tool_choice_resets() {
        let mut req = ModelRequest {
            run_id: None,
            step: 1,
            messages: vec![ChatMessage::text(Role::User, "6*7?")],
            tools: Vec::new(),
            config: json!({"params": {"tool_choice": "required", "temperature": 0}}),
            stream: false,
            params: Default::default(),
        };
        let p = config_params(&req).expect("params");
        assert_eq!(p["tool_choice"], "required");
        req.messages.push(ChatMessage {
            role: Role::Tool,
            content: Some("42".into()),
            tool_calls: Vec::new(),
            tool_call_id: Some("call_1".parse().expect("id")),
        });
        let p = config_params(&req).expect("params");
        assert!(p.get("tool_choice").is_none() && p["temperature"] == 0);
        req.config = json!("nope");
        assert_eq!(
            config_params(&req).expect_err("invalid").code,
            "invalid_model_config"
        );
    }

    #[test]
    fn dotted_tool_names_travel_as_aliases_and_params_pass_through() {
        let mut params = serde_json::Map::new();
        params.insert("temperature".into(), json!(0.2));
        params.insert("stream".into(), json!(false));
        params.insert(
            "tool_choice".into(),
            json!({"type": "function", "function": {"name": "math.eval"}}),
        );
        let req = ModelRequest {
            run_id: None,
            step: 0,
            messages: vec![ChatMessage {
                role: Role::Assistant,
                content: None,
                tool_calls: vec![ToolCallSpec {
                    id: "call_1".parse().expect("id"),
                    name: "math.eval".into(),
                    arguments: json!({"expr": "1"}),
                }],
                tool_call_id: None,
            }],
            tools: vec![
                ToolDef {
                    name: "math.eval".into(),
                    description: String::new(),
                    parameters: json!(null),
                },
                ToolDef {
                    name: "math_eval".into(),
                    description: String::new(),
                    parameters: json!(null),
                },
            ],
            config: json!(null),
            stream: false,
            params,
        };
        let names = Aliases::new(&req);
        let (body, _) = request_body(
            "up-model",
            &req,
            Default::default(),
            &names,
            &Default::default(),
        );
        assert_eq!(body["model"], "up-model");
        assert_eq!(
            body["stream"], true,
            "the upstream is always asked to stream"
        );
        assert_eq!(body["temperature"], 0.2);
        let alias = body["tools"][0]["function"]["name"]
            .as_str()
            .expect("alias")
            .to_owned();
        assert_ne!(alias, "math_eval", "aliases do not collide with real names");
        assert_eq!(body["tools"][1]["function"]["name"], "math_eval");
        assert_eq!(body["tool_choice"]["function"]["name"], alias.as_str());
        assert_eq!(
            body["messages"][0]["tool_calls"][0]["function"]["name"],
            alias.as_str()
        );
        assert_eq!(
            body["messages"][0]["tool_calls"][0]["function"]["arguments"],
            "{\"expr\":\"1\"}"
        );
        assert_eq!(names.original(&alias), "math.eval");
    }
}
