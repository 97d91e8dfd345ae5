//! The OpenAI-compatible API: `POST /v1/chat/completions` (plain and streamed, tools included)
//! and `GET /v1/models`, served by the model workers over the bus — the edge never calls an
//! upstream itself. Requests, chunks and errors have OpenAI's shapes, so the official SDKs work.
//! Every field of OpenAI's request schema is accepted: those AgentOS reads are validated, the
//! others pass to the model worker, whose route decides what reaches the upstream.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_bus::envelope::{
    ChatMessage, Envelope, ErrorBody, ModelReply, ModelRequest, Role, ToolCallSpec, ToolDef, Usage,
};
use agentos_bus::id::{CallId, ModelName};
use agentos_bus::{CallMeta, Error as BusError, MODEL_SERVICE, Replies, subject};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::{AppState, AuthContext};

/// Longest wait for the next reply chunk from a model worker.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", axum::routing::any(unsupported))
        .route("/v1/moderations", axum::routing::any(unsupported))
        .route("/v1/responses", axum::routing::any(unsupported))
}

/// OpenAI routes AgentOS does not serve: a 404 that names the ones it does.
async fn unsupported(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(
        "unsupported_route",
        format!(
            "{} is not served: AgentOS speaks the Chat Completions and Embeddings APIs (POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models, GET /v1/models/{{id}})",
            uri.path()
        ),
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    #[schema(value_type = Vec<Object>)]
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
fn to_model_request(r: ChatRequest) -> ApiResult<(ModelName, ModelRequest, bool, bool)> {
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

/// The HTTP status for a model worker's error code.
pub(crate) fn model_error(e: ErrorBody) -> ApiError {
    let status = match e.code.as_str() {
        "model_not_found" => StatusCode::NOT_FOUND,
        "invalid_request"
        | "invalid_model_config"
        | "max_tokens_exceeded"
        | "upstream_bad_request"
        | "script_exhausted" => StatusCode::BAD_REQUEST,
        "upstream_rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "upstream_timeout" | "model_timeout" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    // Codes come from the workers: keep them stable strings in the body.
    let code: &'static str = match e.code.as_str() {
        "model_not_found" => "model_not_found",
        "invalid_request" => "invalid_request",
        "invalid_model_config" => "invalid_model_config",
        "max_tokens_exceeded" => "max_tokens_exceeded",
        "upstream_bad_request" => "upstream_bad_request",
        "script_exhausted" => "script_exhausted",
        "upstream_rate_limited" => "upstream_rate_limited",
        "upstream_timeout" => "upstream_timeout",
        "model_timeout" => "model_timeout",
        "upstream_auth" => "upstream_auth",
        "upstream_unavailable" => "upstream_unavailable",
        "upstream_stream_interrupted" => "upstream_stream_interrupted",
        _ => "upstream_error",
    };
    ApiError::new(status, code, e.message)
}

/// Nobody answered a call for `model`: `404 model_not_found` when model workers run but none
/// serves it, `503 model_unavailable` when no model worker runs at all.
pub(crate) async fn no_responders(state: &AppState, model: &ModelName) -> ApiError {
    match state
        .bus
        .discover_service(MODEL_SERVICE, DISCOVERY_FIRST, Duration::ZERO)
        .await
    {
        Ok(workers) if !workers.is_empty() => ApiError::not_found(
            "model_not_found",
            format!("no model worker serves model {model}"),
        )
        .with_param("model"),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "no model worker is running",
        ),
    }
}

async fn next_reply(replies: &mut Replies) -> ApiResult<ModelReply> {
    decode_reply(replies.next(REPLY_TIMEOUT).await)
}

fn decode_reply(reply: agentos_bus::Result<agentos_bus::Reply>) -> ApiResult<ModelReply> {
    let r = reply.map_err(|e| match e {
        BusError::NoResponders { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "no model worker is running",
        ),
        BusError::TimedOut { .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "model_timeout",
            "the model did not answer in time",
        ),
        e => ApiError::from(e),
    })?;
    ModelReply::decode(r.schema.as_deref(), &r.payload).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "invalid_model_reply",
            e.to_string(),
        )
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's usage object; `"estimated": true` when the model worker counted it itself.
fn usage_json(u: &Usage, estimated: bool) -> Value {
    let mut v = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens});
    if estimated {
        v["estimated"] = json!(true);
    }
    v
}

