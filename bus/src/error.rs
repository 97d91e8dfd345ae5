//! The bus's one error type: every failure a caller can act on has its own variant.

use std::time::Duration;

/// A boxed source error from the NATS client, kept for context but never matched on.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-supplied identifier failed validation; nothing was built from it.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A message body could not be decoded into its envelope.
    #[error("malformed {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// A message claims a tenant other than the one its subject names. The subject is what NATS
    /// permissions vouch for, so the message is refused, never re-attributed.
    #[error("{what} claims tenant {claimed:?} but arrived on {subject}")]
    TenantMismatch {
        what: &'static str,
        claimed: String,
        subject: String,
    },
    /// A message carries a schema version this build does not understand.
    #[error("unsupported schema version {found:?} for {what} (this build speaks {supported})")]
    SchemaVersion {
        what: &'static str,
        found: String,
        supported: u32,
    },
    /// KV `create` on a key that already holds a value.
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// KV `update` with a revision that is no longer the latest.
    #[error("key {key} changed since revision {expected}")]
    WrongRevision { key: String, expected: u64 },
    /// A journal append lost the race: someone else appended to the subject first.
    #[error("subject {subject} moved past sequence {expected}")]
    WrongLastSequence { subject: String, expected: u64 },
    /// A stream or bucket the platform needs does not exist: provision first.
    #[error("{kind} {name} does not exist (run `agentos up` or `agentos validate`)")]
    Missing { kind: &'static str, name: String },
    /// Nobody is listening on a request subject.
    #[error("no responders on {subject}")]
    NoResponders { subject: String },
    /// An operation did not complete in time. On JetStream this is also how a permission
    /// violation surfaces, so the message says so.
    #[error("{op} timed out after {after:?} (a NATS permission violation also shows up this way)")]
    TimedOut { op: String, after: Duration },
    /// A bucket does not take per-message TTLs: it was provisioned before they were used.
    #[error(
        "bucket {bucket} does not allow per-message TTLs (provisioned by an older release; see provisioning drift)"
    )]
    TtlDisabled { bucket: &'static str },
    /// A read would exceed its bound.
    #[error("{what} holds more than {limit} items")]
    TooLarge { what: String, limit: usize },
    /// Provisioning found a resource whose configuration differs from the desired one.
    #[error("{0}")]
    Drift(String),
    /// Connecting to NATS failed.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect { url: String, source: Source },
    /// The local nats-server could not be found or started.
    #[error("nats-server: {0}")]
    Server(String),
    /// An nkey seed or public key is malformed or of the wrong type.
    #[error("nkey: {0}")]
    Nkey(String),
    /// Any other NATS failure, with the operation that failed.
    #[error("NATS {op} failed: {source}")]
    Nats { op: String, source: Source },
}

impl Error {
    pub(crate) fn nats(op: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Nats {
            op: op.into(),
            source: source.into(),
        }
    }

    pub(crate) fn decode(what: &'static str, reason: impl ToString) -> Self {
        Self::Decode {
            what,
            reason: reason.to_string(),
        }
    }

    /// A stable snake_case code for logs, dead letters and error replies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidId { .. } => "invalid_id",
            Self::Decode { .. } => "malformed_message",
            Self::TenantMismatch { .. } => "tenant_mismatch",
            Self::SchemaVersion { .. } => "unsupported_schema_version",
            Self::AlreadyExists { .. } => "already_exists",
            Self::WrongRevision { .. } => "wrong_revision",
            Self::WrongLastSequence { .. } => "wrong_last_sequence",
            Self::Missing { .. } => "missing_resource",
            Self::NoResponders { .. } => "no_responders",
            Self::TimedOut { .. } => "timed_out",
            Self::TtlDisabled { .. } => "ttl_disabled",
            Self::TooLarge { .. } => "too_large",
            Self::Drift(_) => "drift",
            Self::Connect { .. } => "connect_failed",
            Self::Server(_) => "nats_server",
            Self::Nkey(_) => "invalid_nkey",
            Self::Nats { .. } => "nats_error",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
