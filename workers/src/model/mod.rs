//! The model worker: a NATS micro service (`agentos-model`) with one endpoint per model it
//! serves, `agentos.model.*.<model>` (queue group), routing each call through its route table to
//! a backend, with policy hooks around the call, streaming `delta` replies before the `final`
//! one. The route table can be swapped while running; the endpoints follow it.

pub mod compat;
mod embed;
mod estimate;
mod openai;
pub mod policy;
mod scripted;
mod upstream_error;

use std::collections::BTreeMap;
use std::sync::Arc;

use agentos_bus::envelope::{
    EmbeddingReply, EmbeddingRequest, Envelope, ErrorBody, ModelReply, ModelRequest,
};
use agentos_bus::id::ModelName;
use agentos_bus::subject::{self, DlqKind};
use agentos_bus::{Bus, Incoming, MODEL_SERVICE, ServiceSpec};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use compat::Compat;
pub use embed::HashEmbed;
pub use openai::{OpenAi, OpenAiOptions, Secret, arguments_string};
pub use policy::{CallContext, Hook, TokenCap, UsageLog};
pub use scripted::Scripted;

/// A model backend. A closed set: adding one is adding a variant.
#[derive(Clone, Debug)]
pub enum Backend {
    Scripted(Scripted),
    OpenAi(OpenAi),
    /// The deterministic local embedder (embeddings only).
    Hash(HashEmbed),
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Scripted(_) => "scripted",
            Self::OpenAi(_) => "openai",
            Self::Hash(_) => "hash",
        }
    }

    /// Whether the backend answers chat calls (`agentos.model.*.<model>`).
    pub fn chats(&self) -> bool {
        !matches!(self, Self::Hash(_))
    }

    /// Whether the backend answers embedding calls (`agentos.embed.*.<model>`).
    pub fn embeds(&self) -> bool {
        matches!(self, Self::OpenAi(_) | Self::Hash(_))
    }
}

/// One public model: which backend serves it, as which upstream model, within which limits.
#[derive(Clone, Debug)]
pub struct Route {
    pub backend: Backend,
    /// The model name the upstream knows (defaults to the public name).
    pub upstream_model: Option<String>,
    /// Backend settings used when the request brings none (for `scripted`: a fixed script; for
    /// `openai`: `{"params": {…}}`, default request parameters).
    pub config: Value,
    /// Most completion tokens one call may ask for.
    pub max_tokens: Option<u64>,
}

impl Route {
    pub fn scripted() -> Self {
        Self {
            backend: Backend::Scripted(Scripted),
            upstream_model: None,
            config: Value::Null,
            max_tokens: None,
        }
    }

    /// Answers one embedding call.
    async fn embed(&self, model: &ModelName, req: &EmbeddingRequest) -> EmbeddingReply {
        match &self.backend {
            Backend::Hash(h) => h.embed(req),
            Backend::OpenAi(o) => {
                o.embed(
                    self.upstream_model.as_deref().unwrap_or(model.as_str()),
                    req,
                )
                .await
            }
            Backend::Scripted(_) => EmbeddingReply::Error {
                error: ErrorBody::new(
                    "model_not_found",
                    format!("model {model} does not make embeddings"),
                ),
            },
        }
    }

    /// Answers one call, streaming deltas through `sink` as they come; returns the `final` or
    /// `error` reply.
    async fn complete(
        &self,
        model: &ModelName,
        req: &ModelRequest,
        sink: &mut DeltaSink<'_>,
    ) -> ModelReply {
        match &self.backend {
            Backend::Hash(_) => ModelReply::Error {
                error: ErrorBody::new(
                    "model_not_found",
                    format!("model {model} makes embeddings only"),
                ),
            },
            Backend::Scripted(s) => {
                if req.config.is_null() && !self.config.is_null() {
                    let req = ModelRequest {
                        config: self.config.clone(),
                        ..req.clone()
                    };
                    return s.complete(&req, sink).await;
                }
                s.complete(req, sink).await
            }
            Backend::OpenAi(o) => {
                if req.config.is_null() && !self.config.is_null() {
                    let req = ModelRequest {
                        config: self.config.clone(),
                        ..req.clone()
                    };
                    let model = self.upstream_model.as_deref().unwrap_or(model.as_str());
                    return o.complete(model, &req, sink).await;
                }
                o.complete(
                    self.upstream_model.as_deref().unwrap_or(model.as_str()),
                    req,
                    sink,
                )
                .await
            }
        }
    }
}

/// Public model name → route. Sorted, so listings are stable.
pub type RouteTable = BTreeMap<ModelName, Route>;

