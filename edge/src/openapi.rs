//! `/openapi.json`, generated from the handlers' annotations (never hand-maintained), then
//! completed with what every route shares ([`contract`]).

mod bodies;
mod contract;

use std::sync::OnceLock;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use utoipa::OpenApi;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "AgentOS API",
        description = "Runs AI agents as durable runs over NATS JetStream."
    ),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::metrics::render,
        crate::agents::create,
        crate::agents::list,
        crate::agents::read,
        crate::agents::update,
        crate::agents::remove,
        crate::runs::create,
        crate::run_list::list,
        crate::runs::read,
        crate::runs::cancel,
        crate::federation::api::peers,
        crate::run_actions::submit,
        crate::threads::create,
        crate::threads::list,
        crate::threads::read,
        crate::threads::update,
        crate::threads::remove,
        crate::threads::messages,
        crate::threads::runs,
        crate::threads::copy,
        crate::events::events,
        crate::events::wait,
        crate::chat::completions,
        crate::chat::models,
        crate::chat::model,
        crate::memory::read,
        crate::memory::write,
        crate::memory::remove,
        crate::memory::list,
        crate::memory_search::search,
        crate::embeddings::create,
        crate::tools::list,
        crate::admin::create,
        crate::admin::list,
        crate::admin::read,
        crate::admin::update,
        crate::admin::remove,
        crate::admin::enable,
        crate::admin::disable,
        crate::admin::audit_log,
        crate::revocation::revoke,
        crate::quota::usage::own,
        crate::quota::usage::any,
    ),
    components(schemas(
        crate::chat::ChatRequest,
        crate::admin::CreateTenant,
        crate::admin::UpdateTenant,
        crate::agents::CreateAgent,
        crate::agents::UpdateAgent,
        crate::agents::MemoryBody,
        crate::agent_actions::ClientToolBody,
        crate::run_actions::SubmitAnswers,
        crate::run_actions::ToolOutputBody,
        crate::run_actions::ApprovalBody,
        crate::agents::AgentWritten,
        crate::tools::ToolList,
        crate::tools::ToolView,
        crate::tools::Warning,
        crate::runs::CreateRun,
        crate::runs::Placement,
        crate::runs::RunView,
        crate::memory::PutItem,
        crate::memory::ItemView,
        crate::memory::KeyView,
        crate::memory_search::SearchRequest,
        crate::memory_search::SearchResults,
        crate::memory_search::SearchHit,
        crate::embeddings::EmbeddingsBody,
        crate::threads::CreateThread,
        crate::threads::UpdateThread,
        crate::threads::ThreadView,
        crate::revocation::RevokeToken
    ))
)]
pub struct ApiDoc;

/// The whole document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        contract::complete(&mut doc);
        doc
    })
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
}
