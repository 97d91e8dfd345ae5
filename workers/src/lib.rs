//! `agentos-workers`: the stateless worker pools. Each component has one shape: options → `new`
//! → `run(self, shutdown)`, which returns once in-flight work is finished (or handed back to the
//! bus) after `shutdown` fires.
//!
//! - [`orchestrator`]: drives runs — the agent loop over the journal.
//! - [`model`]: serves model calls behind pluggable backends.
//! - [`tool`]: runs tools from a registry of built-ins.
//! - [`mcp`]: bridges MCP servers' tools onto the bus.

mod error;
pub mod mcp;
pub mod metric_definitions;
pub mod model;
pub mod orchestrator;
pub mod tool;
mod trace;

pub use error::{Error, Result};
pub use tokio_util::sync::CancellationToken;

/// The version every worker announces to the NATS service API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The error answered for a request that was refused before any work (and dead-lettered):
/// `tenant_mismatch` when it claimed another tenant than its subject's, else `invalid_request`.
pub(crate) fn refusal(err: &agentos_bus::Error) -> agentos_bus::envelope::ErrorBody {
    let code = match err {
        agentos_bus::Error::TenantMismatch { .. } => "tenant_mismatch",
        _ => "invalid_request",
    };
    agentos_bus::envelope::ErrorBody::new(code, err.to_string())
}