/// The default table: the deterministic `scripted` model only.
pub fn default_routes() -> RouteTable {
    let mut t = RouteTable::new();
    if let Ok(name) = ModelName::parse("scripted") {
        t.insert(name, Route::scripted());
    }
    t
}

/// Where a backend streams: chunk messages on the caller's reply inbox.
pub struct DeltaSink<'a> {
    bus: &'a Bus,
    req: &'a Incoming,
    /// When the request arrived, and the model, until the first chunk (time to first token).
    first: Option<(std::time::Instant, &'a ModelName)>,
}

impl DeltaSink<'_> {
    async fn emit(&mut self, reply: ModelReply) {
        if let Some((since, model)) = self.first.take() {
            crate::metric_definitions::model_first_token(model, since.elapsed());
        }
        if let Err(e) = self.req.chunk(self.bus, reply.encode()).await {
            tracing::warn!(error = %e, "could not send a model reply chunk");
        }
    }

    pub async fn send(&mut self, text: String) {
        self.emit(ModelReply::Delta { text }).await;
    }

    pub async fn tool_call(
        &mut self,
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    ) {
        self.emit(ModelReply::ToolCallDelta {
            index,
            id,
            name,
            arguments,
        })
        .await;
    }
}

pub struct ModelWorkerOptions {
    /// The live route table; send a new one to reconfigure without a restart.
    pub routes: watch::Receiver<Arc<RouteTable>>,
    /// Calls handled at once by this instance.
    pub concurrency: usize,
    /// Run around every call, in order.
    pub hooks: Vec<Arc<dyn Hook>>,
}

impl ModelWorkerOptions {
    /// Options over a fixed table, with the default hooks; keep the sender to swap tables.
    pub fn new(routes: RouteTable) -> (Self, watch::Sender<Arc<RouteTable>>) {
        let (tx, rx) = watch::channel(Arc::new(routes));
        let opts = Self {
            routes: rx,
            concurrency: 256,
            hooks: vec![Arc::new(TokenCap), Arc::new(UsageLog)],
        };
        (opts, tx)
    }
}

pub struct ModelWorker {
    bus: Bus,
    opts: Arc<ModelWorkerOptions>,
}

impl ModelWorker {
    pub fn new(bus: Bus, opts: ModelWorkerOptions) -> Self {
        Self {
            bus,
            opts: Arc::new(opts),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        let mut routes = self.opts.routes.clone();
        let mut serving = routes.borrow_and_update().clone();
        let mut service = self.bus.serve(&service_spec(&serving)).await?;
        tracing::info!(models = ?serving.keys().collect::<Vec<_>>(), "model worker serving");
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done { tracing::error!(error = %e, "model call task panicked"); }
                }
                changed = routes.changed() => {
                    if changed.is_err() {
                        // The table's sender is gone: keep serving the last table.
                        std::future::pending::<()>().await;
                    }
                    let table = routes.borrow_and_update().clone();
                    if served(&table) != served(&serving) {
                        // The new endpoints first, then the old ones go: no gap in service.
                        let next = self.bus.serve(&service_spec(&table)).await?;
                        let old = std::mem::replace(&mut service, next);
                        let _ = old.stop().await;
                        tracing::info!(models = ?table.keys().collect::<Vec<_>>(), "model worker now serving");
                    }
                    serving = table;
                }
                req = service.next(), if tasks.len() < self.opts.concurrency => {
                    let Some(req) = req else { break };
                    let (bus, opts) = (self.bus.clone(), self.opts.clone());
                    // Each call sees the table as it was when the call arrived.
                    let routes = opts.routes.borrow().clone();
                    let span = crate::trace::call_span("model", &req);
                    tasks.spawn(async move { handle(&bus, &opts, &routes, req).await }.instrument(span));
                }
            }
        }
        // Stop taking requests, finish the ones in flight.
        let _ = service.stop().await;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// What a table serves, as other processes see it: model names and their backends.
fn served(table: &RouteTable) -> Vec<(&ModelName, &'static str)> {
    table.iter().map(|(m, r)| (m, r.backend.kind())).collect()
}

/// One endpoint per model, `agentos.model.*.<model>`, in the pool's queue group: a request
/// reaches only workers that serve its model, so pools with different tables (and model
/// workers in other languages) can run side by side. The metadata `model.<name>` names each
/// model's backend, for `GET /v1/models`.
fn service_spec(table: &RouteTable) -> ServiceSpec {
    ServiceSpec {
        name: MODEL_SERVICE.into(),
        version: crate::VERSION.into(),
        description: "AgentOS model worker".into(),
        endpoints: table
            .iter()
            .flat_map(|(m, r)| {
                let chat = r.backend.chats().then(|| subject::model_filter(m));
                let embed = r.backend.embeds().then(|| subject::embed_filter(m));
                chat.into_iter().chain(embed).map(Into::into)
            })
            .collect(),
        tools: Vec::new(),
        metadata: table
            .iter()
            .map(|(m, r)| {
                (
                    agentos_bus::model_backend_key(m),
                    r.backend.kind().to_owned(),
                )
            })
            .collect(),
    }
}

