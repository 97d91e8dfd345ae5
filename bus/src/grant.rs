//! Which memory namespaces an agent's runs may touch. An agent grants namespace *templates*
//! (`users.{principal}`, `threads.{thread}`, `agents.{agent}.notes`, `shared.faq`); the
//! orchestrator resolves them for each run, from what only the platform knows (the run's
//! creator, its thread, its agent), and sends the result with every tool request. A grant
//! covers its namespace and every namespace below it (`users.alice` covers `users.alice.prefs`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, Namespace};
use crate::{Error, Result};

const PRINCIPAL: &str = "{principal}";
const THREAD: &str = "{thread}";
const AGENT: &str = "{agent}";

/// An agent's memory settings (`AgentSpec.memory`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMemory {
    #[serde(default)]
    pub namespaces: Vec<NamespaceTemplate>,
}

impl AgentMemory {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// The namespaces a run may touch; templates whose placeholder has no value for this run
    /// (a run without a thread) grant nothing.
    pub fn resolve(&self, run: &RunScope<'_>) -> Vec<Namespace> {
        let mut out: Vec<Namespace> = self
            .namespaces
            .iter()
            .filter_map(|t| t.resolve(run))
            .collect();
        out.dedup();
        out
    }
}

/// What a template's placeholders stand for in one run.
#[derive(Clone, Copy, Debug)]
pub struct RunScope<'a> {
    /// Who created the run (a token's `sub`, or `nats:<tenant>`).
    pub principal: Option<&'a str>,
    pub thread: Option<&'a str>,
    pub agent: &'a AgentId,
}

/// A namespace with placeholders as whole tokens: `{principal}`, `{thread}`, `{agent}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamespaceTemplate(String);

impl NamespaceTemplate {
    pub fn parse(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let invalid = |reason| Error::InvalidId {
            kind: "namespace template",
            value: s.clone(),
            reason,
        };
        let sample: Vec<&str> = s
            .split('.')
            .map(|part| match part {
                PRINCIPAL | THREAD | AGENT => "x",
                other => other,
            })
            .collect();
        if sample.iter().any(|p| p.contains(['{', '}'])) {
            return Err(invalid(
                "placeholders are whole tokens: {principal}, {thread} or {agent}",
            ));
        }
        Namespace::parse(sample.join("."))
            .map_err(|_| invalid("must be 1 to 8 dot-separated tokens [a-z0-9][a-z0-9_-]{0,62}"))?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace for one run, or `None` when a placeholder has no value.
    pub fn resolve(&self, run: &RunScope<'_>) -> Option<Namespace> {
        let parts: Option<Vec<String>> = self
            .0
            .split('.')
            .map(|part| match part {
                PRINCIPAL => run.principal.map(token_for),
                THREAD => run.thread.map(token_for),
                AGENT => Some(run.agent.to_string()),
                other => Some(other.to_owned()),
            })
            .collect();
        Namespace::parse(parts?.join(".")).ok()
    }
}

impl TryFrom<String> for NamespaceTemplate {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(s)
    }
}

impl From<NamespaceTemplate> for String {
    fn from(t: NamespaceTemplate) -> String {
        t.0
    }
}

impl fmt::Display for NamespaceTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A principal or thread id as one namespace token: itself when it is a valid token that does
/// not look like a digest, else `h-<UUIDv5 of it, 32 hex digits>` (so `auth0|42`, an e-mail
/// address or `nats:acme` each get their own token, and no one can choose another's).
pub fn token_for(s: &str) -> String {
    let looks_hashed = s.len() == 34 && s.starts_with("h-");
    if !looks_hashed && crate::id::Tenant::parse(s).is_ok() {
        return s.to_owned();
    }
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, s.as_bytes());
    format!("h-{}", digest.simple())
}

/// Whether `ns` is one of `granted` or below one of them (whole tokens).
pub fn covers(granted: &[Namespace], ns: &Namespace) -> bool {
    granted.iter().any(|g| {
        ns == g
            || ns
                .as_str()
                .strip_prefix(g.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::parse(s).expect("ns")
    }

    #[test]
    fn templates_take_whole_token_placeholders_only() {
        for ok in [
            "users.{principal}",
            "{thread}",
            "agents.{agent}.notes",
            "shared.faq",
        ] {
            assert!(NamespaceTemplate::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "users-{principal}",
            "{user}",
            "a..b",
            "Users",
            "{principal",
            "",
            "a.b.c.d.e.f.g.h.{thread}",
        ] {
            assert!(NamespaceTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_resolve_per_run_and_odd_ids_become_digests() {
        let agent = AgentId::parse("helper").expect("agent");
        let run = RunScope {
            principal: Some("alice"),
            thread: None,
            agent: &agent,
        };
        let mem = AgentMemory {
            namespaces: ["users.{principal}", "threads.{thread}", "agents.{agent}"]
                .into_iter()
                .map(|t| NamespaceTemplate::parse(t).expect("t"))
                .collect(),
        };
        assert_eq!(
            mem.resolve(&run),
            vec![ns("users.alice"), ns("agents.helper")]
        );
        let odd = token_for("auth0|Alice@example.com");
        assert!(odd.starts_with("h-") && odd.len() == 34, "{odd}");
        assert_eq!(odd, token_for("auth0|Alice@example.com"));
        assert_ne!(token_for(&odd), odd, "a digest-looking id is hashed too");
        assert_eq!(token_for("nats:acme"), token_for("nats:acme"));
    }

    #[test]
    fn a_grant_covers_its_namespace_and_below() {
        let g = [ns("users.alice")];
        assert!(covers(&g, &ns("users.alice")));
        assert!(covers(&g, &ns("users.alice.prefs")));
        assert!(!covers(&g, &ns("users.alicex")));
        assert!(!covers(&g, &ns("users")));
        assert!(!covers(&[], &ns("users.alice")));
    }
}
