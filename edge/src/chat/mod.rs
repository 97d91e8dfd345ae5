//! The OpenAI-compatible API: `POST /v1/chat/completions` (plain and streamed, tools included)
//! and `GET /v1/models`, served by the model workers over the bus — the edge never calls an
//! upstream itself. Requests, chunks and errors have OpenAI's shapes, so the official SDKs work.
//! Every field of OpenAI's request schema is accepted: those AgentOS reads are validated, the
//! others pass to the model worker, whose route decides what reaches the upstream.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_bus::envelope::{Envelope, ErrorBody, ModelReply, ToolCallSpec, Usage};
use agentos_bus::id::ModelName;
use agentos_bus::{CallMeta, Error as BusError, MODEL_SERVICE, Replies, subject};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::{AppState, AuthContext};

mod models;
mod request;
mod served;

pub use served::ServedModels;

pub use models::{__path_model, __path_models, model, models};
pub use request::ChatRequest;
use request::to_model_request;

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

/// How long a failed call waits for a model worker to show itself: on this error path only, so
/// longer than a listing's wait; a loaded machine's worker must not pass for a missing one.
const NO_RESPONDERS_DISCOVERY: Duration = Duration::from_secs(2);

/// Nobody answered a call for `model`: `404 model_not_found` when model workers run but none
/// serves it, `503 model_unavailable` when no model worker runs at all.
pub(crate) async fn no_responders(state: &AppState, model: &ModelName) -> ApiError {
    match state
        .bus
        .discover_service(MODEL_SERVICE, NO_RESPONDERS_DISCOVERY, Duration::ZERO)
        .await
    {
        Ok(workers) if !workers.is_empty() => not_served(model),
        _ => no_model_worker(),
    }
}

fn not_served(model: &ModelName) -> ApiError {
    ApiError::not_found(
        "model_not_found",
        format!("no model worker serves model {model}"),
    )
    .with_param("model")
}

fn no_model_worker() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "model_unavailable",
        "no model worker is running",
    )
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
    state.served.check(&state.bus, &model).await?;
    let hold = crate::quota::hold_chat(&state, &auth, model.as_str()).await?;
    let meta = CallMeta {
        request_id: crate::error::REQUEST_ID.try_with(Clone::clone).ok(),
        principal: Some(auth.subject.clone()),
        roles: auth.roles.clone(),
        ..CallMeta::new(auth.tenant.clone())
    };
    // A streamed answer holds one of the tenant's stream slots while it lasts.
    let slot = stream
        .then(|| state.limits.open_stream(&auth.tenant))
        .transpose()?;
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
                    if let Some(hold) = hold {
                        hold.settle(&usage);
                    }
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
        hold: Option<crate::quota::ChatHold>,
        pending: Option<ModelReply>,
        streamed_text: bool,
        streamed_calls: bool,
        done: bool,
    }
    let start = futures::stream::iter([
        chunk(json!({"role": "assistant", "content": ""}), None).to_string()
    ]);
    let body = futures::stream::unfold(
        St { replies, hold, pending: Some(first), streamed_text: false, streamed_calls: false, done: false },
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
                        if let Some(hold) = st.hold.take() {
                            hold.settle(&usage);
                        }
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
    let events = start.chain(body).map(move |data| {
        let _held = &slot;
        Ok::<_, Infallible>(SseEvent::default().data(data))
    });
    Ok(Sse::new(events).into_response())
}
