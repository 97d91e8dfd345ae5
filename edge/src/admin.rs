//! Tenant administration (`/v1/admin/tenants…`) and the audit log (`/v1/admin/audit`): admin role
//! only. Every change is audited. A tenant without a record is allowed (tenants are implicit
//! until administered); a disabled one gets `403 tenant_disabled` on every request.

use agentos_bus::Error as BusError;
use agentos_bus::envelope::{AuditRecord, Entitlements, TenantRecord, now};
use agentos_bus::id::{AgentId, ModelName, Tenant, ToolName};
use agentos_bus::key;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::ROLE_TENANT_ADMIN;
use crate::error::{ApiError, ApiResult, REQUEST_ID};
use crate::extract::ApiJson;
use crate::{AppState, AuthContext};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/tenants", get(list).post(create))
        .route(
            "/v1/admin/tenants/{id}",
            get(read).patch(update).delete(remove),
        )
        .route("/v1/admin/tenants/{id}/enable", post(enable))
        .route("/v1/admin/tenants/{id}/disable", post(disable))
        .route("/v1/admin/audit", get(audit_log))
}

fn require_admin(auth: &AuthContext) -> ApiResult<()> {
    if auth.is_admin() {
        Ok(())
    } else {
        Err(denied("this route needs the admin role"))
    }
}

/// The caller, who must be a platform admin. Extracted before the body, so a caller without
/// the role gets `403` and learns nothing from validation errors.
pub struct Admin(pub AuthContext);

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let auth = AuthContext::from_request_parts(parts, state).await?;
        require_admin(&auth)?;
        Ok(Self(auth))
    }
}

fn denied(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message)
}

/// Which tenant's administrative data (record, audit log) the caller may read: any for a
/// platform admin (`None`), its own for a tenant admin, none for anyone else.
fn readable_tenant(auth: &AuthContext) -> ApiResult<Option<&Tenant>> {
    if auth.is_admin() {
        Ok(None)
    } else if auth.has_role(ROLE_TENANT_ADMIN) {
        Ok(Some(&auth.tenant))
    } else {
        Err(denied(
            "this route needs the admin role (or tenant-admin, for your own tenant)",
        ))
    }
}

fn parse_tenant(id: &str) -> ApiResult<Tenant> {
    Tenant::parse(id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param("id"))
}

/// Appends an audit record for an action by `auth`.
pub(crate) async fn record(
    state: &AppState,
    auth: &AuthContext,
    tenant: &Tenant,
    action: &str,
    target: &str,
    details: Value,
) -> ApiResult<()> {
    let rec = AuditRecord {
        ts: now(),
        tenant: tenant.clone(),
        actor: auth.subject.clone(),
        actor_tenant: Some(auth.tenant.clone()),
        action: action.to_owned(),
        target: target.to_owned(),
        request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        details,
    };
    state.bus.audit(&rec).await?;
    Ok(())
}

/// Audits an action that has already taken effect (a run submitted, a cancel stored): its
/// answer must not depend on the audit write. One attempt inline; if it fails, retries with
/// backoff in the background and logs a final failure at error level.
pub(crate) async fn record_committed(
    state: &AppState,
    auth: &AuthContext,
    action: &'static str,
    target: String,
    details: Value,
) {
    let rec = AuditRecord {
        ts: now(),
        tenant: auth.tenant.clone(),
        actor: auth.subject.clone(),
        actor_tenant: Some(auth.tenant.clone()),
        action: action.to_owned(),
        target,
        request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        details,
    };
    let Err(first) = state.bus.audit(&rec).await else {
        return;
    };
    tracing::warn!(error = %first, action, target = %rec.target, tenant = %rec.tenant, "audit write failed; retrying in the background");
    let bus = state.bus.clone();
    tokio::spawn(async move {
        use backon::Retryable as _;
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(100))
            .with_max_delay(std::time::Duration::from_secs(10))
            .with_max_times(8)
            .with_jitter();
        if let Err(e) = (|| bus.audit(&rec)).retry(backoff).await {
            tracing::error!(error = %e, code = e.code(), action, target = %rec.target, tenant = %rec.tenant,
                request_id = ?rec.request_id, "AUDIT RECORD LOST: the action took effect but its audit write kept failing");
        }
    });
}

