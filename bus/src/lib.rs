//! `agentos-bus`: everything AgentOS says over NATS. Subjects, validated ids, versioned wire
//! envelopes, headers, provisioning, the connection, and typed operations on top of them.
//!
//! Invariant: this is the only crate that imports `async_nats`. Other crates speak in
//! [`Bus`] methods and envelope types.

mod audit;
pub mod callout;
pub mod cluster;
mod connect;
mod embed;
pub mod envelope;
mod error;
pub mod federation;
pub mod grant;
pub mod headers;
pub mod id;
mod journal;
pub mod key;
mod kv;
pub mod memory;
pub mod metric_definitions;
pub mod provision;
mod queue_gauges;
pub mod quota;
pub mod recall;
mod revocation;
mod rpc;
mod run_index;
pub mod server;
mod status;
pub mod strict;
pub mod subject;
mod tenants;
mod thread;
mod tool_directory;
pub mod trace;
mod work;

pub use connect::ConnectOptions;
pub use error::{Error, Result};
pub use journal::{PendingAppend, Stored};
pub use key::Key;
pub use kv::{Kv, Versioned};
pub use memory::{Expect, Memory};
pub use provision::{Bucket, Settings};
pub use revocation::{Revoked, revocation_key};
pub use rpc::{
    CallMeta, EndpointSpec, Incoming, MODEL_SERVICE, Replies, Reply, Service, ServiceInstance,
    ServiceSpec, TOOL_SERVICE, TOOL_SPEC_KEY, model_backend_key,
};
pub use run_index::{IndexPage, PendingIndex};
pub use status::{ConsumerStatus, StreamStatus};
pub use tenants::{Admission, Standing, TENANT_CACHE_TTL, Tenants};
pub use thread::Threads;
pub use tool_directory::{Declared, TOOL_CACHE_TTL, ToolDirectory};
pub use work::{DEFAULT_ACK_WAIT, Delivery, ORCHESTRATOR_DURABLE, QueueOptions, SubmitMeta};

/// A cheap, cloneable handle on one NATS connection and its JetStream context.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("server", &self.client.server_info().host)
            .finish()
    }
}

impl Bus {
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        let client = opts.connect().await?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(opts.timeout())
            .build(client.clone());
        Ok(Self { client, js })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The connected server's version, e.g. `2.15.1`.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// Whether JetStream answers (account info round trip).
    pub async fn jetstream_ok(&self) -> Result<()> {
        self.js
            .query_account()
            .await
            .map(|_| ())
            .map_err(|e| Error::nats("query JetStream account", e))
    }

    /// Flushes and drains the connection: pending publishes go out, subscriptions end.
    pub async fn close(&self) -> Result<()> {
        self.client
            .drain()
            .await
            .map_err(|e| Error::nats("drain connection", e))
    }
}
