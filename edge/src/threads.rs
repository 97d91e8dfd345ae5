//! Threads: `/v1/threads`. A thread is a conversation that lasts across runs: a run submitted
//! with its `thread_id` sees the thread's earlier messages, and adds its own when it completes
//! (the orchestrator does both; see `workers/src/orchestrator/thread.rs`). Records, turns and
//! run entries live in KV `agentos-threads` ([`agentos_bus::Threads`]); another tenant's thread
//! is `404`.

use agentos_bus::envelope::{ChatMessage, RunRecord, ThreadRecord, now};
use agentos_bus::id::{RunId, ThreadId};
use agentos_bus::{Error as BusError, Versioned};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::page::Page;
use crate::runs::{RunView, run_key};
use crate::{AppState, AuthContext};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
/// Metadata: at most this many keys, each at most [`MAX_METADATA_KEY`] characters.
pub const MAX_METADATA_KEYS: usize = 16;
pub const MAX_METADATA_KEY: usize = 64;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/threads", post(create).get(list))
        .route("/v1/threads/{id}", get(read).patch(update).delete(remove))
        .route("/v1/threads/{id}/messages", get(messages))
        .route("/v1/threads/{id}/runs", get(runs))
        .route("/v1/threads/{id}/copy", post(copy))
}

/// `POST /v1/threads` and `POST /v1/threads/{id}/copy` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateThread {
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// `PATCH /v1/threads/{id}` body: the metadata replaces the thread's.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateThread {
    pub metadata: Map<String, Value>,
}

/// A thread as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ThreadView {
    pub id: String,
    pub object: &'static str,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub updated_at: OffsetDateTime,
}

impl From<ThreadRecord> for ThreadView {
    fn from(t: ThreadRecord) -> Self {
        Self {
            id: t.id.to_string(),
            object: "thread",
            metadata: t.metadata,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// One message of a thread. Its id is `<run_id>:<index within the run's turn>`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: String,
    pub object: &'static str,
    pub thread_id: String,
    pub run_id: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub message: ChatMessage,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Cursor: the `next_cursor` of the previous page.
    pub after: Option<String>,
    /// `asc` (oldest first) or `desc` (newest first). Threads and runs default to `desc`,
    /// messages to `asc`.
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Asc,
    Desc,
}

struct PageParams {
    limit: usize,
    after: Option<String>,
    order: Order,
}

fn page_params(
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    default: Order,
) -> ApiResult<PageParams> {
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
    let order = match q.order.as_deref() {
        None => default,
        Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_order",
                format!("order must be asc or desc, not {other:?}"),
            )
            .with_param("order"));
        }
    };
    Ok(PageParams {
        limit,
        after: q.after,
        order,
    })
}

/// Cuts one page out of `items` (in ascending order) by `id`; a cursor naming no item (never
/// one, or one since deleted) is `404 cursor_not_found`, like any id that names nothing.
fn paginate<T>(mut items: Vec<T>, p: &PageParams, id: impl Fn(&T) -> String) -> ApiResult<Page<T>> {
    if p.order == Order::Desc {
        items.reverse();
    }
    let start = match &p.after {
        None => 0,
        Some(cursor) => {
            items.iter().position(|t| &id(t) == cursor).ok_or_else(|| {
                ApiError::not_found(
                    "cursor_not_found",
                    format!("no item {cursor:?} on this list"),
                )
                .with_param("after")
            })? + 1
        }
    };
    let mut data: Vec<T> = items.into_iter().skip(start).take(p.limit + 1).collect();
    let has_more = data.len() > p.limit;
    data.truncate(p.limit);
    let next_cursor = has_more.then(|| data.last().map(&id)).flatten();
    Ok(Page::new(data, has_more, next_cursor))
}

pub(crate) fn check_metadata(metadata: &Map<String, Value>) -> ApiResult<()> {
    if metadata.len() > MAX_METADATA_KEYS
        || metadata
            .keys()
            .any(|k| k.chars().count() > MAX_METADATA_KEY)
    {
        return Err(ApiError::bad_request(
            "invalid_metadata",
            format!(
                "metadata takes at most {MAX_METADATA_KEYS} keys of at most {MAX_METADATA_KEY} characters"
            ),
        )
        .with_param("metadata"));
    }
    Ok(())
}

pub(crate) fn parse_thread_id(id: &str, param: &str) -> ApiResult<ThreadId> {
    ThreadId::parse(id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param(param))
}

/// The caller's thread, or 404 (also for another tenant's thread).
pub(crate) async fn load(
    state: &AppState,
    auth: &AuthContext,
    id: &ThreadId,
) -> ApiResult<Versioned<ThreadRecord>> {
    state
        .threads
        .get(&auth.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("thread_not_found", format!("no thread {id}")))
}

/// The body of a create or copy: optional (no body is `{}`), else JSON.
fn body_or_default(body: &[u8]) -> ApiResult<CreateThread> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CreateThread::default());
    }
    crate::extract::json_object(body)
}

