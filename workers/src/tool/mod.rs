//! The tool worker: one NATS micro service with an endpoint per registered tool
//! (`agentos.tool.*.<tool>`, queue group), so tools served by other processes — in any language —
//! live beside it. Every call with an idempotency key is recorded in `agentos-tool-results`; a
//! repeated key returns the recorded reply instead of running the tool again.

mod builtins;
pub(crate) mod claim;
mod defs;
pub mod math;
mod memory;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentos_bus::envelope::{Envelope, ErrorBody, ToolReply, ToolRequest};
use agentos_bus::id::{RunId, Tenant};
use agentos_bus::key::{self, Key};
use agentos_bus::subject::{self, DlqKind};
use agentos_bus::{Bucket, Bus, Error as BusError, Incoming, Kv, ServiceSpec, TOOL_SERVICE};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use builtins::{Builtin, ToolEnv};
pub use claim::LEASE_GRACE;
pub use defs::{Catalog, Declared, builtin, undeclared};
pub use memory::{MemoryEnv, MemoryTool};

#[derive(Clone, Debug)]
pub struct ToolWorkerOptions {
    pub tools: Vec<Builtin>,
    /// Hosts `http.get` may reach.
    pub http_allow: Vec<String>,
    pub concurrency: usize,
    /// Serve the memory tools (`memory.get|put|search|delete`).
    pub memory_tools: bool,
    /// Embedded namespaces and the search bound, for the memory tools.
    pub memory: agentos_bus::recall::MemoryConfig,
}

impl Default for ToolWorkerOptions {
    fn default() -> Self {
        Self {
            tools: Builtin::ALL.to_vec(),
            http_allow: Vec::new(),
            concurrency: 256,
            memory_tools: true,
            memory: Default::default(),
        }
    }
}

/// A tool this worker runs.
#[derive(Clone, Copy, Debug)]
enum Runnable {
    Builtin(Builtin),
    Memory(MemoryTool),
}

impl Runnable {
    fn idempotent(self) -> bool {
        match self {
            Self::Builtin(b) => b.idempotent(),
            Self::Memory(m) => m.idempotent(),
        }
    }
}

/// In-flight calls by run, so a cancel reaches them.
type InFlight = Arc<Mutex<HashMap<RunId, CancellationToken>>>;

pub struct ToolWorker {
    bus: Bus,
    opts: ToolWorkerOptions,
    env: ToolEnv,
    memory: Option<MemoryEnv>,
    results: Kv,
}

