//! Tenants (KV `agentos-tenants`, key `<tenant>`) and audit records (stream `AGENTOS_AUDIT`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{AgentSpec, Envelope};
use crate::id::Tenant;

/// A tenant: whether it may use the platform, what it is entitled to, and its quota settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: Tenant,
    #[serde(default)]
    pub name: String,
    pub enabled: bool,
    /// Models, tools and agents the tenant may use; an empty list means "all".
    #[serde(default)]
    pub entitlements: Entitlements,
    /// Quota settings: rate, concurrency, token and cost budgets, run caps; overrides per agent
    /// and per principal ([`crate::quota::Quotas`]).
    #[serde(default, skip_serializing_if = "crate::quota::Quotas::is_empty")]
    pub quotas: crate::quota::Quotas,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entitlements {
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
}

/// A use the tenant's entitlements do not cover: `kind` is `model`, `tool` or `agent`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tenant is not entitled to use {kind} {name}")]
pub struct NotEntitled {
    pub kind: &'static str,
    pub name: String,
}

impl Entitlements {
    pub fn check_model(&self, model: &str) -> Result<(), NotEntitled> {
        check("model", &self.models, model)
    }

    pub fn check_tool(&self, tool: &str) -> Result<(), NotEntitled> {
        check("tool", &self.tools, tool)
    }

    /// The agent itself, its model and every tool it may call.
    pub fn check_agent(&self, agent: &AgentSpec) -> Result<(), NotEntitled> {
        check("agent", &self.agents, agent.id.as_str())?;
        self.check_model(agent.model.as_str())?;
        agent
            .tools
            .iter()
            .try_for_each(|t| self.check_tool(t.as_str()))
    }
}

/// An empty list allows everything; otherwise the name must be listed.
fn check(kind: &'static str, allowed: &[String], name: &str) -> Result<(), NotEntitled> {
    if allowed.is_empty() || allowed.iter().any(|a| a == name) {
        Ok(())
    } else {
        Err(NotEntitled {
            kind,
            name: name.to_owned(),
        })
    }
}

impl Envelope for TenantRecord {
    const WHAT: &'static str = "tenant";
}

/// Who did what, when: one message on `agentos.audit.<tenant>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    /// The tenant acted upon.
    pub tenant: Tenant,
    /// The caller's subject (`sub`).
    pub actor: String,
    /// The caller's tenant; `None` for the platform's own operators (the local CLI).
    #[serde(default)]
    pub actor_tenant: Option<Tenant>,
    /// e.g. `tenant.create`, `tenant.disable`, `run.create`, `run.cancel`.
    pub action: String,
    /// What was acted upon (a tenant id, a run id, …).
    pub target: String,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Envelope for AuditRecord {
    const WHAT: &'static str = "audit record";
}