/// Create a thread.
#[utoipa::path(post, path = "/v1/threads", request_body = CreateThread,
    responses((status = 201, description = "created", body = ThreadView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<ThreadView>)> {
    let body = body_or_default(&body)?;
    check_metadata(&body.metadata)?;
    let ts = now();
    let record = ThreadRecord {
        id: ThreadId::mint(),
        tenant: auth.tenant.clone(),
        metadata: body.metadata,
        created_at: ts,
        updated_at: ts,
    };
    state.threads.create(&record).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// List the caller's threads (newest first unless `order=asc`).
#[utoipa::path(get, path = "/v1/threads", params(PageQuery),
    responses((status = 200, description = "a page of threads", body = Object)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<ThreadView>>> {
    let p = page_params(query, Order::Desc)?;
    let all = state.threads.list(&auth.tenant).await?;
    let page = paginate(all, &p, |t| t.id.to_string())?;
    Ok(Json(page.map(ThreadView::from)))
}

/// Read a thread.
#[utoipa::path(get, path = "/v1/threads/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "the thread", body = ThreadView), (status = 404, description = "not found")))]
pub async fn read(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<ThreadView>> {
    let id = parse_thread_id(&id, "id")?;
    Ok(Json(load(&state, &auth, &id).await?.value.into()))
}

/// Replace a thread's metadata (compare-and-set on its revision).
#[utoipa::path(patch, path = "/v1/threads/{id}", params(("id" = String, Path)), request_body = UpdateThread,
    responses((status = 200, description = "updated", body = ThreadView), (status = 404, description = "not found")))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateThread>,
) -> ApiResult<Json<ThreadView>> {
    let id = parse_thread_id(&id, "id")?;
    check_metadata(&body.metadata)?;
    let current = load(&state, &auth, &id).await?;
    let mut record = current.value;
    record.metadata = body.metadata;
    record.updated_at = now();
    match state.threads.update(&record, current.revision).await {
        Ok(_) => Ok(Json(record.into())),
        Err(BusError::WrongRevision { .. }) => Err(ApiError::conflict(
            "concurrent_update",
            "the thread changed meanwhile; retry",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Delete a thread and its messages. Its runs stay (as runs).
#[utoipa::path(delete, path = "/v1/threads/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "deleted"), (status = 404, description = "not found")))]
pub async fn remove(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_thread_id(&id, "id")?;
    load(&state, &auth, &id).await?;
    state.threads.delete(&auth.tenant, &id).await?;
    Ok(Json(
        json!({"id": id, "object": "thread.deleted", "deleted": true}),
    ))
}

/// A thread's messages (oldest first unless `order=desc`), each run's turn in the order the
/// runs completed.
#[utoipa::path(get, path = "/v1/threads/{id}/messages", params(("id" = String, Path), PageQuery),
    responses((status = 200, description = "a page of messages", body = Object), (status = 404, description = "not found")))]
pub async fn messages(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<MessageView>>> {
    let id = parse_thread_id(&id, "id")?;
    let p = page_params(query, Order::Asc)?;
    load(&state, &auth, &id).await?;
    let turns = state.threads.turns(&auth.tenant, &id).await?;
    let all: Vec<MessageView> = turns
        .into_iter()
        .flat_map(|turn| {
            let thread = id.to_string();
            turn.messages
                .into_iter()
                .enumerate()
                .map(move |(i, message)| MessageView {
                    id: format!("{}:{i}", turn.run_id),
                    object: "thread.message",
                    thread_id: thread.clone(),
                    run_id: turn.run_id.to_string(),
                    message,
                    created_at: turn.created_at,
                })
        })
        .collect();
    Ok(Json(paginate(all, &p, |m| m.id.clone())?))
}

/// The runs submitted on a thread (newest first unless `order=asc`).
#[utoipa::path(get, path = "/v1/threads/{id}/runs", params(("id" = String, Path), PageQuery),
    responses((status = 200, description = "a page of runs", body = Object), (status = 404, description = "not found")))]
pub async fn runs(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<RunView>>> {
    let id = parse_thread_id(&id, "id")?;
    let p = page_params(query, Order::Desc)?;
    load(&state, &auth, &id).await?;
    let ids: Vec<RunId> = state
        .threads
        .runs(&auth.tenant, &id)
        .await?
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    let page = paginate(ids, &p, RunId::to_string)?;
    let records = futures::future::try_join_all(page.data.iter().map(|run| {
        let key = run_key(&auth, run);
        let runs = &state.runs;
        async move { runs.get_as::<RunRecord>(&key).await }
    }))
    .await?;
    Ok(Json(Page::new(
        records
            .into_iter()
            .flatten()
            .map(|r| RunView::from(r.value))
            .collect(),
        page.has_more,
        page.next_cursor,
    )))
}

/// Fork a thread: a new thread with a copy of its messages (not its runs).
#[utoipa::path(post, path = "/v1/threads/{id}/copy", params(("id" = String, Path)), request_body = CreateThread,
    responses((status = 201, description = "the copy", body = ThreadView), (status = 404, description = "not found")))]
pub async fn copy(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<ThreadView>)> {
    let id = parse_thread_id(&id, "id")?;
    let body = body_or_default(&body)?;
    check_metadata(&body.metadata)?;
    let source = load(&state, &auth, &id).await?.value;
    let ts = now();
    let record = ThreadRecord {
        id: ThreadId::mint(),
        tenant: auth.tenant.clone(),
        metadata: if body.metadata.is_empty() {
            source.metadata
        } else {
            body.metadata
        },
        created_at: ts,
        updated_at: ts,
    };
    state.threads.copy(&id, &record).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}
