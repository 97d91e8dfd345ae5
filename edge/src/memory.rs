//! Tenant memory: `/v1/memory/{namespace}/{key}` (get, put, delete) and `/v1/memory/{namespace}`
//! (list), stored through `agentos_bus::Memory` in KV `agentos-memory`. The revision is the
//! item's ETag; `If-Match` and `If-None-Match: *` make writes conditional (compare-and-set on the
//! KV revision, so concurrent writers through any number of edges cannot lose an update).

use std::time::Duration;

use agentos_bus::envelope::{MemoryItem, now};
use agentos_bus::id::{MemoryKey, Namespace};
use agentos_bus::memory::{MAX_TTL, MAX_VALUE_BYTES};
use agentos_bus::{Error as BusError, Expect, Versioned};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::page::Page;
use crate::{AppState, AuthContext};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/memory/{namespace}", get(list))
        .route(
            "/v1/memory/{namespace}/{key}",
            get(read).put(write).delete(remove),
        )
}

/// `PUT /v1/memory/{namespace}/{key}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutItem {
    /// Any JSON value, at most 64 KiB as compact JSON text.
    pub value: Value,
    /// Seconds until NATS removes the item (1 ..= one year); absent: kept until deleted.
    #[schema(minimum = 1, maximum = 31_536_000)]
    pub ttl_s: Option<u64>,
}

/// A stored item.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemView {
    pub object: &'static str,
    pub namespace: String,
    pub key: String,
    pub value: Value,
    /// The item's revision, also its `ETag`.
    pub revision: u64,
    pub updated_at: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this text.
    pub prefix: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Cursor: the `next_cursor` of the previous page (a key).
    pub after: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub key: String,
    pub revision: u64,
}

pub(crate) fn parse_namespace(ns: String) -> ApiResult<Namespace> {
    Namespace::parse(ns).map_err(|e| {
        ApiError::bad_request("invalid_namespace", e.to_string()).with_param("namespace")
    })
}

fn parse_key(key: String) -> ApiResult<MemoryKey> {
    MemoryKey::parse(key)
        .map_err(|e| ApiError::bad_request("invalid_key", e.to_string()).with_param("key"))
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// `If-Match`: one revision, quoted as an ETag (`"12"`) or bare (`12`), or `*` (the item must
/// exist). Lists of tags and weak tags are refused: a revision is exact.
enum IfMatch {
    Any,
    Revision(u64),
}

fn if_match(headers: &HeaderMap) -> ApiResult<Option<IfMatch>> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_if_match",
            "If-Match must be one revision, as the ETag \"<revision>\" or a bare number, or *",
        )
        .with_param("If-Match")
    };
    let text = raw.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some(IfMatch::Any));
    }
    let digits = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    match digits.parse::<u64>() {
        Ok(rev) if rev > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(IfMatch::Revision(rev)))
        }
        _ => Err(bad()),
    }
}

/// `If-None-Match`: only `*` (create only) means something for a write.
fn if_none_match(headers: &HeaderMap) -> ApiResult<bool> {
    match headers.get(header::IF_NONE_MATCH) {
        None => Ok(false),
        Some(v) if v.as_bytes() == b"*" => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "invalid_if_none_match",
            "If-None-Match on a write must be *",
        )
        .with_param("If-None-Match")),
    }
}

fn stale(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "revision_mismatch",
        format!("{what}: the item is not at the revision given in If-Match"),
    )
}

fn not_found(ns: &Namespace, key: &MemoryKey) -> ApiError {
    ApiError::not_found("item_not_found", format!("no item {key} in namespace {ns}"))
}

/// The value's size as stored: its compact JSON text.
pub(crate) fn check_value(value: &Value) -> ApiResult<()> {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("value is {size} bytes as JSON; at most {MAX_VALUE_BYTES}"),
        )
        .with_param("value"));
    }
    Ok(())
}

fn check_ttl(ttl_s: Option<u64>) -> ApiResult<Option<Duration>> {
    match ttl_s {
        None => Ok(None),
        Some(s @ 1..) if s <= MAX_TTL.as_secs() => Ok(Some(Duration::from_secs(s))),
        Some(_) => Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_s must be 1..={}", MAX_TTL.as_secs()),
        )
        .with_param("ttl_s")),
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn view(ns: &Namespace, key: &MemoryKey, item: Versioned<MemoryItem>) -> Response {
    let rev = item.revision;
    let body = ItemView {
        object: "memory.item",
        namespace: ns.to_string(),
        key: key.to_string(),
        value: item.value.value,
        revision: rev,
        updated_at: rfc3339(item.value.updated_at),
        expires_at: item.value.expires_at.map(rfc3339),
    };
    ([(header::ETAG, etag(rev))], Json(body)).into_response()
}

fn ttl_error(e: BusError) -> ApiError {
    match e {
        BusError::TtlDisabled { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ttl_unavailable",
            "this platform's memory bucket predates per-item TTLs; see provisioning drift in the operations guide",
        )
        .with_param("ttl_s"),
        e => e.into(),
    }
}

