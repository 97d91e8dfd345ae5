//! Policy hooks around every model call: `before` may refuse or adjust the request (entitlement,
//! token caps; quotas plug in here), `after` sees the outcome (usage accounting). A real seam:
//! the quota and content-policy work adds implementations without touching the worker.

use agentos_bus::envelope::{ErrorBody, ModelReply, ModelRequest};
use agentos_bus::id::{ModelName, Tenant};
use futures::future::BoxFuture;
use serde_json::Value;

use super::Route;

/// What a hook knows about a call.
pub struct CallContext<'a> {
    pub tenant: &'a Tenant,
    /// Who the call is for, as the platform component that made it says (`AgentOS-Principal`).
    pub principal: Option<&'a str>,
    /// The principal's roles (`AgentOS-Roles`), for policies that depend on them.
    pub roles: Vec<&'a str>,
    pub model: &'a ModelName,
    pub route: &'a Route,
}

pub trait Hook: Send + Sync {
    fn before<'a>(
        &'a self,
        _ctx: &'a CallContext<'a>,
        _req: &'a mut ModelRequest,
    ) -> BoxFuture<'a, Result<(), ErrorBody>> {
        Box::pin(async { Ok(()) })
    }

    fn after<'a>(&'a self, _ctx: &'a CallContext<'a>, _reply: &'a ModelReply) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Enforces a route's `max-tokens`: a larger request is refused, an absent one gets the cap.
pub struct TokenCap;

impl Hook for TokenCap {
    fn before<'a>(
        &'a self,
        ctx: &'a CallContext<'a>,
        req: &'a mut ModelRequest,
    ) -> BoxFuture<'a, Result<(), ErrorBody>> {
        Box::pin(async move {
            let Some(cap) = ctx.route.max_tokens else {
                return Ok(());
            };
            let asked = ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|k| req.params.get(*k).and_then(Value::as_u64));
            match asked {
                Some(n) if n > cap => Err(ErrorBody::new(
                    "max_tokens_exceeded",
                    format!(
                        "model {} allows at most {cap} completion tokens, {n} were asked for",
                        ctx.model
                    ),
                )),
                Some(_) => Ok(()),
                None => {
                    req.params.insert("max_tokens".into(), Value::from(cap));
                    Ok(())
                }
            }
        })
    }
}

/// Logs usage per call; metrics and quota settlement build on the same point.
pub struct UsageLog;

impl Hook for UsageLog {
    fn after<'a>(&'a self, ctx: &'a CallContext<'a>, reply: &'a ModelReply) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match reply {
                ModelReply::Final { usage, .. } => tracing::info!(
                    tenant = %ctx.tenant, principal = ctx.principal, model = %ctx.model,
                    prompt_tokens = usage.prompt_tokens, completion_tokens = usage.completion_tokens,
                    "model call"
                ),
                ModelReply::Error { error } => {
                    tracing::info!(tenant = %ctx.tenant, principal = ctx.principal, model = %ctx.model, code = %error.code, "model call failed")
                }
                _ => {}
            }
        })
    }
}