fn tool_calls_json(calls: &[ToolCallSpec]) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"index": i, "id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": agentos_arguments(&c.arguments)}})
        })
        .collect()
}

fn agentos_arguments(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "{}".into(),
        v => v.to_string(),
    }
}

/// Create a chat completion (OpenAI-compatible).
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest,
    responses((status = 200, description = "a chat.completion, or with stream: true a text/event-stream of chat.completion.chunk ending in [DONE]")))]
pub async fn completions(
    State(state): State<AppState>,
    auth: AuthContext,
    ApiJson(body): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let (model, req, stream, include_usage) = to_model_request(body)?;
    state
        .entitled(&auth.tenant, |e| e.check_model(model.as_str()))
        .await?;
    let meta = CallMeta {
        request_id: crate::error::REQUEST_ID.try_with(Clone::clone).ok(),
        principal: Some(auth.subject.clone()),
        roles: auth.roles.clone(),
        ..CallMeta::new(auth.tenant.clone())
    };
    let mut replies = state
        .bus
        .call(subject::model(&auth.tenant, &model), &meta, req.encode())
        .await?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_secs();
    // The first reply decides the HTTP status: errors before any output are plain HTTP errors.
    let first = match replies.next(REPLY_TIMEOUT).await {
        Err(BusError::NoResponders { .. }) => return Err(no_responders(&state, &model).await),
        other => decode_reply(other)?,
    };
    if let ModelReply::Error { error } = first {
        return Err(model_error(error));
    }
    if !stream {
        let mut reply = first;
        loop {
            match reply {
                ModelReply::Final {
                    message,
                    usage,
                    finish_reason,
                    usage_estimated,
                    logprobs,
                } => {
                    let mut msg =
                        json!({"role": "assistant", "content": message.content, "refusal": null});
                    if !message.tool_calls.is_empty() {
                        let calls: Vec<Value> = tool_calls_json(&message.tool_calls)
                            .into_iter()
                            .map(|mut c| {
                                if let Some(o) = c.as_object_mut() {
                                    o.remove("index");
                                }
                                c
                            })
                            .collect();
                        msg["tool_calls"] = Value::Array(calls);
                    }
                    return Ok(Json(json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "message": msg, "logprobs": logprobs, "finish_reason": finish_reason}],
                        "usage": usage_json(&usage, usage_estimated), "system_fingerprint": null,
                    }))
                    .into_response());
                }
                ModelReply::Error { error } => return Err(model_error(error)),
                ModelReply::Delta { .. } | ModelReply::ToolCallDelta { .. } => {
                    reply = next_reply(&mut replies).await?
                }
            }
        }
    }
    let chunk = {
        let (id, model) = (id.clone(), model.to_string());
        move |delta: Value, finish: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": null,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        }
    };
    let usage_chunk = {
        let (id, model) = (id.clone(), model.to_string());
        move |u: &Usage, estimated: bool| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage_json(u, estimated)})
    };
    struct St {
        replies: Replies,
        pending: Option<ModelReply>,
        streamed_text: bool,
        streamed_calls: bool,
        done: bool,
    }
    let start = futures::stream::iter([
        chunk(json!({"role": "assistant", "content": ""}), None).to_string()
    ]);
    let body = futures::stream::unfold(
        St { replies, pending: Some(first), streamed_text: false, streamed_calls: false, done: false },
        move |mut st| {
            let (chunk, usage_chunk) = (chunk.clone(), usage_chunk.clone());
            async move {
                if st.done {
                    return None;
                }
                let reply = match st.pending.take() {
                    Some(r) => r,
                    None => match next_reply(&mut st.replies).await {
                        Ok(r) => r,
                        Err(e) => ModelReply::Error { error: ErrorBody::new(e.code, e.message) },
                    },
                };
                let out: Vec<String> = match reply {
                    ModelReply::Delta { text } => {
                        st.streamed_text = true;
                        vec![chunk(json!({"content": text}), None).to_string()]
                    }
                    ModelReply::ToolCallDelta { index, id, name, arguments } => {
                        st.streamed_calls = true;
                        let mut call = json!({"index": index, "function": {"arguments": arguments}});
                        if let Some(id) = id {
                            call["id"] = json!(id);
                            call["type"] = json!("function");
                        }
                        if let Some(name) = name {
                            call["function"]["name"] = json!(name);
                        }
                        vec![chunk(json!({"tool_calls": [call]}), None).to_string()]
                    }
                    ModelReply::Final { message, usage, finish_reason, usage_estimated, logprobs } => {
                        st.done = true;
                        let mut out = Vec::new();
                        if !st.streamed_text && let Some(text) = message.content.filter(|t| !t.is_empty()) {
                            out.push(chunk(json!({"content": text}), None).to_string());
                        }
                        if !st.streamed_calls && !message.tool_calls.is_empty() {
                            out.push(chunk(json!({"tool_calls": tool_calls_json(&message.tool_calls)}), None).to_string());
                        }
                        // Logprobs are known whole once the model worker's reply is final: they
                        // ride on the finishing chunk (clients append them across chunks).
                        let mut last = chunk(json!({}), Some(&finish_reason));
                        if let Some(lp) = logprobs {
                            last["choices"][0]["logprobs"] = lp;
                        }
                        out.push(last.to_string());
                        if include_usage {
                            out.push(usage_chunk(&usage, usage_estimated).to_string());
                        }
                        out.push("[DONE]".to_owned());
                        out
                    }
                    ModelReply::Error { error } => {
                        st.done = true;
                        tracing::warn!(code = %error.code, "model failed mid-stream");
                        vec![json!({"error": {"message": error.message, "type": "api_error", "code": error.code}}).to_string()]
                    }
                };
                Some((futures::stream::iter(out), st))
            }
        },
    )
    .flatten();
    let events = start
        .chain(body)
        .map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
    Ok(Sse::new(events).into_response())
}

