//! Memory items, the values of KV `agentos-memory` (key `<tenant>.<namespace…>.<key>`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Envelope;
use crate::id::ModelName;

/// One stored item: the caller's JSON value, and its vector when the namespace is configured
/// with an embedding model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryItem {
    pub value: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<StoredEmbedding>,
    /// When the item's TTL runs out (NATS removes it then; this is for readers).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A value's vector and the model that made it: items embedded by another model than the
/// namespace's current one are not ranked against its queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEmbedding {
    pub model: ModelName,
    #[serde(deserialize_with = "super::finite_vector")]
    pub vector: Vec<f32>,
}

impl Envelope for MemoryItem {
    const WHAT: &'static str = "memory item";
}
