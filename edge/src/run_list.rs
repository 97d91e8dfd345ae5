//! `GET /v1/runs`: a page of the caller's runs, newest first, read from the run index
//! (`Bus::run_index_page`) and then the page's records, so a page costs the same whatever the
//! tenant's history. A status filter reads pages of the index until the page is full or
//! [`MAX_SCAN`] runs were examined.

use agentos_bus::envelope::RunRecord;
use agentos_bus::id::{AgentId, RunId};
use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::page::Page;
use crate::runs::{RunView, parse_run_id, parse_status, run_key};
use crate::{AppState, AuthContext};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;
/// Runs examined per request with a status filter; a page may come back short (with
/// `has_more`) when matches are rare.
pub const MAX_SCAN: usize = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only runs in this status.
    pub status: Option<String>,
    /// Only runs of this agent.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub agent_id: Option<String>,
    /// Page size, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Cursor: the `next_cursor` of the previous page (a run id).
    pub after: Option<String>,
}

/// List runs, newest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/runs", params(ListQuery), responses((status = 200, description = "a page of runs", body = Page<RunView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthContext,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<RunView>>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let agent =
        q.agent_id.map(AgentId::parse).transpose().map_err(|e| {
            ApiError::bad_request("invalid_id", e.to_string()).with_param("agent_id")
        })?;
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
    let mut cursor = q.after.as_deref().map(parse_run_id).transpose()?;
    // One run more than the page tells whether another page follows.
    let mut data: Vec<RunRecord> = Vec::with_capacity(limit + 1);
    let mut examined = 0;
    let (has_more, next_cursor) = loop {
        let batch = if status.is_some() {
            MAX_PAGE + 1
        } else {
            limit + 1
        };
        let page = state
            .bus
            .run_index_page(&auth.tenant, agent.as_ref(), cursor.as_ref(), batch)
            .await?;
        let exhausted = page.runs.len() < batch;
        let records = futures::future::try_join_all(page.runs.iter().map(|id| {
            let key = run_key(&auth, id);
            let runs = &state.runs;
            async move { runs.get_as::<RunRecord>(&key).await }
        }))
        .await?;
        for (id, rec) in page.runs.iter().zip(records) {
            examined += 1;
            cursor = Some(*id);
            let Some(rec) = rec.map(|r| r.value) else {
                continue;
            };
            if status.is_none_or(|s| s == rec.status) {
                data.push(rec);
                if data.len() > limit {
                    break;
                }
            }
        }
        if data.len() > limit {
            data.truncate(limit);
            break (true, data.last().map(|r| r.id));
        }
        if exhausted {
            break (false, None);
        }
        if examined >= MAX_SCAN {
            // A short page: the next one resumes after the last run examined.
            break (true, cursor);
        }
    };
    Ok(Json(Page::new(
        data.into_iter().map(RunView::from).collect(),
        has_more,
        next_cursor.map(|id: RunId| id.to_string()),
    )))
}
