//! Semantic memory: which namespaces are embedded and with which model, embedding an item's
//! value when it is written, and search over a namespace (JSON field filter, then cosine top-k
//! against the query's vector). Used alike by the edge (`/v1/memory`) and the memory tools.
//!
//! Cost: a search reads every live item of the namespace (values and vectors, one KV message
//! each) and computes one dot product per item, so it is bounded by
//! [`MemoryConfig::max_scan`] items per namespace; a larger namespace is refused
//! ([`crate::Error::TooLarge`]) rather than scanned without bound. A query costs one embedding
//! call; a write to an embedded namespace costs one embedding call.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::envelope::{EmbeddingReply, EmbeddingRequest, ErrorBody, MemoryItem, StoredEmbedding};
use crate::id::{MemoryKey, ModelName, Namespace};
use crate::memory::{Memory, cosine, matches_filter};
use crate::{Bus, CallMeta, Error};

/// Default bound on the items a search reads in one namespace.
pub const DEFAULT_MAX_SCAN: usize = 10_000;
/// Longest wait for an embedding reply.
pub const EMBED_TIMEOUT: Duration = Duration::from_secs(30);

/// Which namespaces are embedded, and the scan bound.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// Namespace prefix (whole tokens) → embedding model; the longest prefix wins.
    prefixes: Vec<(Namespace, ModelName)>,
    pub max_scan: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            prefixes: Vec::new(),
            max_scan: DEFAULT_MAX_SCAN,
        }
    }
}

impl MemoryConfig {
    pub fn new(
        prefixes: impl IntoIterator<Item = (Namespace, ModelName)>,
        max_scan: usize,
    ) -> Self {
        Self {
            prefixes: prefixes.into_iter().collect(),
            max_scan,
        }
    }

    /// The embedding model of `ns`: the one configured for its longest prefix, whole tokens
    /// (`users` covers `users.alice`, not `usersx`).
    pub fn embedding_model(&self, ns: &Namespace) -> Option<&ModelName> {
        self.prefixes
            .iter()
            .filter(|(p, _)| {
                ns.as_str() == p.as_str()
                    || ns
                        .as_str()
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .max_by_key(|(p, _)| p.as_str().len())
            .map(|(_, m)| m)
    }
}

/// Why a semantic operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    /// A query on a namespace with no embedding model.
    #[error(
        "namespace {namespace} has no embedding model; configure [memory.namespaces.\"<prefix>\"] embedding-model"
    )]
    NotEmbedded { namespace: String },
    /// The model worker answered with an error (or an unusable reply).
    #[error("embedding with {model} failed: {}", error.message)]
    Embedding { model: String, error: ErrorBody },
    #[error(transparent)]
    Bus(#[from] Error),
}

/// The text an item's vector is made from: a string value as it is, anything else as its
/// compact JSON.
pub fn item_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// One vector for `text` from `model`.
pub async fn embed_text(
    bus: &Bus,
    meta: &CallMeta,
    model: &ModelName,
    text: String,
) -> Result<Vec<f32>, RecallError> {
    let req = EmbeddingRequest {
        input: vec![text],
        dimensions: None,
        user: None,
    };
    let failed = |error| RecallError::Embedding {
        model: model.to_string(),
        error,
    };
    match bus.embed(model, meta, &req, EMBED_TIMEOUT).await? {
        EmbeddingReply::Vectors { mut vectors, .. } if vectors.len() == 1 => {
            Ok(vectors.pop().unwrap_or_default())
        }
        EmbeddingReply::Vectors { vectors, .. } => Err(failed(ErrorBody::new(
            "invalid_embedding_reply",
            format!("expected 1 vector, got {}", vectors.len()),
        ))),
        EmbeddingReply::Error { error } => Err(failed(error)),
    }
}

/// Sets the item's vector when its namespace is embedded; leaves it alone otherwise.
pub async fn embed_item(
    bus: &Bus,
    cfg: &MemoryConfig,
    meta: &CallMeta,
    ns: &Namespace,
    item: &mut MemoryItem,
) -> Result<(), RecallError> {
    if let Some(model) = cfg.embedding_model(ns) {
        let vector = embed_text(bus, meta, model, item_text(&item.value)).await?;
        item.embedding = Some(StoredEmbedding {
            model: model.clone(),
            vector,
        });
    }
    Ok(())
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub key: MemoryKey,
    pub revision: u64,
    pub item: MemoryItem,
    /// Cosine similarity to the query, when there was one.
    pub score: Option<f32>,
}

/// The items of `ns` that match `filter`, ranked by similarity to `query` when given (items
/// without a vector from the namespace's model are left out then), else by key; at most
/// `limit`.
#[allow(clippy::too_many_arguments)]
pub async fn search(
    bus: &Bus,
    memory: &Memory,
    cfg: &MemoryConfig,
    meta: &CallMeta,
    ns: &Namespace,
    query: Option<&str>,
    filter: Option<&Map<String, Value>>,
    limit: usize,
) -> Result<Vec<Hit>, RecallError> {
    let query = match query {
        None => None,
        Some(q) => {
            let model = cfg
                .embedding_model(ns)
                .ok_or_else(|| RecallError::NotEmbedded {
                    namespace: ns.to_string(),
                })?;
            Some((model, embed_text(bus, meta, model, q.to_owned()).await?))
        }
    };
    let items = memory.scan(&meta.tenant, ns, cfg.max_scan).await?;
    let mut hits: Vec<Hit> = items
        .into_iter()
        .filter(|(_, v)| filter.is_none_or(|f| matches_filter(&v.value.value, f)))
        .filter_map(|(key, v)| {
            let score = match &query {
                None => None,
                Some((model, qv)) => {
                    let e = v.value.embedding.as_ref().filter(|e| &e.model == *model)?;
                    Some(cosine(qv, &e.vector)?)
                }
            };
            Some(Hit {
                key,
                revision: v.revision,
                item: v.value,
                score,
            })
        })
        .collect();
    if query.is_some() {
        hits.sort_by(|a, b| {
            b.score
                .unwrap_or(f32::MIN)
                .total_cmp(&a.score.unwrap_or(f32::MIN))
                .then_with(|| a.key.cmp(&b.key))
        });
    }
    hits.truncate(limit);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_whole_token_prefix_names_the_model() {
        let ns = |s: &str| Namespace::parse(s).expect("ns");
        let m = |s: &str| ModelName::parse(s).expect("model");
        let cfg = MemoryConfig::new(
            [(ns("users"), m("small")), (ns("users.alice"), m("large"))],
            10,
        );
        assert_eq!(cfg.embedding_model(&ns("users")), Some(&m("small")));
        assert_eq!(
            cfg.embedding_model(&ns("users.bob.notes")),
            Some(&m("small"))
        );
        assert_eq!(
            cfg.embedding_model(&ns("users.alice.notes")),
            Some(&m("large"))
        );
        assert_eq!(cfg.embedding_model(&ns("usersx")), None);
        assert_eq!(cfg.embedding_model(&ns("teams")), None);
    }
}
