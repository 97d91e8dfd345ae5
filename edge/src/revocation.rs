//! Token revocation: the edge refuses a token whose `jti` is on the deny-list in KV
//! `agentos-revoked` (`401 token_revoked`). The list is held in memory, loaded at start and kept
//! current by one core subscription per edge, so a revocation written through any edge is
//! honoured by every edge within a message's delivery. `POST /v1/admin/tokens/revoke` adds to it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use agentos_bus::{Bus, revocation_key};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::admin::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;

/// How long a revocation lasts when the revoker names no end: the longest a token should live.
const DEFAULT_SPAN: time::Duration = time::Duration::days(30);
/// The longest a revocation may last.
const MAX_SPAN: time::Duration = time::Duration::days(366);

/// The revoked token ids this edge knows of, with when each stops mattering.
#[derive(Clone, Debug, Default)]
pub struct Revocations(Arc<RwLock<HashMap<String, OffsetDateTime>>>);

impl Revocations {
    pub fn is_revoked(&self, jti: &str) -> bool {
        let now = OffsetDateTime::now_utc();
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&revocation_key(jti))
            .is_some_and(|until| *until > now)
    }

    fn note(&self, key: String, until: OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, u| *u > now);
        if until > now {
            map.insert(key, until);
        }
    }

    /// Loads the revocations stored now.
    async fn load(&self, bus: &Bus) -> agentos_bus::Result<()> {
        for (key, r) in bus.revocations().await? {
            self.note(key, r.until);
        }
        Ok(())
    }

    /// Loads the list (subscribed first, so nothing written while loading is missed) and
    /// returns what keeps it current until `shutdown`. Await the load before serving: a
    /// process that answers before it knows the list lets revoked tokens in.
    pub async fn follow(
        self,
        bus: Bus,
        shutdown: CancellationToken,
    ) -> agentos_bus::Result<impl Future<Output = agentos_bus::Result<()>> + Send + 'static> {
        let mut updates = bus.revocation_updates().await?;
        self.load(&bus).await?;
        Ok(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    update = updates.next() => match update {
                        Some((key, r)) => self.note(key, r.until),
                        None => return Ok(()),
                    },
                }
            }
        })
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/admin/tokens/revoke", post(revoke))
}

/// `POST /v1/admin/tokens/revoke` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    /// The token's `jti`.
    #[schema(min_length = 1, max_length = 256)]
    pub jti: String,
    /// RFC 3339: until when to refuse it (its `exp`; default 30 days; a later time is taken as a
    /// year from now).
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

/// Revoke a token by its `jti` (admin role): every edge refuses it within moments.
#[utoipa::path(post, path = "/v1/admin/tokens/revoke", request_body = RevokeToken,
    responses((status = 200, description = "revoked", body = Object), (status = 400, description = "invalid jti or until"), (status = 403, description = "not an admin")))]
pub async fn revoke(
    State(state): State<AppState>,
    Admin(auth): Admin,
    ApiJson(body): ApiJson<RevokeToken>,
) -> ApiResult<Json<Value>> {
    if body.jti.is_empty() || body.jti.len() > 256 {
        return Err(
            ApiError::bad_request("invalid_jti", "jti must be 1 to 256 characters")
                .with_param("jti"),
        );
    }
    let now = OffsetDateTime::now_utc();
    let until = match body.until.as_deref() {
        None => now + DEFAULT_SPAN,
        Some(at) => {
            let invalid =
                |m: &str| ApiError::bad_request("invalid_until", m.to_owned()).with_param("until");
            let at = OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map_err(|_| invalid("until must be an RFC 3339 time"))?;
            // Capped at MAX_SPAN; a time already past revokes nothing that is still valid
            // (the token expired by then) and the entry lapses at once. JSON Schema cannot state
            // a bound relative to the present, so every time the schema allows is taken.
            at.min(now + MAX_SPAN).to_offset(time::UtcOffset::UTC)
        }
    };
    state.bus.revoke_token(&body.jti, until).await?;
    tracing::info!(actor = %auth.subject, "token revoked");
    crate::admin::record_committed(
        &state,
        &auth,
        "token.revoke",
        revocation_key(&body.jti),
        json!({"until": until.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()}),
    )
    .await;
    Ok(Json(
        json!({"object": "token.revoked", "revoked": true, "until":
        until.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()}),
    ))
}
