//! Validated identifiers. Nothing user-supplied reaches a subject or a KV key without passing here.
//!
//! A *token* is `[a-z0-9][a-z0-9_-]{0,62}`: safe as one NATS subject token and one KV key token.
//! Tool names are one to four dot-separated tokens (`clock.now`, `mcp.github.search`), which map
//! onto subject levels, so NATS permissions still fence them with wildcards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Result};

const MAX_TOKEN: usize = 63;
const MAX_TOOL_SEGMENTS: usize = 4;

/// The rules below as regular expressions (ECMA 262, for JSON Schema): the API document states
/// them, and a test checks they agree with the checks here.
pub mod pattern {
    /// A token: tenants, agents, threads, MCP servers.
    pub const TOKEN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";
    /// One to four dot-separated tokens: tool and model names.
    pub const DOTTED: &str = "^[a-z0-9][a-z0-9_-]{0,62}(\\.[a-z0-9][a-z0-9_-]{0,62}){0,3}$";
    /// One to eight dot-separated tokens: memory namespaces.
    pub const NAMESPACE: &str = "^[a-z0-9][a-z0-9_-]{0,62}(\\.[a-z0-9][a-z0-9_-]{0,62}){0,7}$";
    /// A memory key (besides the reserved `search`).
    pub const MEMORY_KEY: &str = "^[A-Za-z0-9_=-]{1,128}$";
    /// A tool call id.
    pub const CALL_ID: &str = "^[A-Za-z0-9_-]{1,256}$";
    /// A run id: a lowercase hyphenated UUID.
    pub const RUN_ID: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
}

