//! Tenants (KV `agentos-tenants`, key `<tenant>`) and audit records (stream `AGENTOS_AUDIT`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Envelope;
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
    /// Quota settings, enforced by the quotas work (`requests_per_minute`, `concurrent_runs`, …).
    #[serde(default)]
    pub quotas: serde_json::Map<String, serde_json::Value>,
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
    /// The caller's tenant.
    pub actor_tenant: Tenant,
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
