//! The MCP bridge (`agentos worker mcp`): the tools of MCP servers — stdio commands or
//! streamable-HTTP URLs, several per process — served as AgentOS tools `mcp.<server>.<tool>`
//! (see [`names`] for how MCP names map) on one NATS micro service, `agentos-mcp`, with one
//! endpoint per tool in the shared queue group, like the tool worker. Each endpoint's metadata
//! carries the tool's definition (`description`, `parameters`, `idempotent`, `timeout_ms`).
//!
//! Each server is kept connected by its own supervisor ([`server`]); when a server announces
//! that its tool list changed, or reconnects with other tools, the service is registered anew
//! (new endpoints first, then the old ones go, their pending requests still served). A server that is down keeps its endpoints: its
//! calls fail at once with the retryable `mcp_server_unavailable`. Calls run at most once per
//! idempotency key (the tool worker's claims); a run's cancel cancels its MCP calls; MCP
//! progress notifications become `progress` replies.

mod call;
pub mod names;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentos_bus::envelope::{Envelope, ErrorBody, ToolReply, ToolRequest};
use agentos_bus::id::{McpServer, RunId, Tenant, ToolName};
use agentos_bus::subject;
use agentos_bus::{Bucket, Bus, EndpointSpec, Incoming, Kv, ServiceSpec};
use futures::StreamExt;
use futures::stream::SelectAll;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use server::ServerState;
pub use server::{BridgedTool, McpServerSpec, McpTransport};

/// The micro service every MCP bridge registers under.
pub const MCP_SERVICE: &str = "agentos-mcp";

/// The bridge's service metadata key listing the servers it bridges, comma-separated.
pub const MCP_SERVERS_KEY: &str = "mcp_servers";

#[derive(Clone, Debug)]
pub struct McpBridgeOptions {
    pub servers: Vec<McpServerSpec>,
    /// Calls served at once.
    pub concurrency: usize,
    /// Longest a call may run (a request's own `timeout_ms` may be shorter); announced as each
    /// tool's `timeout_ms`.
    pub call_timeout: Duration,
}

/// In-flight calls by run, so a cancel reaches them (one token per run, shared by its calls).
type InFlight = Arc<Mutex<HashMap<RunId, (CancellationToken, usize)>>>;

/// What the bridge serves: every tool any server listed when it was last up. Only a change of
/// tools registers the service anew (a server going down or coming back with the same tools
/// does not): unsubscribing endpoints can lose a request in flight to them.
#[derive(Clone, Default, PartialEq)]
struct Registry {
    tools: BTreeMap<ToolName, (McpServer, BridgedTool)>,
}

pub struct McpBridge {
    bus: Bus,
    opts: McpBridgeOptions,
    results: Kv,
}

