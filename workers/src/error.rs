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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
