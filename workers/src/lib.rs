//! `agentos-workers`: the stateless worker pools. Each component has one shape: options → `new`
//! → `run(self, shutdown)`, which returns once in-flight work is finished (or handed back to the
//! bus) after `shutdown` fires.
//!
//! - [`orchestrator`]: drives runs — the agent loop over the journal.
//! - [`model`]: serves model calls behind pluggable backends.
//! - [`tool`]: runs tools from a registry of built-ins.

pub mod model;
pub mod orchestrator;
pub mod tool;

pub use tokio_util::sync::CancellationToken;

/// The version every worker announces to the NATS service API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