impl McpBridge {
    pub async fn new(bus: Bus, opts: McpBridgeOptions) -> crate::Result<Self> {
        // rmcp's HTTP client (reqwest 0.13, built without a TLS provider of its own) takes the
        // process's default: ring, as everywhere else in AgentOS. Already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let results = bus.kv(Bucket::ToolResults).await?;
        Ok(Self { bus, opts, results })
    }

    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        let stop_servers = CancellationToken::new();
        let mut supervisors = JoinSet::new();
        let mut states = BTreeMap::new();
        let mut changes = SelectAll::new();
        for spec in &self.opts.servers {
            let (tx, rx) = watch::channel(ServerState::Down {
                reason: "starting".into(),
            });
            changes.push(WatchStream::from_changes(rx.clone()));
            states.insert(spec.name.clone(), rx);
            supervisors.spawn(server::supervise(spec.clone(), tx, stop_servers.clone()));
        }
        let states = Arc::new(states);
        // Shared with each call: cloning the Arc, not the tools and their schemas.
        let mut registry = Arc::new(Registry::default().updated(&states));
        let mut service = self.bus.serve(&self.service_spec(&registry)).await?;
        let mut retired = SelectAll::new();
        let mut cancels = self.bus.cancels().await?;
        let in_flight: InFlight = Arc::default();
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        tracing::info!(servers = ?states.keys().map(McpServer::as_str).collect::<Vec<_>>(), "MCP bridge starting");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((_, run)) = cancels.next() => {
                    if let Some((token, _)) = lock(&in_flight).get(&run) {
                        token.cancel();
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done { tracing::error!(error = %e, "MCP call task panicked"); }
                }
                Some(ended) = supervisors.join_next() => {
                    let reason = ended.err().map_or_else(|| "it returned".to_owned(), |e| e.to_string());
                    tracing::error!(%reason, "an MCP server supervisor stopped; stopping the bridge");
                    let _ = service.stop().await;
                    stop_servers.cancel();
                    return Err(crate::error::McpSupervisorStopped(reason).into());
                }
                Some(_) = changes.next() => {
                    let next = registry.updated(&states);
                    if next != *registry {
                        // The new endpoints first, then the old ones go: no gap in service, and
                        // the requests that reached the old ones are still served.
                        let fresh = this.bus.serve(&this.service_spec(&next)).await?;
                        let old = std::mem::replace(&mut service, fresh);
                        retired.push(old.retire().await);
                        tracing::info!(tools = ?next.tools.keys().map(ToolName::as_str).collect::<Vec<_>>(), "MCP bridge now serving");
                        registry = Arc::new(next);
                    }
                }
                Some(req) = retired.next(), if tasks.len() < this.opts.concurrency => {
                    let (this, registry, states, in_flight) = (this.clone(), registry.clone(), states.clone(), in_flight.clone());
                    let span = crate::trace::call_span("tool", &req);
                    tasks.spawn(async move { this.handle(req, &registry, &states, &in_flight).await }.instrument(span));
                }
                req = service.next(), if tasks.len() < this.opts.concurrency => {
                    let Some(req) = req else { break };
                    let (this, registry, states, in_flight) = (this.clone(), registry.clone(), states.clone(), in_flight.clone());
                    let span = crate::trace::call_span("tool", &req);
                    tasks.spawn(async move { this.handle(req, &registry, &states, &in_flight).await }.instrument(span));
                }
            }
        }
        // Stop taking calls, finish the ones in flight, then stop the servers.
        let _ = service.stop().await;
        while tasks.join_next().await.is_some() {}
        stop_servers.cancel();
        while supervisors.join_next().await.is_some() {}
        Ok(())
    }

    fn service_spec(&self, registry: &Registry) -> ServiceSpec {
        let timeout_ms = self.opts.call_timeout.as_millis().to_string();
        ServiceSpec {
            name: MCP_SERVICE.into(),
            version: crate::VERSION.into(),
            description: "AgentOS MCP bridge".into(),
            endpoints: registry
                .tools
                .iter()
                .map(|(name, (server, tool))| EndpointSpec {
                    subject: subject::tool_filter(name),
                    metadata: HashMap::from([
                        ("description".into(), tool.description.clone()),
                        ("parameters".into(), tool.parameters.to_string()),
                        ("idempotent".into(), tool.idempotent.to_string()),
                        ("timeout_ms".into(), timeout_ms.clone()),
                        ("mcp_server".into(), server.to_string()),
                        ("mcp_tool".into(), tool.mcp_name.clone()),
                        (
                            agentos_bus::TOOL_SPEC_KEY.into(),
                            String::from_utf8_lossy(
                                &agentos_bus::envelope::ToolSpec {
                                    name: name.clone(),
                                    description: tool.description.clone(),
                                    parameters: tool.parameters.clone(),
                                    idempotent: tool.idempotent,
                                    timeout_ms: self.opts.call_timeout.as_millis() as u64,
                                }
                                .encode(),
                            )
                            .into_owned(),
                        ),
                    ]),
                })
                .collect(),
            tools: Vec::new(),
            metadata: HashMap::from([(
                MCP_SERVERS_KEY.to_owned(),
                self.opts
                    .servers
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            )]),
        }
    }

    async fn handle(
        &self,
        req: Incoming,
        registry: &Registry,
        states: &BTreeMap<McpServer, watch::Receiver<ServerState>>,
        in_flight: &InFlight,
    ) {
        let reply = match crate::tool::decode(&self.bus, &req).await {
            Err(error) => ToolReply::Error {
                error,
                retryable: false,
            },
            Ok((tenant, call)) => {
                let since = std::time::Instant::now();
                let reply = self
                    .call(&req, &tenant, &call, registry, states, in_flight)
                    .await;
                crate::metric_definitions::tool_call(&call.tool, &reply, since.elapsed());
                reply
            }
        };
        if let Err(e) = req
            .respond(agentos_bus::envelope::Envelope::encode(&reply))
            .await
        {
            tracing::warn!(error = %e, "could not send MCP tool reply");
        }
    }

    async fn call(
        &self,
        req: &Incoming,
        tenant: &Tenant,
        call: &ToolRequest,
        registry: &Registry,
        states: &BTreeMap<McpServer, watch::Receiver<ServerState>>,
        in_flight: &InFlight,
    ) -> ToolReply {
        let Some((server, tool)) = registry.tools.get(&call.tool) else {
            return ToolReply::Error {
                error: ErrorBody::new("tool_not_found", format!("no tool {}", call.tool)),
                retryable: false,
            };
        };
        let timeout = Duration::from_millis(call.timeout_ms.max(1)).min(self.opts.call_timeout);
        let run = async {
            let state = states.get(server).map(|s| s.borrow().clone());
            let conn = match state {
                Some(ServerState::Up(conn)) => conn,
                Some(ServerState::Down { reason }) => return unavailable(server, &reason),
                None => return unavailable(server, "not configured"),
            };
            let cancel = register(in_flight, call.run_id);
            let outcome = call::invoke(
                &self.bus,
                req,
                &conn,
                tool,
                &call.arguments,
                timeout,
                &cancel,
            )
            .await;
            unregister(in_flight, call.run_id);
            (outcome.reply, outcome.finished)
        };
        crate::tool::claim::at_most_once(&self.results, tenant, call, timeout, run).await
    }
}

