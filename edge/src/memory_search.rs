//! `POST /v1/memory/{namespace}/search`: a JSON field filter and, on a namespace configured with
//! an embedding model, a semantic query ranked by cosine similarity (`agentos_bus::recall`).
//! Also embeds the values written to such namespaces.

use agentos_bus::CallMeta;
use agentos_bus::envelope::MemoryItem;
use agentos_bus::id::Namespace;
use agentos_bus::recall::{self, RecallError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::memory::parse_namespace;
use crate::{AppState, AuthContext};

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// Longest query text.
pub(crate) const MAX_QUERY_CHARS: usize = 8 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/memory/{namespace}/search", post(search))
}

/// `POST /v1/memory/{namespace}/search` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Text to rank by meaning; needs an embedding model for the namespace.
    pub query: Option<String>,
    /// Fields the value must have, with these JSON values (nested objects match as subsets).
    pub filter: Option<Value>,
    /// Most results, 1..=100 (default 10).
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub key: String,
    pub value: Value,
    pub revision: u64,
    /// Cosine similarity to the query (absent without a query).
    pub score: Option<f32>,
    pub updated_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub object: &'static str,
    pub data: Vec<SearchHit>,
}

pub(crate) fn meta(auth: &AuthContext) -> CallMeta {
    CallMeta {
        request_id: crate::error::REQUEST_ID.try_with(Clone::clone).ok(),
        principal: Some(auth.subject.clone()),
        roles: auth.roles.clone(),
        ..CallMeta::new(auth.tenant.clone())
    }
}

fn recall_error(e: RecallError) -> ApiError {
    match e {
        RecallError::NotEmbedded { .. } => {
            // The request is well formed; the namespace's configuration cannot serve it.
            ApiError::conflict("semantic_search_unavailable", e.to_string()).with_param("query")
        }
        RecallError::Embedding { .. } => {
            tracing::warn!(error = %e, "embedding failed");
            ApiError::new(StatusCode::BAD_GATEWAY, "embedding_failed", e.to_string())
        }
        RecallError::Bus(agentos_bus::Error::NoResponders { .. }) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model_unavailable",
            "no model worker serves this namespace's embedding model",
        ),
        RecallError::Bus(e @ agentos_bus::Error::TooLarge { .. }) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "namespace_too_large",
            format!("{e}; search scans at most that many items (memory max-scan)"),
        ),
        RecallError::Bus(e) => e.into(),
    }
}

/// Sets the item's vector when the namespace is embedded.
pub(crate) async fn embed_item(
    state: &AppState,
    auth: &AuthContext,
    ns: &Namespace,
    mut item: MemoryItem,
) -> ApiResult<MemoryItem> {
    recall::embed_item(&state.bus, &state.memory_config, &meta(auth), ns, &mut item)
        .await
        .map_err(recall_error)?;
    Ok(item)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Search a namespace: filter by JSON fields, rank by meaning with `query`.
#[utoipa::path(post, path = "/v1/memory/{namespace}/search", request_body = SearchRequest,
    params(("namespace" = String, Path, description = "dotted tokens")),
    responses((status = 200, description = "matching items, best first", body = SearchResults),
        (status = 400, description = "invalid_filter, invalid_limit, invalid_query"),
        (status = 409, description = "semantic_search_unavailable: a query on a namespace without an embedding model"),
        (status = 422, description = "namespace_too_large")))]
pub async fn search(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(ns): Path<String>,
    ApiJson(body): ApiJson<SearchRequest>,
) -> ApiResult<Json<SearchResults>> {
    let ns = parse_namespace(ns)?;
    let filter: Option<Map<String, Value>> = match body.filter {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_filter",
                "filter must be an object of field → JSON value",
            )
            .with_param("filter"));
        }
    };
    let limit = match body.limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => n,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be 1..={MAX_LIMIT}"),
            )
            .with_param("limit"));
        }
    };
    let query = body.query.filter(|q| !q.trim().is_empty());
    if query
        .as_ref()
        .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("query must be at most {MAX_QUERY_CHARS} characters"),
        )
        .with_param("query"));
    }
    let hits = recall::search(
        &state.bus,
        &state.memory,
        &state.memory_config,
        &meta(&auth),
        &ns,
        query.as_deref(),
        filter.as_ref(),
        limit,
    )
    .await
    .map_err(recall_error)?;
    Ok(Json(SearchResults {
        object: "list",
        data: hits
            .into_iter()
            .map(|h| SearchHit {
                key: h.key.to_string(),
                value: h.item.value,
                revision: h.revision,
                score: h.score,
                updated_at: rfc3339(h.item.updated_at),
            })
            .collect(),
    }))
}
