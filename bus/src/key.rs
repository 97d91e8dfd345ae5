//! KV keys, built from validated ids only. Outside this crate a [`Key`] cannot be made from a
//! string except through [`Key::parse`], which checks the KV key grammar; every key the platform
//! uses has a builder here, so the layout of each bucket is written down in one place.

use std::fmt;

use crate::id::{AgentId, CallId, MemoryKey, Namespace, NodeId, RunId, Tenant, ThreadId};
use crate::{Error, Result};

/// One key of a KV bucket: `[-/_=.a-zA-Z0-9]+`, no leading or trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// A key from text (operator tools, tests); the builders below are the usual way.
    pub fn parse(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let reason = if s.is_empty() {
            Some("must not be empty")
        } else if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
            Some("must not start or end with '.' or have empty tokens")
        } else if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        {
            Some("may contain only A-Z, a-z, 0-9 and - / _ = .")
        } else {
            None
        };
        match reason {
            None => Ok(Self(s)),
            Some(reason) => Err(Error::InvalidId {
                kind: "kv key",
                value: s,
                reason,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What follows the first token (for `<tenant>.<id>` keys: the id).
    pub fn tail(&self) -> &str {
        self.0.split_once('.').map_or("", |(_, rest)| rest)
    }

    fn joined(parts: &[&str]) -> Self {
        Self(parts.join("."))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `agentos-runs`: `<tenant>.<run_id>` holds the run record.
pub fn run(tenant: &Tenant, run: &RunId) -> Key {
    Key::joined(&[tenant.as_str(), &run.to_string()])
}

/// `agentos-runs`: `<tenant>.idem-<digest>` maps an `Idempotency-Key` to the run it created.
/// The digest (a UUIDv5 of tenant and key) keeps any client string out of the key.
pub fn idempotency(tenant: &Tenant, client_key: &str) -> Key {
    let name = format!("{tenant}\u{0}{client_key}");
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
    Key::joined(&[tenant.as_str(), &format!("idem-{}", digest.simple())])
}

/// `agentos-agents`: `<tenant>.<agent_id>`.
pub fn agent(tenant: &Tenant, agent: &AgentId) -> Key {
    Key::joined(&[tenant.as_str(), agent.as_str()])
}

/// `agentos-tenants`: `<tenant>`.
pub fn tenant(tenant: &Tenant) -> Key {
    Key(tenant.as_str().to_owned())
}

/// `agentos-tool-results`: `<tenant>.<run_id>.<step>.<call_id>`, one tool call's recorded reply.
pub fn tool_result(tenant: &Tenant, run: &RunId, step: u32, call: &CallId) -> Key {
    Key::joined(&[
        tenant.as_str(),
        &run.to_string(),
        &step.to_string(),
        call.as_str(),
    ])
}

/// `agentos-memory`: `<tenant>.<namespace…>.<key>`, one memory item. The namespace's dots are
/// key levels, so a namespace's items are exactly the keys one level below it.
pub fn memory(tenant: &Tenant, namespace: &Namespace, key: &MemoryKey) -> Key {
    Key::joined(&[tenant.as_str(), namespace.as_str(), key.as_str()])
}

/// `agentos-memory`: `<tenant>.<namespace…>`, the prefix of a namespace's items (not a key itself:
/// pass it to the listing, which adds the one level of the item keys).
pub fn memory_namespace(tenant: &Tenant, namespace: &Namespace) -> Key {
    Key::joined(&[tenant.as_str(), namespace.as_str()])
}

/// `agentos-threads`: `<tenant>.<thread_id>` holds the thread record.
pub fn thread(tenant: &Tenant, thread: &ThreadId) -> Key {
    Key::joined(&[tenant.as_str(), thread.as_str()])
}

/// `agentos-threads`: `<tenant>.<thread_id>.turn.<run_id>`, the messages one run added.
pub fn thread_turn(tenant: &Tenant, thread: &ThreadId, run: &RunId) -> Key {
    Key::joined(&[tenant.as_str(), thread.as_str(), "turn", &run.to_string()])
}

/// `agentos-threads`: `<tenant>.<thread_id>.run.<run_id>`, a run submitted on the thread.
pub fn thread_run(tenant: &Tenant, thread: &ThreadId, run: &RunId) -> Key {
    Key::joined(&[tenant.as_str(), thread.as_str(), "run", &run.to_string()])
}

/// `agentos-threads`: `<tenant>.<thread_id>.lock`, the thread's active run under a lease.
pub fn thread_lock(tenant: &Tenant, thread: &ThreadId) -> Key {
    Key::joined(&[tenant.as_str(), thread.as_str(), "lock"])
}

/// Whose budget a ledger in `agentos-usage` keeps: the tenant's, one agent's, or one principal's
/// (an API key or token subject) when the tenant's quota settings override them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Tenant,
    Agent(AgentId),
    /// A principal (the token's `sub`, any string): keyed by its digest.
    Principal(String),
}

/// `agentos-usage`: the budget ledger of one scope: `<tenant>.ledger`,
/// `<tenant>.agent.<agent_id>`, or `<tenant>.principal.<uuidv5(tenant NUL principal)>`.
pub fn ledger(tenant: &Tenant, scope: &Scope) -> Key {
    match scope {
        Scope::Tenant => Key::joined(&[tenant.as_str(), "ledger"]),
        Scope::Agent(agent) => Key::joined(&[tenant.as_str(), "agent", agent.as_str()]),
        Scope::Principal(principal) => {
            let name = format!("{tenant}\u{0}{principal}");
            let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
            Key::joined(&[tenant.as_str(), "principal", &digest.simple().to_string()])
        }
    }
}

/// `agentos-usage`: the cluster-wide request-rate state of one scope: `<tenant>.rate`,
/// `<tenant>.agent.<agent_id>.rate`, `<tenant>.principal.<uuidv5>.rate`.
pub fn rate(tenant: &Tenant, scope: &Scope) -> Key {
    match scope {
        Scope::Tenant => Key::joined(&[tenant.as_str(), "rate"]),
        other => Key(format!("{}.rate", ledger(tenant, other))),
    }
}

/// Key filters of `agentos-threads` (wildcards: for listing only, never written).
pub(crate) mod thread_filter {
    use crate::id::{Tenant, ThreadId};

    /// Every thread record of a tenant.
    pub(crate) fn records(tenant: &Tenant) -> String {
        format!("{tenant}.*")
    }

    /// Every turn of a thread.
    pub(crate) fn turns(tenant: &Tenant, thread: &ThreadId) -> String {
        format!("{tenant}.{thread}.turn.*")
    }

    /// Every run entry of a thread.
    pub(crate) fn runs(tenant: &Tenant, thread: &ThreadId) -> String {
        format!("{tenant}.{thread}.run.*")
    }

    /// Everything of a thread but its record.
    pub(crate) fn all(tenant: &Tenant, thread: &ThreadId) -> String {
        format!("{tenant}.{thread}.>")
    }
}

/// `agentos-fwd`: `out.<tenant>.<run_id>`, a run this cluster forwarded (where it lives).
pub fn fwd_out(tenant: &Tenant, run: &RunId) -> Key {
    Key::joined(&["out", tenant.as_str(), &run.to_string()])
}

/// `agentos-fwd`: `in.<tenant>.<origin_run_id>`, a run a peer forwarded here (its local id and
/// whether its events are all sent back).
pub fn fwd_in(tenant: &Tenant, origin_run: &RunId) -> Key {
    Key::joined(&["in", tenant.as_str(), &origin_run.to_string()])
}

/// `agentos-peers`: `<node>`, a peer's last announcement.
pub fn peer(node: &NodeId) -> Key {
    Key::joined(&[node.as_str()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_each_buckets_layout_and_parse_checks_the_grammar() {
        let t = Tenant::parse("acme").expect("tenant");
        let r = RunId::new();
        assert_eq!(run(&t, &r).as_str(), format!("acme.{r}"));
        assert_eq!(run(&t, &r).tail(), r.to_string());
        let a = AgentId::parse("helper").expect("agent");
        assert_eq!(agent(&t, &a).as_str(), "acme.helper");
        assert_eq!(tenant(&t).as_str(), "acme");
        let c = CallId::parse("call_1").expect("call");
        assert_eq!(
            tool_result(&t, &r, 2, &c).as_str(),
            format!("acme.{r}.2.call_1")
        );
        let idem = idempotency(&t, "any string at all / with spaces");
        assert!(idem.as_str().starts_with("acme.idem-"));
        assert_eq!(idem, idempotency(&t, "any string at all / with spaces"));
        assert!(Key::parse(idem.as_str()).is_ok());
        let ns = Namespace::parse("users.alice").expect("ns");
        let mk = MemoryKey::parse("Fact_1").expect("key");
        assert_eq!(memory(&t, &ns, &mk).as_str(), "acme.users.alice.Fact_1");
        assert_eq!(memory_namespace(&t, &ns).as_str(), "acme.users.alice");
        assert_eq!(ledger(&t, &Scope::Tenant).as_str(), "acme.ledger");
        assert_eq!(
            ledger(&t, &Scope::Agent(a.clone())).as_str(),
            "acme.agent.helper"
        );
        let p = ledger(&t, &Scope::Principal("any sub / at all".into()));
        assert!(p.as_str().starts_with("acme.principal.") && Key::parse(p.as_str()).is_ok());
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>"] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
    }
}
