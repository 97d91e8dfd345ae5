//! Header names carried on every AgentOS message.

pub const TENANT: &str = "AgentOS-Tenant";
pub const REQUEST_ID: &str = "AgentOS-Request-Id";
/// Who the caller is (the token's `sub`), as vouched for by the edge.
pub const PRINCIPAL: &str = "AgentOS-Principal";
/// The principal's roles, comma-separated.
pub const ROLES: &str = "AgentOS-Roles";
/// The caller's bearer token, forwarded for federation re-verification.
pub const AUTH: &str = "AgentOS-Auth";
/// Schema version of the envelope in the payload.
pub const SCHEMA: &str = "AgentOS-Schema";
/// Tool-call idempotency key `<run_id>:<step>:<call_id>`.
pub const IDEMPOTENCY_KEY: &str = "AgentOS-Idempotency-Key";
/// Why a message was dead-lettered, and where it came from.
pub const DLQ_REASON: &str = "AgentOS-DLQ-Reason";
pub const DLQ_CODE: &str = "AgentOS-DLQ-Code";
pub const DLQ_SUBJECT: &str = "AgentOS-DLQ-Subject";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// JetStream dedup id.
pub const MSG_ID: &str = "Nats-Msg-Id";
