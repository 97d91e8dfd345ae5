//! `POST /v1/embeddings`, OpenAI-compatible: one `EmbeddingRequest` on
//! `agentos.embed.<tenant>.<model>`, answered by a model worker with an embedding route for the
//! model (`hash`, the deterministic local embedder, or `openai`, passed through to the
//! upstream). `encoding_format: "base64"` (what the official SDKs ask for by default) is
//! little-endian `f32`s, base64-encoded, as OpenAI sends them.

use std::time::Duration;

use agentos_bus::Error as BusError;
use agentos_bus::envelope::{EmbeddingReply, EmbeddingRequest};
use agentos_bus::id::ModelName;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{model_error, no_responders};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::memory_search::meta;
use crate::{AppState, AuthContext};

/// Most inputs in one request (OpenAI's bound).
pub(crate) const MAX_INPUTS: usize = 2048;
/// Longest single input.
pub(crate) const MAX_INPUT_CHARS: usize = 32 * 1024;
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/embeddings", post(create))
}

/// `POST /v1/embeddings` body (OpenAI's).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsBody {
    pub model: String,
    /// A string or an array of strings (token arrays are not supported).
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` (default) or `base64`.
    pub encoding_format: Option<String>,
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}

fn inputs(v: Value) -> ApiResult<Vec<String>> {
    let list = match v {
        Value::String(s) => vec![s],
        Value::Array(items) if !items.is_empty() => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(bad(
                    "unsupported_input",
                    "input must be a string or an array of strings (token arrays are not supported)",
                    "input",
                )),
            })
            .collect::<ApiResult<_>>()?,
        _ => {
            return Err(bad(
                "invalid_input",
                "input must be a non-empty string or array of strings",
                "input",
            ));
        }
    };
    if list.len() > MAX_INPUTS {
        return Err(bad(
            "invalid_input",
            format!("at most {MAX_INPUTS} inputs"),
            "input",
        ));
    }
    if list
        .iter()
        .any(|s| s.is_empty() || s.chars().count() > MAX_INPUT_CHARS)
    {
        return Err(bad(
            "invalid_input",
            format!("each input must be 1 to {MAX_INPUT_CHARS} characters"),
            "input",
        ));
    }
    Ok(list)
}

fn base64_of(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Create embeddings (OpenAI-compatible).
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsBody,
    responses((status = 200, description = "{object: list, data: [{object: embedding, index, embedding}], model, usage}"),
        (status = 400, description = "invalid_input, unsupported_input, invalid_encoding_format, invalid_id"),
        (status = 404, description = "model_not_found"), (status = 503, description = "model_unavailable")))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    ApiJson(body): ApiJson<EmbeddingsBody>,
) -> ApiResult<Json<Value>> {
    let model = ModelName::parse(body.model.clone())
        .map_err(|e| bad("invalid_id", e.to_string(), "model"))?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(bad(
                "invalid_encoding_format",
                "encoding_format must be float or base64",
                "encoding_format",
            ));
        }
    };
    if body.dimensions == Some(0) {
        return Err(bad(
            "invalid_dimensions",
            "dimensions must be at least 1",
            "dimensions",
        ));
    }
    let req = EmbeddingRequest {
        input: inputs(body.input)?,
        dimensions: body.dimensions,
        user: body.user,
    };
    state
        .entitled(&auth.tenant, |e| e.check_model(model.as_str()))
        .await?;
    state.served.check(&state.bus, &model).await?;
    let reply = match state
        .bus
        .embed(&model, &meta(&auth), &req, REPLY_TIMEOUT)
        .await
    {
        Ok(r) => r,
        Err(BusError::NoResponders { .. }) => return Err(no_responders(&state, &model).await),
        Err(BusError::TimedOut { .. }) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "model_timeout",
                "the model did not answer in time",
            ));
        }
        Err(BusError::Decode { .. }) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "invalid_model_reply",
                "the model worker's reply could not be read",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    match reply {
        EmbeddingReply::Error { error } => Err(model_error(error)),
        EmbeddingReply::Vectors { vectors, usage } => {
            let data: Vec<Value> = vectors
                .iter()
                .enumerate()
                .map(|(index, v)| {
                    let embedding = if base64 {
                        json!(base64_of(v))
                    } else {
                        json!(v)
                    };
                    json!({"object": "embedding", "index": index, "embedding": embedding})
                })
                .collect();
            Ok(Json(json!({
                "object": "list",
                "data": data,
                "model": model.as_str(),
                "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
            })))
        }
    }
}
