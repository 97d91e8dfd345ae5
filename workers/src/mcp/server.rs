//! One bridged MCP server: connect (spawn the stdio command, or reach the streamable-HTTP URL),
//! list its tools, keep the list current when the server announces
//! `notifications/tools/list_changed`, and reconnect with backoff when the connection ends (a
//! stdio server that exits or is killed is started again). What the bridge sees is a
//! [`ServerState`] in a watch channel: `Up` with a live connection and its tools, or `Down` with
//! the reason, so a call during an outage fails at once instead of waiting.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agentos_bus::id::{McpServer, ToolName};
use backon::{BackoffBuilder, ExponentialBuilder};
use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, ProgressNotificationParam, Tool,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, Peer, ServiceExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::names;

/// How a server is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking MCP on stdin/stdout (its stderr goes to the bridge's). It gets
    /// the bridge's environment without the `AGENTOS_*` variables, and `env` over that.
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A streamable-HTTP endpoint.
    Http { url: String },
}

/// One server to bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpServerSpec {
    pub name: McpServer,
    pub transport: McpTransport,
}

/// A server's tool, as bridged.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgedTool {
    /// `mcp.<server>.<token>`.
    pub name: ToolName,
    /// The name the server knows it by.
    pub mcp_name: String,
    pub description: String,
    /// The tool's input JSON Schema.
    pub parameters: serde_json::Value,
    /// The server's `idempotentHint` (a hint: false when absent).
    pub idempotent: bool,
}

/// A live connection.
#[derive(Clone)]
pub struct Connected {
    pub peer: Peer<RoleClient>,
    pub progress: ProgressDispatcher,
    pub tools: Vec<BridgedTool>,
}

/// Where a server stands.
#[derive(Clone)]
pub enum ServerState {
    /// Not connected yet, or reconnecting: `reason` says why it is down.
    Down {
        reason: String,
    },
    Up(Arc<Connected>),
}

/// Backoff between reconnects: 200 ms doubling to 30 s, with jitter; reset after a connection
/// that stayed up for [`STABLE`].
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Longest wait for a server to start and answer the MCP handshake.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// A connection that lived this long was healthy: the next outage starts the backoff afresh.
const STABLE: Duration = Duration::from_secs(10);

/// The MCP client side of one connection: forwards progress notifications to the call that
/// asked for them and wakes the supervisor when the tool list changes.
#[derive(Clone)]
struct Handler {
    progress: ProgressDispatcher,
    tools_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.handle_notification(params).await;
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("agentos", crate::VERSION),
        )
    }
}

/// Keeps `spec` connected until `shutdown`, publishing its state on `state`.
pub async fn supervise(
    spec: McpServerSpec,
    state: watch::Sender<ServerState>,
    shutdown: CancellationToken,
) {
    let mut delays = backoff();
    loop {
        let started = tokio::time::Instant::now();
        let reason = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect_and_serve(&spec, &state, &shutdown) => r,
        };
        if shutdown.is_cancelled() {
            return;
        }
        if started.elapsed() >= STABLE {
            delays = backoff();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        tracing::warn!(server = %spec.name, %reason, ?delay, "MCP server down; reconnecting");
        state.send_replace(ServerState::Down { reason });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life; returns why it ended.
async fn connect_and_serve(
    spec: &McpServerSpec,
    state: &watch::Sender<ServerState>,
    shutdown: &CancellationToken,
) -> String {
    let handler = Handler {
        progress: ProgressDispatcher::new(),
        tools_changed: Arc::new(Notify::new()),
    };
    let running = match tokio::time::timeout(HANDSHAKE, connect(spec, handler.clone())).await {
        Ok(Ok(r)) => r,
        Ok(Err(reason)) => return reason,
        Err(_) => return format!("no MCP handshake within {HANDSHAKE:?}"),
    };
    let peer = running.peer().clone();
    let publish = |tools: Vec<BridgedTool>| {
        tracing::info!(server = %spec.name, tools = ?tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), "MCP server tools");
        state.send_replace(ServerState::Up(Arc::new(Connected {
            peer: peer.clone(),
            progress: handler.progress.clone(),
            tools,
        })));
    };
    match list_tools(&spec.name, &peer).await {
        Ok(tools) => publish(tools),
        Err(reason) => return reason,
    }
    let ended = running.waiting();
    tokio::pin!(ended);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "shutting down".into(),
            quit = &mut ended => {
                return match quit {
                    Ok(reason) => format!("the connection ended ({reason:?})"),
                    Err(e) => format!("the connection task failed: {e}"),
                };
            }
            _ = handler.tools_changed.notified() => match list_tools(&spec.name, &peer).await {
                Ok(tools) => publish(tools),
                Err(reason) => tracing::warn!(server = %spec.name, %reason, "could not re-list tools; keeping the last list"),
            },
        }
    }
}

async fn connect(
    spec: &McpServerSpec,
    handler: Handler,
) -> Result<RunningService<RoleClient, Handler>, String> {
    match &spec.transport {
        McpTransport::Stdio { command, args, env } => {
            let mut cmd = tokio::process::Command::new(command);
            // The bridge's own settings (NATS credentials, the JWT secret) stay with it.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("AGENTOS_") {
                    cmd.env_remove(&key);
                }
            }
            cmd.args(args).envs(env);
            let (child, _) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("could not start {command:?}: {e}"))?;
            tracing::info!(server = %spec.name, pid = ?child.id(), "MCP server started");
            handler
                .serve(child)
                .await
                .map_err(|e| format!("MCP handshake failed: {e}"))
        }
        McpTransport::Http { url } => handler
            .serve(StreamableHttpClientTransport::from_uri(url.as_str()))
            .await
            .map_err(|e| format!("MCP handshake with {url} failed: {e}")),
    }
}

async fn list_tools(
    server: &McpServer,
    peer: &Peer<RoleClient>,
) -> Result<Vec<BridgedTool>, String> {
    let tools = peer
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list failed: {e}"))?;
    Ok(bridge(server, &tools))
}

/// A server's tools under their AgentOS names (see [`names`]).
fn bridge(server: &McpServer, tools: &[Tool]) -> Vec<BridgedTool> {
    let (mapped, left_out) = names::map_all(server, tools.iter().map(|t| t.name.as_ref()));
    if !left_out.is_empty() {
        tracing::warn!(%server, ?left_out, "MCP tools whose names collide once mapped onto AgentOS names are not bridged");
    }
    mapped
        .into_iter()
        .filter_map(|(name, mcp_name)| {
            let tool = tools.iter().find(|t| t.name == mcp_name)?;
            Some(BridgedTool {
                name,
                mcp_name: mcp_name.to_owned(),
                description: tool
                    .description
                    .as_deref()
                    .or(tool.title.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                parameters: serde_json::Value::Object((*tool.input_schema).clone()),
                idempotent: tool
                    .annotations
                    .as_ref()
                    .and_then(|a| a.idempotent_hint)
                    .unwrap_or(false),
            })
        })
        .collect()
}