/// Checks one token; returns the reason it is invalid.
fn check_token(s: &str) -> Result<(), &'static str> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("must not be empty");
    };
    if bytes.len() > MAX_TOKEN {
        return Err("must be at most 63 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("must start with a lowercase letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
    {
        return Err("may contain only a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

/// One to four dot-separated tokens: maps onto subject levels, fenced by `….<tenant>.>`.
fn check_dotted(s: &str) -> Result<(), &'static str> {
    if s.split('.').count() > MAX_TOOL_SEGMENTS {
        return Err("may have at most four dot-separated parts");
    }
    s.split('.').try_for_each(check_token)
}

/// Most levels of a memory namespace (`users.alice.prefs` has three).
pub const MAX_NAMESPACE_SEGMENTS: usize = 8;

/// One to eight dot-separated tokens: each a KV key level under `<tenant>.`.
fn check_namespace(s: &str) -> Result<(), &'static str> {
    if s.split('.').count() > MAX_NAMESPACE_SEGMENTS {
        return Err("may have at most eight dot-separated parts");
    }
    s.split('.').try_for_each(check_token)
}

/// The one key a memory item cannot have: its HTTP path is the namespace's search.
pub const RESERVED_MEMORY_KEY: &str = "search";

/// Longest memory key.
pub const MAX_MEMORY_KEY: usize = 128;

/// A memory key: `[A-Za-z0-9_=-]{1,128}`, one KV key level (no dots: the namespace owns them).
fn check_memory_key(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > MAX_MEMORY_KEY {
        return Err("must be 1 to 128 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=')
    {
        return Err("may contain only A-Z, a-z, 0-9, '_', '-' and '='");
    }
    if s == RESERVED_MEMORY_KEY {
        return Err("is reserved (POST /v1/memory/{namespace}/search)");
    }
    Ok(())
}

/// Longest tool call id: upstreams mint long ones (llama-cpp-python's
/// `call__0_<name>_cmpl-<uuid>`, 60–100 characters), so the bound is generous.
pub const MAX_CALL_ID: usize = 256;

/// A tool call id as models mint them (`call_1`, `call_AbC123`): `[A-Za-z0-9_-]{1,256}`. Never
/// part of a subject; part of KV keys, which allow these characters.
fn check_call_id(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > MAX_CALL_ID {
        return Err("must be 1 to 256 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("may contain only A-Z, a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        token_id!($(#[$doc])* $name, $kind, check_token);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const KIND: &'static str = $kind;

            pub fn parse(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                match $check(&s) {
                    Ok(()) => Ok(Self(s)),
                    Err(reason) => Err(Error::InvalidId { kind: $kind, value: s, reason }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_id!(
    /// A tenant: the second token of every tenant-scoped subject.
    Tenant,
    "tenant"
);
token_id!(
    /// An agent definition's id, unique within a tenant.
    AgentId,
    "agent id"
);
token_id!(
    /// A public model name (`scripted`, `gpt-4o-mini`, `gpt-4.1`): one to four dotted tokens.
    ModelName,
    "model name",
    check_dotted
);
token_id!(
    /// A memory namespace: one to eight dot-separated tokens (`users.alice.prefs`).
    Namespace,
    "namespace",
    check_namespace
);
token_id!(
    /// A memory item's key within its namespace: `[A-Za-z0-9_=-]{1,128}`.
    MemoryKey,
    "memory key",
    check_memory_key
);
token_id!(
    /// An MCP server bridged by `agentos worker mcp`: the second part of its tools' names
    /// (`mcp.<server>.<tool>`).
    McpServer,
    "mcp server name"
);
token_id!(
    /// A tool call's id within one model turn, as the model named it.
    CallId,
    "call id",
    check_call_id
);
token_id!(
    /// A tool name: one to four dot-separated tokens, e.g. `echo` or `math.eval`.
    ToolName,
    "tool name",
    check_dotted
);

token_id!(
    /// A federation node: one AgentOS cluster, also its JetStream domain (`$JS.<node>.API`).
    NodeId,
    "node id"
);

token_id!(
    /// A conversation thread, minted by the platform: `thread_` and a UUIDv7 in simple form
    /// (time-ordered, so key order is creation order).
    ThreadId,
    "thread id"
);

impl ThreadId {
    /// A fresh, time-ordered id.
    pub fn mint() -> Self {
        Self(format!("thread_{}", Uuid::now_v7().simple()))
    }
}

/// A run id: a UUIDv7 (time-ordered, so key order is submission order), rendered hyphenated
/// lowercase, which is also a valid token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(Uuid);

impl RunId {
    pub const KIND: &'static str = "run id";

    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a number: ordered like the ids, so time-ordered (UUIDv7).
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidId {
            kind: Self::KIND,
            value: s.to_owned(),
            reason,
        };
        if s.len() != 36 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("must be a lowercase hyphenated UUID"));
        }
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| invalid("must be a lowercase hyphenated UUID"))
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl TryFrom<String> for RunId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<RunId> for String {
    fn from(v: RunId) -> String {
        v.to_string()
    }
}

impl FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_accept_the_documented_alphabet() {
        for ok in ["a", "0", "acme", "acme-corp_2", &"a".repeat(63)] {
            assert!(Tenant::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn tokens_reject_subject_metacharacters_and_the_rest() {
        for bad in [
            "",
            " ",
            "a b",
            "a.b",
            "*",
            ">",
            "a*",
            "a>",
            "Acme",
            "-a",
            "_a",
            "é",
            "a\n",
            "a\t",
            &"a".repeat(64),
        ] {
            let err = Tenant::parse(bad).expect_err(bad);
            assert_eq!(err.code(), "invalid_id");
        }
    }

    #[test]
    fn call_ids_take_what_upstreams_mint() {
        let llama = format!("call__0_get_current_weather_cmpl-{}", "a".repeat(60));
        assert!(CallId::parse(llama).is_ok());
        assert!(CallId::parse("x".repeat(MAX_CALL_ID)).is_ok());
        for bad in ["", "a.b", "a b", "a:b", &"x".repeat(MAX_CALL_ID + 1)] {
            assert!(CallId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tool_names_are_dotted_tokens() {
        assert!(ToolName::parse("math.eval").is_ok());
        assert!(ToolName::parse("mcp.github.search.code").is_ok());
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.*",
            "a.>",
            "a.b.c.d.e",
            "A.b",
            "a b",
        ] {
            assert!(ToolName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces_are_up_to_eight_dotted_tokens_and_keys_one_level() {
        for ok in ["users", "users.alice.prefs", "a.b.c.d.e.f.g.h"] {
            assert!(Namespace::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a.",
            ".a",
            "a..b",
            "a.b.c.d.e.f.g.h.i",
            "Users",
            "a.*",
            "a.>",
            "a b",
        ] {
            assert!(Namespace::parse(bad).is_err(), "{bad}");
        }
        for ok in ["k", "Fact_1", "a=b-c", &"k".repeat(MAX_MEMORY_KEY)] {
            assert!(MemoryKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a.b",
            "a b",
            "a/b",
            "*",
            ">",
            &"k".repeat(MAX_MEMORY_KEY + 1),
        ] {
            assert!(MemoryKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_ids_round_trip_and_reject_garbage() {
        let id = RunId::new();
        assert_eq!(RunId::parse(&id.to_string()).expect("parse"), id);
        for bad in [
            "",
            "x",
            "0190c1e2-7a3b-7000-8000-00000000000",
            "0190C1E2-7A3B-7000-8000-000000000000",
        ] {
            assert!(RunId::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_accepted_token_is_one_subject_token(s in "\\PC{0,80}") {
            if let Ok(t) = Tenant::parse(s.clone()) {
                prop_assert!(!t.as_str().is_empty() && t.as_str().len() <= 63);
                prop_assert!(!t.as_str().contains(['.', '*', '>', ' ']));
            }
        }
    }
}
