//! Liveness and readiness.

use agentos_bus::provision::{STREAM_EVENTS, STREAM_RUNS};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: NATS connected and the streams present.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats = state.bus.is_connected();
    let mut streams = serde_json::Map::new();
    for name in [STREAM_RUNS, STREAM_EVENTS] {
        let ok = nats && state.bus.stream_status(name).await.is_ok();
        streams.insert(name.to_owned(), Value::Bool(ok));
    }
    let ready = nats && streams.values().all(|v| v == &Value::Bool(true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "nats": nats, "streams": streams})),
    )
}