async fn load(state: &AppState, id: &Tenant) -> ApiResult<agentos_bus::Versioned<TenantRecord>> {
    state
        .tenants
        .kv()
        .get_as::<TenantRecord>(&key::tenant(id))
        .await?
        .ok_or_else(|| ApiError::not_found("tenant_not_found", format!("no tenant {id}")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub enabled: Option<bool>,
    #[serde(default)]
    pub entitlements: EntitlementsInput,
    /// Quota settings (see api.md): validated, the error naming the wrong field.
    #[schema(value_type = Option<Object>)]
    pub quotas: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub entitlements: Option<EntitlementsInput>,
    #[schema(value_type = Option<Object>)]
    pub quotas: Option<Value>,
}

/// What a tenant may use; an empty (or absent) list allows everything of its kind.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntitlementsInput {
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
}

impl EntitlementsInput {
    /// Every name must be a valid model, tool or agent name: a typo would otherwise lock a
    /// tenant out of everything but nothing.
    fn validate(self) -> ApiResult<Entitlements> {
        let bad = |param: &str, e: agentos_bus::Error| {
            ApiError::bad_request("invalid_entitlements", e.to_string())
                .with_param(format!("entitlements.{param}"))
        };
        for m in &self.models {
            ModelName::parse(m.clone()).map_err(|e| bad("models", e))?;
        }
        for t in &self.tools {
            ToolName::parse(t.clone()).map_err(|e| bad("tools", e))?;
        }
        for a in &self.agents {
            AgentId::parse(a.clone()).map_err(|e| bad("agents", e))?;
        }
        Ok(Entitlements {
            models: self.models,
            tools: self.tools,
            agents: self.agents,
        })
    }
}

/// Create a tenant (admin).
#[utoipa::path(post, path = "/v1/admin/tenants", request_body = CreateTenant, responses((status = 201, description = "created"), (status = 403, description = "not an admin")))]
pub async fn create(
    State(state): State<AppState>,
    Admin(auth): Admin,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<(StatusCode, Json<TenantRecord>)> {
    let id = parse_tenant(&body.id)?;
    let entitlements = body.entitlements.validate()?;
    let quotas = body
        .quotas
        .as_ref()
        .map(crate::quota::validate)
        .transpose()?
        .unwrap_or_default();
    let ts = now();
    let rec = TenantRecord {
        id: id.clone(),
        name: body.name,
        enabled: body.enabled.unwrap_or(true),
        entitlements,
        quotas,
        created_at: ts,
        updated_at: ts,
    };
    match state.tenants.kv().create_as(&key::tenant(&id), &rec).await {
        Ok(_) => state.tenants.forget(&id),
        Err(BusError::AlreadyExists { .. }) => {
            return Err(ApiError::conflict(
                "tenant_exists",
                format!("tenant {id} already exists"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    record(
        &state,
        &auth,
        &id,
        "tenant.create",
        id.as_str(),
        json!({"enabled": rec.enabled}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(rec)))
}

/// List tenants (admin).
#[utoipa::path(get, path = "/v1/admin/tenants", responses((status = 200, description = "the tenants")))]
pub async fn list(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<Value>> {
    let mut ids = state.tenants.kv().all_keys().await?;
    ids.sort();
    let mut data = Vec::new();
    for id in ids {
        if let Some(t) = state.tenants.kv().get_as::<TenantRecord>(&id).await? {
            data.push(t.value);
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// Read a tenant (admin; a tenant-admin reads its own).
#[utoipa::path(get, path = "/v1/admin/tenants/{id}", params(("id" = String, Path)), responses((status = 200, description = "the tenant")))]
pub async fn read(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantRecord>> {
    let id = parse_tenant(&id)?;
    // A tenant admin asking for another tenant learns nothing: 404, as for any other resource.
    if readable_tenant(&auth)?.is_some_and(|own| *own != id) {
        return Err(ApiError::not_found(
            "tenant_not_found",
            format!("no tenant {id}"),
        ));
    }
    Ok(Json(load(&state, &id).await?.value))
}

async fn change(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
    action: &str,
    edit: impl Fn(&mut TenantRecord),
) -> ApiResult<TenantRecord> {
    let id = parse_tenant(id)?;
    for _ in 0..5 {
        let current = load(state, &id).await?;
        let mut rec = current.value;
        edit(&mut rec);
        rec.updated_at = now();
        match state
            .tenants
            .kv()
            .update_as(&key::tenant(&id), &rec, current.revision)
            .await
        {
            Ok(_) => {
                state.tenants.forget(&id);
                record(
                    state,
                    auth,
                    &id,
                    action,
                    id.as_str(),
                    json!({"enabled": rec.enabled}),
                )
                .await?;
                return Ok(rec);
            }
            Err(BusError::WrongRevision { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the tenant kept changing; retry",
    ))
}

/// Update a tenant's name, entitlements, quotas or status (admin).
#[utoipa::path(patch, path = "/v1/admin/tenants/{id}", params(("id" = String, Path)), request_body = UpdateTenant, responses((status = 200, description = "updated")))]
pub async fn update(
    State(state): State<AppState>,
    Admin(auth): Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> ApiResult<Json<TenantRecord>> {
    let entitlements = body
        .entitlements
        .map(EntitlementsInput::validate)
        .transpose()?;
    let quotas = body
        .quotas
        .as_ref()
        .map(crate::quota::validate)
        .transpose()?;
    let rec = change(&state, &auth, &id, "tenant.update", |t| {
        if let Some(n) = &body.name {
            t.name.clone_from(n);
        }
        if let Some(e) = body.enabled {
            t.enabled = e;
        }
        if let Some(e) = &entitlements {
            t.entitlements = e.clone();
        }
        if let Some(q) = &quotas {
            t.quotas = q.clone();
        }
    })
    .await?;
    Ok(Json(rec))
}

/// Enable a tenant (admin).
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/enable", params(("id" = String, Path)), responses((status = 200, description = "enabled")))]
pub async fn enable(
    State(state): State<AppState>,
    Admin(auth): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantRecord>> {
    Ok(Json(
        change(&state, &auth, &id, "tenant.enable", |t| t.enabled = true).await?,
    ))
}

/// Disable a tenant: its requests get `403 tenant_disabled` (admin).
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/disable", params(("id" = String, Path)), responses((status = 200, description = "disabled")))]
pub async fn disable(
    State(state): State<AppState>,
    Admin(auth): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantRecord>> {
    Ok(Json(
        change(&state, &auth, &id, "tenant.disable", |t| t.enabled = false).await?,
    ))
}

/// Delete a tenant's record (admin). Its agents and runs stay.
#[utoipa::path(delete, path = "/v1/admin/tenants/{id}", params(("id" = String, Path)), responses((status = 200, description = "deleted")))]
pub async fn remove(
    State(state): State<AppState>,
    Admin(auth): Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_tenant(&id)?;
    load(&state, &id).await?;
    state.tenants.kv().delete(&key::tenant(&id)).await?;
    state.tenants.forget(&id);
    record(
        &state,
        &auth,
        &id,
        "tenant.delete",
        id.as_str(),
        Value::Null,
    )
    .await?;
    Ok(Json(
        json!({"id": id, "object": "tenant.deleted", "deleted": true}),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this tenant's records.
    pub tenant: Option<String>,
    /// Only this action (`tenant.disable`, `run.create`, …).
    pub action: Option<String>,
    /// Cursor: the `next_cursor` of the previous page.
    pub after: Option<u64>,
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// The audit log, oldest first, with cursor pagination (admin; a tenant-admin reads its own tenant's).
#[utoipa::path(get, path = "/v1/admin/audit", params(AuditQuery), responses((status = 200, description = "a page of audit records")))]
pub async fn audit_log(
    State(state): State<AppState>,
    auth: AuthContext,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let own = readable_tenant(&auth)?.cloned();
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let tenant = match (q.tenant.as_deref().map(parse_tenant).transpose()?, own) {
        (Some(asked), Some(own)) if asked != own => {
            return Err(denied(
                "tenant admins read their own tenant's audit log only",
            ));
        }
        (asked, own) => own.or(asked),
    };
    let limit = match q.limit.unwrap_or(100) {
        n @ 1..=500 => n,
        _ => {
            return Err(
                ApiError::bad_request("invalid_limit", "limit must be 1..=500").with_param("limit"),
            );
        }
    };
    let mut after = q.after.unwrap_or(0);
    let mut data = Vec::new();
    // Filtering by action happens after reading: keep reading pages until this one is full,
    // in pages of the largest size when most records read may not match.
    let read = if q.action.is_some() { 500 } else { limit };
    loop {
        let page = state.bus.read_audit(tenant.as_ref(), after, read).await?;
        let exhausted = page.len() < read;
        for (seq, rec) in page {
            after = seq;
            if q.action.as_deref().is_none_or(|a| a == rec.action) {
                data.push(json!({"seq": seq, "record": rec}));
                if data.len() == limit {
                    break;
                }
            }
        }
        if exhausted || data.len() == limit {
            break;
        }
    }
    Ok(Json(
        json!({"object": "list", "data": data, "next_cursor": after}),
    ))
}
