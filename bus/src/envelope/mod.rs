//! Versioned wire envelopes: the only types that cross the bus. Each is a dedicated serde struct;
//! domain types elsewhere are never serialized onto the bus by accident.
//!
//! The schema version travels in the `AgentOS-Schema` header. A message without it is read as the
//! current version (hand-written tools in other languages may omit it); any other version is
//! refused with [`Error::SchemaVersion`], never guessed at.

mod action;
mod agent;
mod embedding;
mod event;
mod memory;
mod model;
mod run;
mod tenant;
mod thread;
mod tool;

pub use action::{
    ActionKind, Answer, AnswerError, Approval, Claim, MAX_EXPIRY, PendingCall, RequiredAction,
    expired,
};
pub use agent::{AgentSpec, ClientTool};
pub use embedding::{EmbeddingReply, EmbeddingRequest, EmbeddingUsage};
pub use event::{Event, EventData};
pub use memory::{MemoryItem, StoredEmbedding};
pub use model::{ChatMessage, ModelReply, ModelRequest, Role, ToolCallSpec, ToolDef, Usage};
pub use run::{Continuation, RunRecord, RunRequest, RunStatus, SubmitMessage, ToolOutput, Wake};
pub use tenant::{AuditRecord, Entitlements, NotEntitled, TenantRecord};
pub use thread::{
    HistoryLimit, MultitaskStrategy, REASON_INTERRUPTED, REASON_ROLLBACK, ThreadLock, ThreadRecord,
    ThreadRun, ThreadTurn,
};
pub use tool::{ToolClaim, ToolRecord, ToolReply, ToolRequest, ToolSpec};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Error, Result};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_VERSION_STR: &str = "1";

/// A wire envelope: knows its name for error messages.
pub trait Envelope: Serialize + DeserializeOwned {
    const WHAT: &'static str;

    fn encode(&self) -> Bytes {
        // Serializing these types cannot fail: no maps with non-string keys, no custom serializers
        // that error. Fall back to an empty object rather than panic.
        Bytes::from(serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()))
    }

    /// Decodes a payload, checking the schema header when one is present.
    fn decode(schema: Option<&str>, payload: &[u8]) -> Result<Self> {
        if let Some(found) = schema
            && found != SCHEMA_VERSION_STR
        {
            return Err(Error::SchemaVersion {
                what: Self::WHAT,
                found: found.to_owned(),
                supported: SCHEMA_VERSION,
            });
        }
        serde_json::from_slice(payload).map_err(|e| Error::decode(Self::WHAT, e))
    }
}

/// The OpenAI-shaped error body used in replies and events: a stable code and a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A vector of `f32`s, each finite: a JSON number beyond `f32`'s range would read as infinity,
/// which JSON cannot carry back (it is written `null`), so it is refused here.
fn finite_vector<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<f32>, D::Error> {
    let v = Vec::<f32>::deserialize(d)?;
    if v.iter().all(|x| x.is_finite()) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(
            "a vector element is beyond the range of f32",
        ))
    }
}

/// Vectors, each as [`finite_vector`].
fn finite_vectors<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Vec<f32>>, D::Error> {
    let v = Vec::<Vec<f32>>::deserialize(d)?;
    if v.iter().flatten().all(|x| x.is_finite()) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(
            "a vector element is beyond the range of f32",
        ))
    }
}

/// Wall-clock now, for envelope timestamps.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
