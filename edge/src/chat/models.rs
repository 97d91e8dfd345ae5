//! `GET /v1/models` and `GET /v1/models/{id}`: the union of the models every running model worker
//! serves (NATS service discovery), as far as the caller's tenant is entitled.

use std::time::Duration;

use agentos_bus::{MODEL_SERVICE, subject};
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::{AppState, AuthContext};

/// How long `GET /v1/models` waits for the first model worker to answer, and then for the
/// others (they answer within a round trip of each other).
pub(super) const DISCOVERY_FIRST: Duration = Duration::from_millis(500);
pub(super) const DISCOVERY_IDLE: Duration = Duration::from_millis(25);

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
