//! What a worker's `new` or `run` can fail with. Failures inside one call or one run never end
//! a worker: they become error replies, failed events or dead letters.

/// A worker could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS: connecting, provisioning, subscribing, consuming.
    #[error(transparent)]
    Bus(#[from] agentos_bus::Error),
    /// An HTTP client (for the `http.get` tool or an `openai` model route) could not be built,
    /// e.g. no TLS backend.
    #[error("could not build the HTTP client for {what}: {source}")]
    HttpClient {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(transparent)]
    McpSupervisor(#[from] McpSupervisorStopped),
}

/// The MCP bridge lost a server's supervisor (it panicked): the process stops, so that its
/// supervisor (`agentos up`, systemd, Kubernetes) starts it afresh.
#[derive(Debug, thiserror::Error)]
#[error("an MCP server supervisor stopped: {0}")]
pub struct McpSupervisorStopped(pub String);

pub type Result<T, E = Error> = std::result::Result<T, E>;
