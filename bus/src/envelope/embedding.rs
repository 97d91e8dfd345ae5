//! Embedding calls on `agentos.embed.<tenant>.<model…>`: one request, one reply.

use serde::{Deserialize, Serialize};

use super::{Envelope, ErrorBody};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    /// The texts to embed, one vector each, in order.
    pub input: Vec<String>,
    /// Vector size, for backends that can choose it (OpenAI's `dimensions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// OpenAI's `user`, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Envelope for EmbeddingRequest {
    const WHAT: &'static str = "embedding request";
}

/// Tokens an embedding call consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EmbeddingReply {
    /// One vector per input, in the request's order.
    Vectors {
        #[serde(deserialize_with = "super::finite_vectors")]
        vectors: Vec<Vec<f32>>,
        usage: EmbeddingUsage,
    },
    Error {
        error: ErrorBody,
    },
}

impl Envelope for EmbeddingReply {
    const WHAT: &'static str = "embedding reply";
}
