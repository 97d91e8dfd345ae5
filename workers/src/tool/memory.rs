//! The memory tools: `memory.get`, `memory.put`, `memory.search`, `memory.delete`, over the same
//! store as `/v1/memory` (`agentos_bus::Memory`). Scoped twice: by the tenant (the request
//! subject's, which NATS permissions vouch for) and by the namespaces the agent grants, which
//! the orchestrator resolved for the run and sent in the request (`memory_namespaces`). Only
//! platform processes can publish on tool subjects (a tenant's NATS account imports none), so
//! the field is trusted; a namespace outside it is refused with `namespace_not_granted`.
//! `namespace` may be left out: the first granted namespace is used.

use std::sync::Arc;
use std::time::Duration;

use agentos_bus::envelope::{ErrorBody, MemoryItem, ToolRequest, now};
use agentos_bus::grant::covers;
use agentos_bus::id::{MemoryKey, Namespace, Tenant};
use agentos_bus::memory::{MAX_TTL, MAX_VALUE_BYTES};
use agentos_bus::recall::{self, MemoryConfig, RecallError};
use agentos_bus::{Bus, CallMeta, Error as BusError, Expect, Memory};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Most results `memory.search` returns.
const MAX_RESULTS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryTool {
    Get,
    Put,
    Search,
    Delete,
}

/// What the memory tools need: the store, the bus (for embeddings) and the settings.
#[derive(Clone)]
pub struct MemoryEnv {
    pub bus: Bus,
    pub memory: Memory,
    pub config: Arc<MemoryConfig>,
}

fn bad_args(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new("invalid_arguments", e.to_string())
}

fn args<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, ErrorBody> {
    serde_json::from_value(v.clone()).map_err(bad_args)
}

fn bus_error(e: BusError) -> ErrorBody {
    match e {
        BusError::WrongRevision { .. } => ErrorBody::new(
            "revision_mismatch",
            "the item is not at the revision given in if_revision",
        ),
        BusError::TtlDisabled { .. } => ErrorBody::new("ttl_unavailable", e.to_string()),
        BusError::TooLarge { .. } => ErrorBody::new("namespace_too_large", e.to_string()),
        e => {
            tracing::warn!(error = %e, "memory tool failed on the bus");
            ErrorBody::new(
                "memory_unavailable",
                "the memory store is unavailable; retry later",
            )
        }
    }
}

fn recall_error(e: RecallError) -> ErrorBody {
    match e {
        RecallError::NotEmbedded { .. } => {
            ErrorBody::new("semantic_search_unavailable", e.to_string())
        }
        RecallError::Embedding { .. } => ErrorBody::new("embedding_failed", e.to_string()),
        RecallError::Bus(BusError::NoResponders { .. }) => ErrorBody::new(
            "embedding_failed",
            "no model worker serves this namespace's embedding model",
        ),
        RecallError::Bus(e) => bus_error(e),
    }
}

/// The namespace a call names (or the first granted one), if the run was granted it.
fn namespace(req: &ToolRequest, named: Option<String>) -> Result<Namespace, ErrorBody> {
    let granted = &req.memory_namespaces;
    let ns = match named {
        Some(n) => Namespace::parse(n).map_err(bad_args)?,
        None => granted.first().cloned().ok_or_else(|| {
            ErrorBody::new(
                "namespace_not_granted",
                "this agent is granted no memory namespace (its definition's memory.namespaces)",
            )
        })?,
    };
    if !covers(granted, &ns) {
        return Err(ErrorBody::new(
            "namespace_not_granted",
            format!("this agent is not granted memory namespace {ns}"),
        ));
    }
    Ok(ns)
}

fn key(k: String) -> Result<MemoryKey, ErrorBody> {
    MemoryKey::parse(k).map_err(bad_args)
}