/// How long `GET /v1/models` waits for the first model worker to answer, and then for the
/// others (they answer within a round trip of each other).
const DISCOVERY_FIRST: Duration = Duration::from_millis(500);
const DISCOVERY_IDLE: Duration = Duration::from_millis(25);

/// The models this caller may use (OpenAI-compatible).
#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "a list of models")))]
pub async fn models(State(state): State<AppState>, auth: AuthContext) -> ApiResult<Json<Value>> {
    let data = available(&state, &auth).await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// One model this caller may use (OpenAI's `models.retrieve`).
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "the public model name")),
    responses((status = 200, description = "a model"), (status = 404, description = "model_not_found")))]
pub async fn model(
    State(state): State<AppState>,
    auth: AuthContext,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    available(&state, &auth)
        .await?
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                "model_not_found",
                format!("The model `{id}` does not exist"),
            )
            .with_param("model")
        })
}

/// The models served by some model worker and covered by the tenant's entitlements, by name.
async fn available(state: &AppState, auth: &AuthContext) -> ApiResult<Vec<Value>> {
    // Every model worker instance, in any language, names its models in its endpoints'
    // subjects (`agentos.model.*.<model>`) and their backends in `model.<name>` metadata.
    let workers = state
        .bus
        .discover_service(MODEL_SERVICE, DISCOVERY_FIRST, DISCOVERY_IDLE)
        .await?;
    let mut models = std::collections::BTreeMap::new();
    for w in &workers {
        for model in w
            .endpoints
            .iter()
            .filter_map(|e| subject::model_of_filter(e))
        {
            let backend = w
                .metadata
                .get(&agentos_bus::model_backend_key(&model))
                .map_or("worker", String::as_str);
            models
                .entry(model.to_string())
                .or_insert_with(|| format!("agentos:{backend}"));
        }
    }
    // Only the models the tenant's entitlements cover.
    let tenant = state.tenants.get(&auth.tenant).await?;
    let data: Vec<Value> = models
        .into_iter()
        .filter(|(id, _)| {
            tenant
                .as_ref()
                .is_none_or(|t| t.entitlements.check_model(id).is_ok())
        })
        .map(|(id, owned_by)| json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by}))
        .collect();
    Ok(data)
}
