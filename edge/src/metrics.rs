//! `GET /metrics` (Prometheus text format, unauthenticated, like `/healthz`) and the middleware
//! that measures every request by its matched route. Mounted when the process installed a
//! recorder and asked for `/metrics` on the API listener (`AppState::with_metrics`).

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::{AppState, metric_definitions};

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(render))
}

/// This edge process's metrics in the Prometheus text format (unauthenticated, like `/healthz`);
/// `404 route_not_found` when they are served on their own listener instead.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
    (status = 404, description = "metrics are not served on this listener")))]
pub async fn render(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError::not_found("route_not_found", "no such route").into_response(),
    }
}

/// Measures one request: count by route, method and status class, and its latency.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let since = Instant::now();
    let resp = next.run(req).await;
    metric_definitions::http_request(
        route.as_ref().map(MatchedPath::as_str),
        &method,
        resp.status(),
        since.elapsed(),
    );
    resp
}