impl MemoryTool {
    pub const ALL: [MemoryTool; 4] = [Self::Get, Self::Put, Self::Search, Self::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "memory.get",
            Self::Put => "memory.put",
            Self::Search => "memory.search",
            Self::Delete => "memory.delete",
        }
    }

    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Get => "Reads a remembered item by key from a memory namespace.",
            Self::Put => {
                "Remembers a JSON value under a key in a memory namespace (optionally for ttl_s seconds, or only over revision if_revision)."
            }
            Self::Search => {
                "Searches a memory namespace: by meaning with query (when the namespace is embedded), by JSON fields with filter."
            }
            Self::Delete => "Forgets an item of a memory namespace.",
        }
    }

    /// The JSON Schema of the arguments.
    pub fn parameters(self) -> Value {
        let ns = json!({"type": "string", "description": "dotted namespace, e.g. users.alice; default: the first one the agent is granted"});
        let key = json!({"type": "string", "description": "the item's key, [A-Za-z0-9_=-]{1,128}"});
        let rev = json!({"type": "integer", "minimum": 1, "description": "only if the item is at this revision"});
        match self {
            Self::Get => json!({"type": "object", "properties": {"namespace": ns, "key": key},
                "required": ["key"], "additionalProperties": false}),
            Self::Put => json!({"type": "object", "properties": {"namespace": ns, "key": key,
                "value": {"description": "any JSON value, at most 64 KiB"},
                "ttl_s": {"type": "integer", "minimum": 1, "description": "forget after this many seconds"},
                "if_revision": rev}, "required": ["key", "value"], "additionalProperties": false}),
            Self::Search => json!({"type": "object", "properties": {"namespace": ns,
                "query": {"type": "string", "description": "what to look for, by meaning"},
                "filter": {"type": "object", "description": "fields the value must have, with these values"},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS}},
                "additionalProperties": false}),
            Self::Delete => {
                json!({"type": "object", "properties": {"namespace": ns, "key": key, "if_revision": rev},
                "required": ["key"], "additionalProperties": false})
            }
        }
    }

    /// Whether running the call twice is harmless: reads are; writes are recorded under the
    /// call's idempotency key like every call, but a timed-out write is not retried.
    pub fn idempotent(self) -> bool {
        matches!(self, Self::Get | Self::Search)
    }

    pub async fn call(
        self,
        env: &MemoryEnv,
        tenant: &Tenant,
        principal: Option<&str>,
        req: &ToolRequest,
    ) -> Result<Value, ErrorBody> {
        let meta = CallMeta {
            principal: principal.map(str::to_owned),
            ..CallMeta::new(tenant.clone())
        };
        match self {
            Self::Get => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    namespace: Option<String>,
                    key: String,
                }
                let a: A = args(&req.arguments)?;
                let (ns, k) = (namespace(req, a.namespace)?, key(a.key)?);
                Ok(
                    match env.memory.get(tenant, &ns, &k).await.map_err(bus_error)? {
                        Some(v) => json!({"found": true, "namespace": ns, "key": k,
                        "value": v.value.value, "revision": v.revision}),
                        None => json!({"found": false, "namespace": ns, "key": k}),
                    },
                )
            }
            Self::Put => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    namespace: Option<String>,
                    key: String,
                    value: Value,
                    ttl_s: Option<u64>,
                    if_revision: Option<u64>,
                }
                let a: A = args(&req.arguments)?;
                let (ns, k) = (namespace(req, a.namespace)?, key(a.key)?);
                let size = serde_json::to_vec(&a.value).map_or(usize::MAX, |v| v.len());
                if size > MAX_VALUE_BYTES {
                    return Err(ErrorBody::new(
                        "value_too_large",
                        format!("value is {size} bytes as JSON; at most {MAX_VALUE_BYTES}"),
                    ));
                }
                let ttl = match a.ttl_s {
                    None => None,
                    Some(s @ 1..) if s <= MAX_TTL.as_secs() => Some(Duration::from_secs(s)),
                    Some(_) => {
                        return Err(bad_args(format!("ttl_s must be 1..={}", MAX_TTL.as_secs())));
                    }
                };
                let ts = now();
                let mut item = MemoryItem {
                    value: a.value,
                    embedding: None,
                    expires_at: ttl.map(|d| ts + d),
                    updated_at: ts,
                };
                recall::embed_item(&env.bus, &env.config, &meta, &ns, &mut item)
                    .await
                    .map_err(recall_error)?;
                let expect = a.if_revision.map_or(Expect::Any, Expect::Revision);
                let revision = env
                    .memory
                    .put(tenant, &ns, &k, &item, ttl, expect)
                    .await
                    .map_err(bus_error)?;
                Ok(json!({"namespace": ns, "key": k, "revision": revision}))
            }
            Self::Search => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    namespace: Option<String>,
                    query: Option<String>,
                    filter: Option<Map<String, Value>>,
                    limit: Option<usize>,
                }
                let a: A = args(&req.arguments)?;
                let ns = namespace(req, a.namespace)?;
                let limit = a.limit.unwrap_or(5).clamp(1, MAX_RESULTS);
                let query = a.query.filter(|q| !q.trim().is_empty());
                let hits = recall::search(
                    &env.bus,
                    &env.memory,
                    &env.config,
                    &meta,
                    &ns,
                    query.as_deref(),
                    a.filter.as_ref(),
                    limit,
                )
                .await
                .map_err(recall_error)?;
                let results: Vec<Value> = hits
                    .into_iter()
                    .map(|h| json!({"key": h.key, "value": h.item.value, "score": h.score}))
                    .collect();
                Ok(json!({"namespace": ns, "results": results}))
            }
            Self::Delete => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct A {
                    namespace: Option<String>,
                    key: String,
                    if_revision: Option<u64>,
                }
                let a: A = args(&req.arguments)?;
                let (ns, k) = (namespace(req, a.namespace)?, key(a.key)?);
                if env
                    .memory
                    .get(tenant, &ns, &k)
                    .await
                    .map_err(bus_error)?
                    .is_none()
                {
                    return Ok(json!({"deleted": false, "namespace": ns, "key": k}));
                }
                env.memory
                    .delete(tenant, &ns, &k, a.if_revision)
                    .await
                    .map_err(bus_error)?;
                Ok(json!({"deleted": true, "namespace": ns, "key": k}))
            }
        }
    }
}
