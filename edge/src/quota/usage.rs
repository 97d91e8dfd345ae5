//! `GET /v1/usage` (the caller's tenant) and `GET /v1/admin/usage?tenant=&period=` (any tenant,
//! admins): per scope (the tenant, its agent and principal overrides), what was used in the
//! period (tokens, cost), what is reserved by runs and requests in flight, the limits and what
//! remains, and when the period resets.

use agentos_bus::id::Tenant;
use agentos_bus::key::{self, Scope};
use agentos_bus::quota::{Amount, Ledger, Limits, Period, ScopeLimits};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::Admin;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, AuthContext};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/usage", get(own))
        .route("/v1/admin/usage", get(any))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// `minute`, `day` (default) or `month`.
    #[param(pattern = "^(minute|day|month)$")]
    pub period: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AdminUsageQuery {
    /// The tenant.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub tenant: String,
    /// `minute`, `day` (default) or `month`.
    #[param(pattern = "^(minute|day|month)$")]
    pub period: Option<String>,
}

fn period(p: Option<&str>) -> ApiResult<Period> {
    match p {
        None => Ok(Period::Day),
        Some(p) => Period::parse(p).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_period",
                format!("period must be minute, day or month, not {p:?}"),
            )
            .with_param("period")
        }),
    }
}

/// A query string that does not parse, in the error model.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// The caller's usage and remaining quota.
#[utoipa::path(get, path = "/v1/usage", params(UsageQuery),
    responses((status = 200, description = "{object: usage, tenant, period, scopes: [{scope, used, reserved, by_model, by_agent, limits, remaining, resets_at}]}")))]
pub async fn own(
    State(state): State<AppState>,
    auth: AuthContext,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let p = period(query(q)?.period.as_deref())?;
    Ok(Json(
        report(&state, &auth.tenant, p, Some(&auth.subject)).await?,
    ))
}

/// Any tenant's usage (admins).
#[utoipa::path(get, path = "/v1/admin/usage", params(AdminUsageQuery),
    responses((status = 200, description = "as GET /v1/usage"), (status = 403, description = "not an admin")))]
pub async fn any(
    State(state): State<AppState>,
    _admin: Admin,
    q: Result<Query<AdminUsageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let p = period(q.period.as_deref())?;
    let tenant = Tenant::parse(&q.tenant)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()).with_param("tenant"))?;
    Ok(Json(report(&state, &tenant, p, None).await?))
}

async fn report(
    state: &AppState,
    tenant: &Tenant,
    p: Period,
    principal: Option<&str>,
) -> ApiResult<Value> {
    let rec = state.tenants.get(tenant).await?;
    let quotas = rec.map(|r| r.quotas.clone()).unwrap_or_default();
    let mut scopes: Vec<(Scope, Limits)> = vec![(Scope::Tenant, quotas.limits.clone())];
    for (agent, l) in &quotas.agents {
        scopes.push((Scope::Agent(agent.clone()), l.clone()));
    }
    for (who, l) in &quotas.principals {
        // A member sees its own principal override, an admin all of them.
        if principal.is_none_or(|me| me == who) {
            scopes.push((Scope::Principal(who.clone()), l.clone()));
        }
    }
    let now = agentos_bus::envelope::now();
    let mut out = Vec::with_capacity(scopes.len());
    for (scope, limits) in scopes {
        let mut ledger = state
            .budgets
            .read(&key::ledger(tenant, &scope))
            .await?
            .map(|v| v.value)
            .unwrap_or_default();
        // What the period shows now (a ledger last written in an earlier period shows zero).
        ledger.roll(now);
        out.push(scope_view(&scope, &limits, &ledger, p, now));
    }
    Ok(json!({
        "object": "usage", "tenant": tenant, "period": p.name(),
        "period_start": rfc3339(p.start(now)), "resets_at": rfc3339(p.end(now)),
        "scopes": out,
    }))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn scope_view(
    scope: &Scope,
    limits: &Limits,
    ledger: &Ledger,
    p: Period,
    now: time::OffsetDateTime,
) -> Value {
    let (kind, name) = match scope {
        Scope::Tenant => ("tenant", None),
        Scope::Agent(a) => ("agent", Some(a.to_string())),
        Scope::Principal(who) => ("principal", Some(who.clone())),
    };
    let sl = ScopeLimits::from(limits);
    let used = ledger.window(p).used;
    let reserved = ledger.outstanding();
    let (tokens_left, cost_left) = ledger.remaining(&sl, p);
    let field = p.field();
    let limit_tokens = limits
        .tokens
        .set()
        .find(|(n, _)| *n == field)
        .map(|(_, v)| v);
    let limit_cost = limits
        .cost_usd
        .set()
        .find(|(n, _)| *n == field)
        .map(|(_, v)| v);
    json!({
        "scope": kind, "id": name,
        "used": {"tokens": used.tokens, "cost_usd": used.cost_micros as f64 / 1e6},
        "reserved": {"tokens": reserved.tokens, "cost_usd": reserved.cost_micros as f64 / 1e6},
        "total": {"tokens": ledger.total.tokens, "cost_usd": ledger.total.cost_micros as f64 / 1e6},
        "by_model": by(&ledger.window(p).models),
        "by_agent": by(&ledger.window(p).agents),
        "running": ledger.running(),
        "holds": ledger.holds.values().filter(|h| !h.dropped).count(),
        "limits": {
            "tokens": limit_tokens, "cost_usd": limit_cost,
            "concurrent_runs": limits.concurrent_runs,
        },
        "remaining": {
            "tokens": tokens_left,
            "cost_usd": cost_left.map(|c| c as f64 / 1e6),
            "concurrent_runs": limits.concurrent_runs.map(|n| (n as usize).saturating_sub(ledger.running())),
        },
        "resets_at": rfc3339(p.end(now)),
    })
}

/// Usage in the period by model or agent: `{name: {tokens, cost_usd}}`.
fn by(counted: &std::collections::BTreeMap<String, Amount>) -> Value {
    counted
        .iter()
        .map(|(name, a)| {
            let v = json!({"tokens": a.tokens, "cost_usd": a.cost_micros as f64 / 1e6});
            (name.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}
