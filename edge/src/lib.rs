//! `agentos-edge`: the HTTP front door. Authenticates callers, validates input, writes run
//! records and publishes run requests; reads runs and follows their journals for SSE.
//! Invariant: this is the only crate that knows HTTP serving; it talks to NATS only through
//! `agentos-bus`.

mod admin;
mod agent_actions;
mod agents;
mod auth;
mod chat;
mod embeddings;
mod error;
mod events;
mod extract;
pub mod federation;
mod health;
mod jwks;
mod limits;
mod listener;
mod memory;
mod memory_search;
pub mod metric_definitions;
mod metrics;
mod openapi;
mod page;
mod quota;
mod revocation;
mod run_actions;
mod run_list;
mod runs;
mod thread_lock;
mod threads;
mod tls;
mod tools;
mod watch;

use std::net::SocketAddr;

pub use agentos_bus::TENANT_CACHE_TTL;
use agentos_bus::{Bucket, Bus, Kv};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio_util::sync::CancellationToken;

pub use auth::{Auth, AuthContext, Claims, ROLE_ADMIN, ROLE_MEMBER, ROLE_TENANT_ADMIN, mint};
pub use error::{ApiError, Error};
pub use jwks::{Jwks, JwksSource, JwtRules};
pub use limits::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_STREAMS_PER_TENANT, Limits};
pub use listener::DEFAULT_HEADER_READ_TIMEOUT;
pub use revocation::Revocations;
pub use tls::{CertPrincipal, ClientAuth, TlsOptions};

/// Largest accepted request body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct EdgeOptions {
    pub listen: SocketAddr,
    pub auth: Auth,
    pub body_limit: usize,
    /// Which tenants may call: any a token names, or only registered ones.
    pub admission: agentos_bus::Admission,
    /// Embedded namespaces and the search bound.
    pub memory: agentos_bus::recall::MemoryConfig,
    /// Requests in flight and SSE streams per tenant.
    pub limits: Limits,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: std::time::Duration,
    /// Serve `GET /metrics` from this recorder on the API listener.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Model prices (cost budgets of chat completions).
    pub prices: std::sync::Arc<agentos_bus::quota::Prices>,
    /// How long a chat completion's budget hold lives if its edge dies.
    pub hold_lease: std::time::Duration,
    /// HTTPS (and mTLS) instead of plain HTTP.
    pub tls: Option<TlsOptions>,
    /// Federation with peer clusters (none: this cluster stands alone).
    pub federation: Option<federation::FederationConfig>,
}

/// Shared by every handler. Cloned per request by axum's `State`, so one reference count, not a
/// copy of every connection handle (measured: cloning the fields was a few percent of the edge's
/// CPU per run).
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Clone)]
pub struct Shared {
    bus: Bus,
    runs: Kv,
    agents: Kv,
    auth: Auth,
    waiters: watch::Waiters,
    tenants: agentos_bus::Tenants,
    memory: agentos_bus::Memory,
    memory_config: std::sync::Arc<agentos_bus::recall::MemoryConfig>,
    /// The tools running workers declare (discovery, cached for agent warnings).
    tools: agentos_bus::ToolDirectory,
    /// The models running workers serve (discovery, remembered): unknown ones fail at once.
    served: chat::ServedModels,
    threads: agentos_bus::Threads,
    limits: Limits,
    /// Revoked token ids, kept current while [`serve`] runs.
    revoked: revocation::Revocations,
    /// The process's Prometheus recorder, when `/metrics` is served on the API listener.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    budgets: agentos_bus::quota::Budgets,
    /// This edge's request-rate limiters (the fast path before the cluster-wide state).
    rates: std::sync::Arc<quota::rate::LocalRates>,
    prices: std::sync::Arc<agentos_bus::quota::Prices>,
    hold_lease: std::time::Duration,
    /// Federation state, when the cluster is federated.
    federation: Option<std::sync::Arc<federation::Fed>>,
}

impl AppState {
    /// Refuses a tenant that may not use the platform: `403 tenant_disabled`, or
    /// `403 tenant_not_registered` when only registered tenants are admitted.
    pub(crate) async fn admit(
        &self,
        tenant: &agentos_bus::id::Tenant,
    ) -> Result<Option<std::sync::Arc<agentos_bus::envelope::TenantRecord>>, ApiError> {
        let forbidden = |code, what| {
            ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                code,
                format!("tenant {tenant} {what}"),
            )
        };
        match self.tenants.standing(tenant).await? {
            agentos_bus::Standing::Active(rec) => Ok(rec),
            agentos_bus::Standing::Disabled => Err(forbidden("tenant_disabled", "is disabled")),
            agentos_bus::Standing::Unregistered => Err(forbidden(
                "tenant_not_registered",
                "is not registered on this platform",
            )),
        }
    }

    /// Refuses with `403 not_entitled` what the tenant's entitlements do not cover.
    pub(crate) async fn entitled(
        &self,
        tenant: &agentos_bus::id::Tenant,
        check: impl FnOnce(
            &agentos_bus::envelope::Entitlements,
        ) -> Result<(), agentos_bus::envelope::NotEntitled>,
    ) -> Result<(), ApiError> {
        match self.tenants.get(tenant).await? {
            Some(t) => check(&t.entitlements).map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "not_entitled",
                    e.to_string(),
                )
            }),
            None => Ok(()),
        }
    }
}

