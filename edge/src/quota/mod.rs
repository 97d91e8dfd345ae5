//! Quotas at the edge: validating quota settings for the admin API, turning a ledger's refusal
//! into `429 budget_exceeded` / `quota_exceeded` (naming the limit, `Retry-After` until it
//! resets), holding a chat completion's reservation until its reply settles it, and the usage
//! routes ([`usage`]). Runs are held by the orchestrators (`workers/src/orchestrator/budget.rs`),
//! which also see runs that never pass an edge.

pub(crate) mod rate;
pub(crate) mod usage;

use agentos_bus::envelope::Usage;
use agentos_bus::id::Tenant;
use agentos_bus::key::{self, Scope};
use agentos_bus::quota::{Applied, LedgerOp, Meter, Quotas, Refusal, ScopeLimits, reservation};
use axum::http::StatusCode;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::{AppState, AuthContext};

/// Strict parse of quota settings from a client: `400 invalid_quotas`, `param` naming the field.
pub(crate) fn validate(value: &Value) -> ApiResult<Quotas> {
    Quotas::parse(value).map_err(|e| {
        let param = if e.param.is_empty() {
            "quotas".to_owned()
        } else {
            format!("quotas.{}", e.param)
        };
        ApiError::bad_request("invalid_quotas", e.message).with_param(param)
    })
}

/// `429` for a refusal: the limit in `param`, the wait until it resets in `Retry-After`.
pub(crate) fn refused(r: &Refusal) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, r.code(), r.message())
        .with_param(format!("quotas.{}", r.limit));
    e.retry_after = Some(match r.resets_at {
        Some(at) => (at - agentos_bus::envelope::now()).whole_seconds().max(1) as u64,
        None => 1,
    });
    e
}

/// A chat completion's hold on its tenant's budgets. [`ChatHold::settle`] counts the reply's
/// usage and releases the rest; dropped unsettled (an error, a client gone), it releases with
/// nothing used.
pub(crate) struct ChatHold {
    state: AppState,
    tenant: Tenant,
    scopes: Vec<Scope>,
    hold: String,
    model: String,
    settled: bool,
}

/// Takes the hold of one chat completion of `model` in every scope the caller's tenant names;
/// `None` when it has no budgets.
pub(crate) async fn hold_chat(
    state: &AppState,
    auth: &AuthContext,
    model: &str,
) -> ApiResult<Option<ChatHold>> {
    let Some(rec) = state.tenants.get(&auth.tenant).await? else {
        return Ok(None);
    };
    let q = &rec.quotas;
    let scopes: Vec<_> = q
        .scopes(None, Some(&auth.subject))
        .into_iter()
        .filter(|(_, l)| l.has_budget())
        .collect();
    if scopes.is_empty() {
        return Ok(None);
    }
    let caps = q.run_caps(None, Some(&auth.subject));
    let (amount, _) = reservation(&state.prices, model, &caps, true);
    let mut hold = ChatHold {
        state: state.clone(),
        tenant: auth.tenant.clone(),
        scopes: Vec::with_capacity(scopes.len()),
        hold: format!("chat-{}", uuid::Uuid::now_v7().simple()),
        model: model.to_owned(),
        settled: false,
    };
    let lease = time::Duration::try_from(state.hold_lease).unwrap_or(time::Duration::minutes(10));
    for (scope, limits) in scopes {
        let op = LedgerOp::Reserve {
            hold: hold.hold.clone(),
            run: false,
            amount,
            limits: ScopeLimits::from(limits),
            lease,
            allot: None,
        };
        let key = key::ledger(&auth.tenant, &scope);
        if let Applied::Refused(r) = state.budgets.apply(&key, &op).await? {
            agentos_bus::metric_definitions::quota_rejected(&auth.tenant, r.code());
            // Dropping `hold` releases what the earlier scopes granted.
            return Err(refused(&r));
        }
        hold.scopes.push(scope);
    }
    Ok(Some(hold))
}

impl ChatHold {
    /// Counts `usage` and releases the rest (in the background: the reply does not wait).
    pub(crate) fn settle(mut self, usage: &Usage) {
        self.settled = true;
        let total = self.state.prices.amount(&self.model, usage);
        self.release(total);
    }

    fn release(&self, total: agentos_bus::quota::Amount) {
        let (state, tenant, scopes, hold) = (
            self.state.clone(),
            self.tenant.clone(),
            self.scopes.clone(),
            self.hold.clone(),
        );
        let meter = Meter {
            model: self.model.clone(),
            agent: None,
        };
        tokio::spawn(async move {
            for scope in scopes {
                let op = LedgerOp::Release {
                    hold: hold.clone(),
                    total,
                    meter: meter.clone(),
                };
                if let Err(e) = state
                    .budgets
                    .apply(&key::ledger(&tenant, &scope), &op)
                    .await
                {
                    tracing::warn!(error = %e, %hold, "chat budget hold not released; its lease reclaims it");
                }
            }
        });
    }
}

impl Drop for ChatHold {
    fn drop(&mut self) {
        if !self.settled && !self.scopes.is_empty() {
            self.release(Default::default());
        }
    }
}