/// The retryable refusal of a call whose server is down (nothing ran).
fn unavailable(server: &McpServer, reason: &str) -> (ToolReply, bool) {
    let reply = ToolReply::Error {
        error: ErrorBody::new(
            "mcp_server_unavailable",
            format!("MCP server {server} is unavailable ({reason}); try again shortly"),
        ),
        retryable: true,
    };
    (reply, false)
}

impl Registry {
    /// The tools of every server that is up now; a server that is down keeps the tools it had.
    fn updated(&self, states: &BTreeMap<McpServer, watch::Receiver<ServerState>>) -> Self {
        let mut tools = BTreeMap::new();
        for (server, state) in states {
            match &*state.borrow() {
                ServerState::Up(conn) => {
                    for t in &conn.tools {
                        tools.insert(t.name.clone(), (server.clone(), t.clone()));
                    }
                }
                ServerState::Down { .. } => {
                    for (name, entry) in &self.tools {
                        if &entry.0 == server {
                            tools.insert(name.clone(), entry.clone());
                        }
                    }
                }
            }
        }
        Self { tools }
    }
}

fn lock(m: &InFlight) -> std::sync::MutexGuard<'_, HashMap<RunId, (CancellationToken, usize)>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn register(in_flight: &InFlight, run: Option<RunId>) -> CancellationToken {
    let Some(run) = run else {
        return CancellationToken::new();
    };
    let mut map = lock(in_flight);
    let entry = map
        .entry(run)
        .or_insert_with(|| (CancellationToken::new(), 0));
    entry.1 += 1;
    entry.0.clone()
}

fn unregister(in_flight: &InFlight, run: Option<RunId>) {
    let Some(run) = run else { return };
    let mut map = lock(in_flight);
    if let Some(entry) = map.get_mut(&run) {
        entry.1 -= 1;
        if entry.1 == 0 {
            map.remove(&run);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tool(name: &str) -> BridgedTool {
        BridgedTool {
            name: name.parse().expect("name"),
            mcp_name: name.rsplit('.').next().unwrap_or_default().to_owned(),
            description: String::new(),
            parameters: json!({"type": "object"}),
            idempotent: false,
        }
    }

    /// (Coming back up with other tools is covered end to end, in `tests/tests/mcp.rs`.)
    #[test]
    fn servers_that_go_down_keep_their_tools_so_nothing_is_registered_anew() {
        let (a, b) = (
            McpServer::parse("a").expect("a"),
            McpServer::parse("b").expect("b"),
        );
        let before = Registry {
            tools: BTreeMap::from([
                ("mcp.a.x".parse().expect("t"), (a.clone(), tool("mcp.a.x"))),
                ("mcp.b.y".parse().expect("t"), (b.clone(), tool("mcp.b.y"))),
            ]),
        };
        let down = || {
            watch::channel(ServerState::Down {
                reason: "killed".into(),
            })
            .1
        };
        let states = BTreeMap::from([(a, down()), (b, down())]);
        assert!(before.updated(&states) == before);
        // A server no longer configured takes its tools with it.
        let states = BTreeMap::from([(McpServer::parse("a").expect("a"), down())]);
        let names: Vec<String> = before
            .updated(&states)
            .tools
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["mcp.a.x"]);
    }
}
