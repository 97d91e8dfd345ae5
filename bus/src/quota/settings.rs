//! Typed quota settings: what a tenant (and, overriding it, one of its agents or principals) may
//! use. Stored in the tenant record; validated strictly at the admin API (the error names the
//! wrong field), read leniently (a record written before a field existed still loads).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::AgentId;
use crate::key::Scope;

/// The limits of one scope. Every field is optional: an absent one does not limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per second with a burst (HTTP requests at the edges, cluster-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Runs active at once (started and not ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_runs: Option<u32>,
    /// What a run over `concurrent_runs` does: wait in the queue (default) or fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_concurrency: Option<OverConcurrency>,
    /// Tokens (prompt + completion) per calendar period (UTC).
    #[serde(default, skip_serializing_if = "Periods::is_empty")]
    pub tokens: Periods<u64>,
    /// Cost in US dollars per calendar period (UTC), from the model prices in `agentos.toml`.
    #[serde(default, skip_serializing_if = "Periods::is_empty")]
    pub cost_usd: Periods<f64>,
    /// Caps of one run (or one chat completion).
    #[serde(default, skip_serializing_if = "RunCaps::is_empty")]
    pub run: RunCaps,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet spell; default: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Rate {
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.requests_per_second.ceil().max(1.0) as u32)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverConcurrency {
    #[default]
    Queue,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Periods<T> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<T>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub per_day: Option<T>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub per_month: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Default for Periods<T> {
    fn default() -> Self {
        Self {
            per_minute: None,
            per_day: None,
            per_month: None,
        }
    }
}

impl<T: Copy> Periods<T> {
    pub fn is_empty(&self) -> bool {
        self.per_minute.is_none() && self.per_day.is_none() && self.per_month.is_none()
    }

    /// Each set limit with its field name.
    pub fn set(&self) -> impl Iterator<Item = (&'static str, T)> {
        [
            ("per_minute", self.per_minute),
            ("per_day", self.per_day),
            ("per_month", self.per_month),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCaps {
    /// Most tokens one run may use (all its model calls); also what admission reserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most model steps one run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
}

impl RunCaps {
    pub fn is_empty(&self) -> bool {
        self.max_tokens.is_none() && self.max_steps.is_none()
    }

    /// `self`, with `over`'s fields where it sets them.
    fn overridden_by(self, over: &RunCaps) -> Self {
        Self {
            max_tokens: over.max_tokens.or(self.max_tokens),
            max_steps: over.max_steps.or(self.max_steps),
        }
    }
}

impl Limits {
    /// Whether this scope keeps a budget ledger (concurrency or period budgets).
    pub fn needs_ledger(&self) -> bool {
        self.concurrent_runs.is_some() || !self.tokens.is_empty() || !self.cost_usd.is_empty()
    }

    /// Whether any period budget (tokens or cost) is set.
    pub fn has_budget(&self) -> bool {
        !self.tokens.is_empty() || !self.cost_usd.is_empty()
    }

    fn validate(&self, at: &str) -> Result<(), QuotaError> {
        let bad = |field: &str, message: &str| QuotaError {
            param: join(at, field),
            message: format!("{}: {message}", join(at, field)),
        };
        if let Some(r) = &self.rate {
            if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
                return Err(bad("rate.requests_per_second", "must be a number above 0"));
            }
            if r.burst == Some(0) {
                return Err(bad("rate.burst", "must be at least 1"));
            }
        }
        if self.concurrent_runs == Some(0) {
            return Err(bad("concurrent_runs", "must be at least 1"));
        }
        if let Some((name, _)) = self.tokens.set().find(|(_, v)| *v == 0) {
            return Err(bad(&format!("tokens.{name}"), "must be at least 1"));
        }
        if let Some((name, _)) = self
            .cost_usd
            .set()
            .find(|(_, v)| !(v.is_finite() && *v > 0.0))
        {
            return Err(bad(&format!("cost_usd.{name}"), "must be a number above 0"));
        }
        if self.run.max_tokens == Some(0) {
            return Err(bad("run.max_tokens", "must be at least 1"));
        }
        if self.run.max_steps == Some(0) {
            return Err(bad("run.max_steps", "must be at least 1"));
        }
        Ok(())
    }
}

fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// A tenant's quota settings: its own limits, and overrides per agent and per principal (an API
/// key's or a token's subject). An override is a scope of its own (its own budget ledger and
/// concurrency), checked beside the tenant's; its run caps win over the tenant's.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Quotas {
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<AgentId, Limits>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub principals: BTreeMap<String, Limits>,
}

/// A quota setting that is not valid: `param` names it (`tokens.per_day`,
/// `agents.helper.run.max_tokens`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QuotaError {
    pub param: String,
    pub message: String,
}

impl Quotas {
    /// Strict parse of the settings as a client sends them: unknown or ill-typed fields are
    /// refused, naming the field.
    pub fn parse(value: &Value) -> Result<Self, QuotaError> {
        let Value::Object(map) = value else {
            return Err(QuotaError {
                param: String::new(),
                message: "quotas must be an object".into(),
            });
        };
        let mut map = map.clone();
        let agents = map.remove("agents");
        let principals = map.remove("principals");
        let limits = limits_at(&Value::Object(map), "")?;
        let mut out = Self {
            limits,
            ..Self::default()
        };
        for (name, section) in [("agents", agents), ("principals", principals)] {
            let Some(section) = section else { continue };
            let Value::Object(entries) = section else {
                return Err(QuotaError {
                    param: name.into(),
                    message: format!("{name} must be an object of overrides"),
                });
            };
            for (k, v) in entries {
                let at = format!("{name}.{k}");
                let limits = limits_at(&v, &at)?;
                if name == "agents" {
                    let id = AgentId::parse(k.clone()).map_err(|e| QuotaError {
                        param: at.clone(),
                        message: format!("{at}: {e}"),
                    })?;
                    out.agents.insert(id, limits);
                } else {
                    if k.is_empty() || k.len() > 256 {
                        return Err(QuotaError {
                            param: at.clone(),
                            message: format!("{at}: a principal is 1 to 256 characters"),
                        });
                    }
                    out.principals.insert(k, limits);
                }
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The scopes whose ledgers a run of `agent` by `principal` is held to, tenant first.
    pub fn scopes(
        &self,
        agent: Option<&AgentId>,
        principal: Option<&str>,
    ) -> Vec<(Scope, &Limits)> {
        let mut out = Vec::new();
        if self.limits.needs_ledger() {
            out.push((Scope::Tenant, &self.limits));
        }
        if let Some((a, l)) = agent
            .and_then(|a| self.agents.get_key_value(a))
            .filter(|(_, l)| l.needs_ledger())
        {
            out.push((Scope::Agent(a.clone()), l));
        }
        if let Some((p, l)) = principal
            .and_then(|p| self.principals.get_key_value(p))
            .filter(|(_, l)| l.needs_ledger())
        {
            out.push((Scope::Principal(p.clone()), l));
        }
        out
    }

    /// The caps of one run: the most specific setting of each field wins (principal, then
    /// agent, then tenant).
    pub fn run_caps(&self, agent: Option<&AgentId>, principal: Option<&str>) -> RunCaps {
        let mut caps = self.limits.run;
        if let Some(l) = agent.and_then(|a| self.agents.get(a)) {
            caps = caps.overridden_by(&l.run);
        }
        if let Some(l) = principal.and_then(|p| self.principals.get(p)) {
            caps = caps.overridden_by(&l.run);
        }
        caps
    }

    /// The request rate that applies to `principal`: its override, else the tenant's.
    pub fn rate(&self, principal: Option<&str>) -> Option<(Scope, Rate)> {
        if let Some((p, r)) = principal
            .and_then(|p| self.principals.get_key_value(p))
            .and_then(|(p, l)| l.rate.map(|r| (p, r)))
        {
            return Some((Scope::Principal(p.clone()), r));
        }
        self.limits.rate.map(|r| (Scope::Tenant, r))
    }
}

fn limits_at(value: &Value, at: &str) -> Result<Limits, QuotaError> {
    let limits: Limits =
        serde_path_to_error::deserialize(crate::strict::Strict(value)).map_err(|e| {
            let path = e.path().to_string();
            let param = if path == "." {
                at.to_owned()
            } else {
                join(at, &path)
            };
            QuotaError {
                message: format!("quotas.{param}: {}", e.inner()),
                param,
            }
        })?;
    limits.validate(at)?;
    Ok(limits)
}

impl<'de> Deserialize<'de> for Quotas {
    /// Lenient: stored settings that no longer parse are ignored (logged), so a tenant record
    /// always loads; the admin API refuses such settings before they are stored.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(Self::parse(&value).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored quota settings do not parse; ignored");
            Self::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_the_documented_shape_and_names_the_wrong_field() {
        let q = Quotas::parse(&json!({
            "rate": {"requests_per_second": 10, "burst": 20},
            "concurrent_runs": 3, "over_concurrency": "reject",
            "tokens": {"per_minute": 1000, "per_day": 100000},
            "cost_usd": {"per_month": 25.5},
            "run": {"max_tokens": 4000, "max_steps": 8},
            "agents": {"helper": {"run": {"max_tokens": 100}}},
            "principals": {"key-1": {"concurrent_runs": 1}},
        }))
        .expect("valid");
        assert_eq!(q.limits.concurrent_runs, Some(3));
        assert_eq!(q.limits.over_concurrency, Some(OverConcurrency::Reject));
        assert_eq!(q.limits.tokens.per_day, Some(100_000));
        let helper = AgentId::parse("helper").expect("id");
        assert_eq!(q.run_caps(Some(&helper), None).max_tokens, Some(100));
        assert_eq!(q.run_caps(Some(&helper), None).max_steps, Some(8));
        assert_eq!(q.scopes(Some(&helper), Some("key-1")).len(), 2);
        // Round trip through the stored form.
        let stored = serde_json::to_value(&q).expect("json");
        assert_eq!(Quotas::parse(&stored).expect("again"), q);

        for (bad, param) in [
            (json!({"tokens": {"per_dya": 5}}), "tokens.per_dya"),
            (json!({"tokens": {"per_day": "many"}}), "tokens.per_day"),
            (json!({"tokens": {"per_day": 0}}), "tokens.per_day"),
            (json!({"concurrent_runs": -1}), "concurrent_runs"),
            (json!({"over_concurrency": "wait"}), "over_concurrency"),
            (json!({"cost_usd": {"per_day": -1.0}}), "cost_usd.per_day"),
            (json!({"agents": {"Bad Id": {}}}), "agents.Bad Id"),
            (
                json!({"agents": {"helper": {"run": {"max_token": 1}}}}),
                "agents.helper.run.max_token",
            ),
            (json!({"requests_per_minute": 5}), "requests_per_minute"),
            (json!({"rate": [1.5, 2]}), "rate"),
            (json!({"run": [10, 2]}), "run"),
            (
                json!({"agents": {"helper": {"tokens": [1]}}}),
                "agents.helper.tokens",
            ),
            (json!({"concurrent_runs": 2.5}), "concurrent_runs"),
        ] {
            let e = Quotas::parse(&bad).expect_err("invalid");
            assert_eq!(e.param, param, "{bad}: {e}");
        }
    }

    #[test]
    fn a_stored_record_that_no_longer_parses_loads_without_quotas() {
        let q: Quotas = serde_json::from_value(json!({"unknown": 1})).expect("lenient");
        assert!(q.is_empty());
        let q: Quotas = serde_json::from_value(json!({"concurrent_runs": 5.0})).expect("lenient");
        assert_eq!(q.limits.concurrent_runs, Some(5));
    }
}