impl ToolWorker {
    pub async fn new(bus: Bus, opts: ToolWorkerOptions) -> crate::Result<Self> {
        let env =
            ToolEnv::new(opts.http_allow.clone()).map_err(|source| crate::Error::HttpClient {
                what: "the http.get tool".into(),
                source,
            })?;
        let results = bus.kv(Bucket::ToolResults).await?;
        let memory = if opts.memory_tools {
            Some(MemoryEnv {
                memory: bus.memory().await?,
                config: std::sync::Arc::new(opts.memory.clone()),
                bus: bus.clone(),
            })
        } else {
            None
        };
        Ok(Self {
            bus,
            opts,
            env,
            memory,
            results,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        // Each tool's endpoint declares it (description, schema, idempotence, timeout).
        let memory_tools = self.memory.iter().flat_map(|_| MemoryTool::ALL);
        let tools = self
            .opts
            .tools
            .iter()
            .filter_map(|t| t.spec())
            .chain(memory_tools.filter_map(MemoryTool::spec))
            .collect();
        let mut service = self
            .bus
            .serve(&ServiceSpec {
                name: TOOL_SERVICE.into(),
                version: crate::VERSION.into(),
                description: "AgentOS built-in tools".into(),
                endpoints: Vec::new(),
                metadata: HashMap::new(),
                tools,
            })
            .await?;
        let mut cancels = self.bus.cancels().await?;
        let in_flight: InFlight = Arc::default();
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        tracing::info!(tools = ?this.opts.tools.iter().map(|t| t.name()).collect::<Vec<_>>(), memory_tools = this.memory.is_some(), "tool worker serving");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((_, run)) = cancels.next() => {
                    if let Some(token) = lock(&in_flight).get(&run) {
                        token.cancel();
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done { tracing::error!(error = %e, "tool call task panicked"); }
                }
                req = service.next(), if tasks.len() < this.opts.concurrency => {
                    let Some(req) = req else { break };
                    let (this, in_flight) = (this.clone(), in_flight.clone());
                    let span = crate::trace::call_span("tool", &req);
                    tasks.spawn(async move { this.handle(req, &in_flight).await }.instrument(span));
                }
            }
        }
        let _ = service.stop().await;
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    async fn handle(&self, req: Incoming, in_flight: &InFlight) {
        let reply = match decode(&self.bus, &req).await {
            Err(error) => ToolReply::Error {
                error,
                retryable: false,
            },
            Ok((tenant, call)) => {
                let since = std::time::Instant::now();
                let reply = self.call(&tenant, req.principal(), &call, in_flight).await;
                crate::metric_definitions::tool_call(&call.tool, &reply, since.elapsed());
                reply
            }
        };
        if let Err(e) = req.respond(reply.encode()).await {
            tracing::warn!(error = %e, "could not send tool reply");
        }
    }

    async fn call(
        &self,
        tenant: &Tenant,
        principal: Option<&str>,
        call: &ToolRequest,
        in_flight: &InFlight,
    ) -> ToolReply {
        let served = self
            .opts
            .tools
            .iter()
            .copied()
            .find(|t| t.name() == call.tool.as_str())
            .map(Runnable::Builtin);
        let memory_tool = self
            .memory
            .as_ref()
            .and_then(|_| MemoryTool::named(call.tool.as_str()))
            .map(Runnable::Memory);
        let Some(tool) = served.or(memory_tool) else {
            return ToolReply::Error {
                error: ErrorBody::new("tool_not_found", format!("no tool {}", call.tool)),
                retryable: false,
            };
        };
        // The orchestrator checks arguments before it calls; direct callers are checked here.
        if let Some(Err(error)) = builtin(call.tool.as_str()).map(|d| d.check(&call.arguments)) {
            return ToolReply::Error {
                error,
                retryable: false,
            };
        }
        let timeout = Duration::from_millis(call.timeout_ms.max(1));
        claim::at_most_once(&self.results, tenant, call, timeout, async {
            let cancel = CancellationToken::new();
            if let Some(run) = call.run_id {
                lock(in_flight).insert(run, cancel.clone());
            }
            let run = async {
                match (tool, &self.memory) {
                    (Runnable::Builtin(b), _) => {
                        let key = call.idempotency_key.as_deref();
                        b.call(&self.env, &call.arguments, key, &cancel).await
                    }
                    (Runnable::Memory(m), Some(env)) => m.call(env, tenant, principal, call).await,
                    (Runnable::Memory(_), None) => Err(ErrorBody::new(
                        "tool_not_found",
                        format!("no tool {}", call.tool),
                    )),
                }
            };
            let outcome = tokio::time::timeout(timeout, run).await;
            if let Some(run) = call.run_id {
                lock(in_flight).remove(&run);
            }
            let reply = match outcome {
                Ok(Ok(output)) => ToolReply::Ok { output },
                Ok(Err(error)) => ToolReply::Error {
                    error,
                    retryable: false,
                },
                Err(_) => ToolReply::Error {
                    error: ErrorBody::new(
                        "tool_timeout",
                        format!("{} took longer than {timeout:?}", call.tool),
                    ),
                    retryable: tool.idempotent(),
                },
            };
            // Not recorded: a cancelled call (it did not finish) and a retryable error (it may
            // be tried again with the same key and must then really run).
            let finished = !cancel.is_cancelled()
                && !matches!(
                    &reply,
                    ToolReply::Error {
                        retryable: true,
                        ..
                    }
                );
            (reply, finished)
        })
        .await
    }
}

fn lock(m: &InFlight) -> std::sync::MutexGuard<'_, HashMap<RunId, CancellationToken>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A tool request checked against its subject (tool and tenant); a malformed one is
/// dead-lettered and answered with the refusal.
pub(crate) async fn decode(bus: &Bus, req: &Incoming) -> Result<(Tenant, ToolRequest), ErrorBody> {
    let parsed = subject::parse_tool(req.subject());
    let result = match (&parsed, ToolRequest::decode(req.schema(), req.payload())) {
        (Some((tenant, tool)), Ok(call)) if &call.tool == tool => {
            req.tenant().map(|_| (tenant.clone(), call))
        }
        (Some((_, tool)), Ok(call)) => Err(BusError::Decode {
            what: "tool request",
            reason: format!("body names tool {} but the subject names {tool}", call.tool),
        }),
        (None, _) => Err(BusError::InvalidId {
            kind: "tool subject",
            value: req.subject().to_owned(),
            reason: "must be agentos.tool.<tenant>.<tool>",
        }),
        (_, Err(e)) => Err(e),
    };
    match result {
        Ok(ok) => Ok(ok),
        Err(err) => {
            req.dead_letter(bus, DlqKind::Tool, &err).await;
            Err(crate::refusal(&err))
        }
    }
}

/// `<run_id>:<step>:<call_id>` → KV key `<tenant>.<run_id>.<step>.<call_id>`, validated.
pub(crate) fn record_key(tenant: &Tenant, key: &str) -> Option<Key> {
    let mut parts = key.split(':');
    let (run, step, call) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let run = RunId::parse(run).ok()?;
    let step: u32 = step.parse().ok()?;
    let call = agentos_bus::id::CallId::parse(call).ok()?;
    Some(key::tool_result(tenant, &run, step, &call))
}