impl AppState {
    pub async fn new(
        bus: Bus,
        auth: Auth,
        admission: agentos_bus::Admission,
    ) -> agentos_bus::Result<Self> {
        Ok(Self(std::sync::Arc::new(Shared {
            runs: bus.kv(Bucket::Runs).await?,
            agents: bus.kv(Bucket::Agents).await?,
            tenants: bus.tenants(admission).await?,
            memory: bus.memory().await?,
            memory_config: Default::default(),
            tools: agentos_bus::ToolDirectory::new(bus.clone()),
            served: Default::default(),
            threads: bus.threads().await?,
            metrics: None,
            budgets: bus.budgets().await?,
            rates: Default::default(),
            prices: Default::default(),
            hold_lease: agentos_bus::quota::DEFAULT_HOLD_LEASE,
            federation: None,
            bus,
            auth,
            waiters: watch::Waiters::default(),
            limits: Limits::default(),
            revoked: revocation::Revocations::default(),
        })))
    }

    /// The same state with these caps.
    pub fn with_limits(self, limits: Limits) -> Self {
        let mut shared = std::sync::Arc::unwrap_or_clone(self.0);
        shared.limits = limits;
        Self(std::sync::Arc::new(shared))
    }

    /// The same state with these memory settings (embedded namespaces, search bound).
    pub fn with_memory(self, cfg: agentos_bus::recall::MemoryConfig) -> Self {
        let mut shared = std::sync::Arc::unwrap_or_clone(self.0);
        shared.memory_config = std::sync::Arc::new(cfg);
        Self(std::sync::Arc::new(shared))
    }

    /// The same state serving `GET /metrics` from this recorder.
    pub fn with_metrics(self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        let mut shared = std::sync::Arc::unwrap_or_clone(self.0);
        shared.metrics = Some(handle);
        Self(std::sync::Arc::new(shared))
    }

    /// The same state with these model prices and budget hold lease.
    pub fn with_quotas(
        self,
        prices: std::sync::Arc<agentos_bus::quota::Prices>,
        hold_lease: std::time::Duration,
    ) -> Self {
        let mut shared = std::sync::Arc::unwrap_or_clone(self.0);
        shared.prices = prices;
        shared.hold_lease = hold_lease;
        Self(std::sync::Arc::new(shared))
    }

    /// The same state, federated as `config` says (opens the peers and forward-index buckets).
    pub async fn with_federation(
        self,
        config: federation::FederationConfig,
    ) -> agentos_bus::Result<Self> {
        let fed = federation::Fed::open(&self.bus, config).await?;
        let mut shared = std::sync::Arc::unwrap_or_clone(self.0);
        shared.federation = Some(fed);
        Ok(Self(std::sync::Arc::new(shared)))
    }

    /// Wakes `/wait` long-polls as run records turn terminal, until `shutdown`; [`serve`] runs it.
    pub async fn watch(self, shutdown: CancellationToken) -> agentos_bus::Result<()> {
        self.waiters.clone().run(self.bus.clone(), shutdown).await
    }

    /// How many runs have a registered `/wait` waiter (a gauge for tests and metrics).
    pub fn waiting_runs(&self) -> usize {
        self.waiters.waiting()
    }
}

/// The whole API.
pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(agents::routes())
        .merge(runs::routes())
        .merge(run_actions::routes())
        .merge(threads::routes())
        .merge(events::routes())
        .merge(chat::routes())
        .merge(memory::routes())
        .merge(memory_search::routes())
        .merge(embeddings::routes())
        .merge(tools::routes())
        .merge(admin::routes())
        .merge(federation::routes())
        .merge(revocation::routes())
        .merge(quota::usage::routes())
        .merge(openapi::routes())
        .merge(metrics::routes())
        .fallback(|| async { ApiError::not_found("route_not_found", "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limits::shed,
        ))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(extract::request_id))
        .with_state(state)
}

/// Serves until `shutdown` fires, then stops accepting and lets in-flight requests finish.
pub async fn serve(bus: Bus, opts: EdgeOptions, shutdown: CancellationToken) -> Result<(), Error> {
    let state = AppState::new(bus, opts.auth.clone(), opts.admission)
        .await?
        .with_memory(opts.memory.clone())
        .with_limits(opts.limits.clone())
        .with_quotas(opts.prices.clone(), opts.hold_lease);
    let state = match opts.metrics.clone() {
        Some(handle) => state.with_metrics(handle),
        None => state,
    };
    let state = match opts.federation.clone() {
        Some(config) => state.with_federation(config).await?,
        None => state,
    };
    let bind = |source| Error::Bind {
        addr: opts.listen,
        source,
    };
    let tls = opts.tls.clone().map(tls::Tls::load).transpose()?;
    // The revocation list is loaded before the first request is heard.
    let revocations = state
        .revoked
        .clone()
        .follow(state.bus.clone(), shutdown.clone())
        .await?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    tracing::info!(listen = %local, auth = ?opts.auth, tls = tls.is_some(), "edge listening");
    let reload = tls.clone().map(|t| t.watch(shutdown.clone()));
    let reload = async {
        if let Some(r) = reload {
            r.await;
        }
        Ok::<(), Error>(())
    };
    let watch = state.clone().watch(shutdown.clone());
    let watcher = async { watch.await.map_err(Error::from) };
    let revocations = async { revocations.await.map_err(Error::from) };
    let federation = federation::run(state.clone(), shutdown.clone());
    let federation = async { federation.await.map_err(Error::from) };
    let http = async {
        let app = router(state, opts.body_limit);
        listener::serve(
            listener,
            app,
            opts.header_read_timeout,
            tls,
            shutdown.clone(),
        )
        .await;
        Ok::<(), Error>(())
    };
    tokio::try_join!(http, watcher, revocations, reload, federation)?;
    Ok(())
}