/// Read an item; its revision is the `ETag`.
#[utoipa::path(get, path = "/v1/memory/{namespace}/{key}",
    params(("namespace" = String, Path, description = "dotted tokens"), ("key" = String, Path, description = "[A-Za-z0-9_=-]{1,128}")),
    responses((status = 200, description = "the item", body = ItemView), (status = 404, description = "no such item")))]
pub async fn read(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (ns, key) = (parse_namespace(ns)?, parse_key(key)?);
    match state.memory.get(&auth.tenant, &ns, &key).await? {
        Some(item) => Ok(view(&ns, &key, item)),
        None => Err(not_found(&ns, &key)),
    }
}

/// Store an item; `If-Match: <revision>` writes only over that revision, `If-None-Match: *`
/// only when there is no item.
#[utoipa::path(put, path = "/v1/memory/{namespace}/{key}", request_body = PutItem,
    params(("namespace" = String, Path, description = "dotted tokens"), ("key" = String, Path, description = "[A-Za-z0-9_=-]{1,128}")),
    responses((status = 200, description = "stored", body = ItemView), (status = 412, description = "revision_mismatch or item_exists"), (status = 413, description = "value_too_large")))]
pub async fn write(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PutItem>,
) -> ApiResult<Response> {
    let (ns, key) = (parse_namespace(ns)?, parse_key(key)?);
    let create_only = if_none_match(&headers)?;
    let matching = if_match(&headers)?;
    if create_only && matching.is_some() {
        return Err(ApiError::bad_request(
            "conflicting_preconditions",
            "send If-Match or If-None-Match, not both",
        ));
    }
    check_value(&body.value)?;
    let ttl = check_ttl(body.ttl_s)?;
    let expect = match matching {
        _ if create_only => Expect::Absent,
        None => Expect::Any,
        Some(IfMatch::Revision(rev)) => Expect::Revision(rev),
        Some(IfMatch::Any) => match state.memory.get(&auth.tenant, &ns, &key).await? {
            Some(cur) => Expect::Revision(cur.revision),
            None => return Err(stale("If-Match: *")),
        },
    };
    let ts = now();
    let item = MemoryItem {
        value: body.value,
        embedding: None,
        expires_at: ttl.map(|d| ts + d),
        updated_at: ts,
    };
    let embedded = crate::memory_search::embed_item(&state, &auth, &ns, item).await?;
    match state
        .memory
        .put(&auth.tenant, &ns, &key, &embedded, ttl, expect)
        .await
    {
        Ok(revision) => Ok(view(
            &ns,
            &key,
            Versioned {
                value: embedded,
                revision,
            },
        )),
        Err(BusError::WrongRevision { .. }) => Err(stale("PUT")),
        Err(BusError::AlreadyExists { .. }) => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "item_exists",
            format!("item {key} exists in namespace {ns} (If-None-Match: *)"),
        )),
        Err(e) => Err(ttl_error(e)),
    }
}

/// Delete an item; with `If-Match: <revision>` only at that revision.
#[utoipa::path(delete, path = "/v1/memory/{namespace}/{key}",
    params(("namespace" = String, Path, description = "dotted tokens"), ("key" = String, Path, description = "[A-Za-z0-9_=-]{1,128}")),
    responses((status = 204, description = "deleted"), (status = 404, description = "no such item"), (status = 412, description = "revision_mismatch")))]
pub async fn remove(
    State(state): State<AppState>,
    auth: AuthContext,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let (ns, key) = (parse_namespace(ns)?, parse_key(key)?);
    let matching = if_match(&headers)?;
    if headers.contains_key(header::IF_NONE_MATCH) {
        return Err(ApiError::bad_request(
            "invalid_if_none_match",
            "If-None-Match means nothing on DELETE",
        )
        .with_param("If-None-Match"));
    }
    let Some(current) = state.memory.get(&auth.tenant, &ns, &key).await? else {
        return Err(not_found(&ns, &key));
    };
    let revision = match matching {
        None => None,
        Some(IfMatch::Any) => Some(current.revision),
        Some(IfMatch::Revision(rev)) => Some(rev),
    };
    match state.memory.delete(&auth.tenant, &ns, &key, revision).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(BusError::WrongRevision { .. }) => Err(stale("DELETE")),
        Err(e) => Err(e.into()),
    }
}

/// List a namespace's keys (not its nested namespaces'), by key, with a cursor.
#[utoipa::path(get, path = "/v1/memory/{namespace}", params(("namespace" = String, Path, description = "dotted tokens"), ListQuery),
    responses((status = 200, description = "a page of keys", body = Page<KeyView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(ns): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Page<KeyView>>> {
    let ns = parse_namespace(ns)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = match q.limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => n,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be 1..={MAX_PAGE}"),
            )
            .with_param("limit"));
        }
    };
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after.unwrap_or_default();
    let keys = state.memory.list(&auth.tenant, &ns).await?;
    let mut page: Vec<KeyView> = keys
        .into_iter()
        .filter(|(k, _)| k.as_str().starts_with(prefix.as_str()) && k.as_str() > after.as_str())
        .take(limit + 1)
        .map(|(k, revision)| KeyView {
            key: k.to_string(),
            revision,
        })
        .collect();
    let has_more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = has_more
        .then(|| page.last().map(|k| k.key.clone()))
        .flatten();
    Ok(Json(Page::new(page, has_more, next_cursor)))
}
