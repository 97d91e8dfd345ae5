//! The model worker: a NATS micro service on `agentos.model.*.*` (queue group), routing each
//! call by public model name to a backend and streaming `delta` replies before the `final` one.

mod scripted;

use std::collections::HashMap;
use std::sync::Arc;

use agentos_bus::envelope::{Envelope, ErrorBody, ModelReply, ModelRequest};
use agentos_bus::id::ModelName;
use agentos_bus::subject::{self, DlqKind};
use agentos_bus::{Bus, Incoming, ServiceSpec};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use scripted::Scripted;

/// A model backend. A closed set: adding one is adding a variant.
#[derive(Clone, Debug)]
pub enum Backend {
    Scripted(Scripted),
}

impl Backend {
    /// Answers one call, streaming deltas through `sink` as they come; returns the `final` or
    /// `error` reply.
    async fn complete(&self, req: &ModelRequest, sink: &mut DeltaSink<'_>) -> ModelReply {
        match self {
            Self::Scripted(s) => s.complete(req, sink).await,
        }
    }
}

/// Where a backend streams text deltas: chunk messages on the caller's reply inbox.
pub struct DeltaSink<'a> {
    bus: &'a Bus,
    req: &'a Incoming,
}

impl DeltaSink<'_> {
    pub async fn send(&mut self, text: String) {
        let payload = ModelReply::Delta { text }.encode();
        if let Err(e) = self.req.chunk(self.bus, payload).await {
            tracing::warn!(error = %e, "could not send model delta");
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelWorkerOptions {
    /// Public model name → backend.
    pub routes: HashMap<ModelName, Backend>,
    /// Calls handled at once by this instance.
    pub concurrency: usize,
}

impl Default for ModelWorkerOptions {
    fn default() -> Self {
        let mut routes = HashMap::new();
        if let Ok(name) = ModelName::parse("scripted") {
            routes.insert(name, Backend::Scripted(Scripted));
        }
        Self {
            routes,
            concurrency: 256,
        }
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

    pub async fn run(self, shutdown: CancellationToken) -> agentos_bus::Result<()> {
        let mut service = self
            .bus
            .serve(&ServiceSpec {
                name: "agentos-model".into(),
                version: crate::VERSION.into(),
                description: "AgentOS model worker".into(),
                endpoints: vec![subject::filter::MODEL.into()],
                metadata: HashMap::new(),
            })
            .await?;
        tracing::info!(models = ?self.opts.routes.keys().collect::<Vec<_>>(), "model worker serving");
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done { tracing::error!(error = %e, "model call task panicked"); }
                }
                req = service.next(), if tasks.len() < self.opts.concurrency => {
                    let Some(req) = req else { break };
                    let (bus, opts) = (self.bus.clone(), self.opts.clone());
                    tasks.spawn(async move { handle(&bus, &opts, req).await });
                }
            }
        }
        // Stop taking requests, finish the ones in flight.
        let _ = service.stop().await;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

async fn handle(bus: &Bus, opts: &ModelWorkerOptions, req: Incoming) {
    let reply = match decode(bus, &req).await {
        Err(error) => ModelReply::Error { error },
        Ok((model, call)) => match opts.routes.get(&model) {
            None => ModelReply::Error {
                error: ErrorBody::new(
                    "model_not_found",
                    format!("no backend serves model {model}"),
                ),
            },
            Some(backend) => {
                let mut sink = DeltaSink { bus, req: &req };
                backend.complete(&call, &mut sink).await
            }
        },
    };
    if let Err(e) = req.respond(reply.encode()).await {
        tracing::warn!(error = %e, "could not send model reply");
    }
}

/// Validates the subject and body; malformed requests are dead-lettered and answered.
async fn decode(bus: &Bus, req: &Incoming) -> Result<(ModelName, ModelRequest), ErrorBody> {
    let parsed = subject::parse_model(req.subject());
    let decoded = ModelRequest::decode(req.schema(), req.payload());
    match (parsed, decoded) {
        (Some((_, model)), Ok(call)) => Ok((model, call)),
        (_, decoded) => {
            let err = match decoded {
                Err(e) => e,
                Ok(_) => agentos_bus::Error::InvalidId {
                    kind: "model subject",
                    value: req.subject().to_owned(),
                    reason: "must be agentos.model.<tenant>.<model>",
                },
            };
            req.dead_letter(bus, DlqKind::Model, &err).await;
            Err(ErrorBody::new("invalid_request", err.to_string()))
        }
    }
}