async fn handle(bus: &Bus, opts: &ModelWorkerOptions, routes: &RouteTable, req: Incoming) {
    if subject::parse_embed(req.subject()).is_some() {
        return handle_embed(bus, routes, req).await;
    }
    let reply = match decode(bus, &req).await {
        Err(error) => ModelReply::Error { error },
        Ok((tenant, model, mut call)) => match routes.get(&model) {
            None => ModelReply::Error {
                error: ErrorBody::new(
                    "model_not_found",
                    format!("no backend serves model {model}"),
                ),
            },
            Some(route) => {
                let ctx = CallContext {
                    tenant: &tenant,
                    principal: req.principal(),
                    roles: req.roles(),
                    model: &model,
                    route,
                };
                let mut refused = None;
                for hook in &opts.hooks {
                    if let Err(e) = hook.before(&ctx, &mut call).await {
                        refused = Some(e);
                        break;
                    }
                }
                let since = std::time::Instant::now();
                let reply = match refused {
                    Some(error) => ModelReply::Error { error },
                    None => {
                        let first = Some((since, &model));
                        let mut sink = DeltaSink {
                            bus,
                            req: &req,
                            first,
                        };
                        route.complete(&model, &call, &mut sink).await
                    }
                };
                crate::metric_definitions::model_call(&tenant, &model, &reply, since.elapsed());
                for hook in &opts.hooks {
                    hook.after(&ctx, &reply).await;
                }
                reply
            }
        },
    };
    if let Err(e) = req.respond(reply.encode()).await {
        tracing::warn!(error = %e, "could not send model reply");
    }
}

/// One embedding call: validated like a chat call (malformed ones dead-lettered and answered),
/// answered with one reply.
async fn handle_embed(bus: &Bus, routes: &RouteTable, req: Incoming) {
    let parsed = subject::parse_embed(req.subject());
    let decoded = EmbeddingRequest::decode(req.schema(), req.payload());
    let checked = match (parsed, decoded) {
        (Some((_, model)), Ok(call)) => req.tenant().map(|tenant| (tenant, model, call)),
        (None, _) => Err(agentos_bus::Error::InvalidId {
            kind: "embedding subject",
            value: req.subject().to_owned(),
            reason: "must be agentos.embed.<tenant>.<model>",
        }),
        (_, Err(e)) => Err(e),
    };
    let reply = match checked {
        Err(err) => {
            req.dead_letter(bus, DlqKind::Model, &err).await;
            EmbeddingReply::Error {
                error: crate::refusal(&err),
            }
        }
        Ok((tenant, model, call)) => match routes.get(&model) {
            None => EmbeddingReply::Error {
                error: ErrorBody::new(
                    "model_not_found",
                    format!("no backend serves model {model}"),
                ),
            },
            Some(route) => {
                let reply = route.embed(&model, &call).await;
                if let EmbeddingReply::Vectors { usage, .. } = &reply {
                    tracing::info!(%tenant, %model, inputs = call.input.len(), tokens = usage.total_tokens, "embeddings");
                }
                reply
            }
        },
    };
    if let Err(e) = req.respond(reply.encode()).await {
        tracing::warn!(error = %e, "could not send embedding reply");
    }
}

/// Validates the subject and body; malformed requests are dead-lettered and answered.
async fn decode(
    bus: &Bus,
    req: &Incoming,
) -> Result<(agentos_bus::id::Tenant, ModelName, ModelRequest), ErrorBody> {
    let parsed = subject::parse_model(req.subject());
    let decoded = ModelRequest::decode(req.schema(), req.payload());
    let result = match (parsed, decoded) {
        (Some((tenant, model)), Ok(call)) => req.tenant().map(|_| (tenant, model, call)),
        (None, _) => Err(agentos_bus::Error::InvalidId {
            kind: "model subject",
            value: req.subject().to_owned(),
            reason: "must be agentos.model.<tenant>.<model>",
        }),
        (_, Err(e)) => Err(e),
    };
    match result {
        Ok(ok) => Ok(ok),
        Err(err) => {
            req.dead_letter(bus, DlqKind::Model, &err).await;
            Err(crate::refusal(&err))
        }
    }
}
