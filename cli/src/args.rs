//! Command-line arguments. The components' settings are the sections of `config` (each flag also
//! a key of `agentos.toml` and, where named, an `AGENTOS_*` variable); the rest is here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;

#[derive(Debug, Parser)]
#[command(
    name = "agentos",
    version,
    about = "AgentOS: durable AI agent runs over NATS JetStream"
)]
pub struct Cli {
    /// Log format: `text` for terminals, `json` for machines.
    #[arg(
        long,
        global = true,
        env = "AGENTOS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Configuration file (default: ./agentos.toml when present).
    #[arg(long, global = true, env = "AGENTOS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub security: config::Security,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP edge.
    Edge(Box<EdgeArgs>),
    /// Run a worker pool member.
    Worker {
        #[command(subcommand)]
        kind: WorkerKind,
    },
    /// Let NATS clients in with the edge's bearer tokens: serve nats-server's auth callout.
    AuthCallout(Box<AuthCalloutArgs>),
    /// Create the streams and KV buckets (idempotent; reports drift).
    Provision(config::Nats),
    /// Start NATS, provision, start the edge and the workers, and complete a smoke run.
    Up(UpArgs),
    /// Check configuration, NATS, JetStream, stream/bucket drift, auth and TLS files.
    Validate(ValidateArgs),
    /// Stop the platform running from a home folder (detached or not); its data stays.
    Down(HomeArgs),
    /// Stop the platform and delete its streams, buckets and home folder.
    Nuke(NukeArgs),
    /// NATS, streams, consumers, worker instances and edge health.
    Status(StatusArgs),
    /// The components' logs.
    Logs(LogsArgs),
    /// Agents, through the edge.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Runs, through the edge.
    Run {
        #[command(subcommand)]
        command: RunCommand,
    },
    /// Shell exports (`AGENTOS_NATS_URL`, `_USER`, `_PASSWORD`, `AGENTOS_EDGE_URL`) for running
    /// more workers by hand against the local platform: `eval "$(agentos env)"`.
    Env(HomeArgs),
    /// Tenants' own NATS credentials on the local platform.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Development certificates (a CA, a server certificate, client certificates).
    Certs {
        #[command(subcommand)]
        command: crate::certs::CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkerKind {
    /// Drives runs: the agent loop over the journal.
    Orchestrator(OrchestratorArgs),
    /// Serves model calls.
    Model(ModelArgs),
    /// Serves the built-in tools.
    Tool(ToolArgs),
    /// Bridges the MCP servers of `[mcp.servers]` as tools `mcp.<server>.<tool>`.
    Mcp(McpArgs),
}

impl WorkerKind {
    /// How the worker connects to NATS.
    pub fn nats(&self) -> &config::Nats {
        match self {
            Self::Orchestrator(a) => &a.nats,
            Self::Model(a) => &a.nats,
            Self::Tool(a) => &a.nats,
            Self::Mcp(a) => &a.nats,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an HS256 development token.
    Mint {
        #[arg(long, env = "AGENTOS_JWT_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long, default_value = "dev")]
        tenant: String,
        #[arg(long, default_value = "developer")]
        subject: String,
        /// Roles, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "member")]
        roles: Vec<String>,
        /// Lifetime, e.g. `24h`, `30m`, `3600s`.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// `agentos edge`.
#[derive(Debug, Args)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub nats: config::Nats,
    #[command(flatten)]
    pub edge: config::Edge,
    #[command(flatten)]
    pub tenants: config::Tenants,
    #[command(flatten)]
    pub memory: config::Memory,
    #[command(flatten)]
    pub metrics: config::Metrics,
    #[command(flatten)]
    pub quotas: config::Quotas,
    #[command(flatten)]
    pub federation: config::Federation,
}

/// `agentos auth-callout`.
#[derive(Debug, Args)]
pub struct AuthCalloutArgs {
    #[command(flatten)]
    pub nats: config::Nats,
    #[command(flatten)]
    pub edge: config::Edge,
    #[command(flatten)]
    pub tenants: config::Tenants,
    #[command(flatten)]
    pub callout: config::AuthCallout,
}

/// `agentos worker orchestrator`.
#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    #[command(flatten)]
    pub nats: config::Nats,
    #[command(flatten)]
    pub orchestrator: config::Orchestrator,
    #[command(flatten)]
    pub tenants: config::Tenants,
    #[command(flatten)]
    pub metrics: config::Metrics,
    #[command(flatten)]
    pub quotas: config::Quotas,
}

/// `agentos worker model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub nats: config::Nats,
    #[command(flatten)]
    pub model: config::Model,
    #[command(flatten)]
    pub metrics: config::Metrics,
}

/// `agentos worker tool`.
#[derive(Debug, Args)]
pub struct ToolArgs {
    #[command(flatten)]
    pub nats: config::Nats,
    #[command(flatten)]
    pub tool: config::Tool,
    #[command(flatten)]
    pub memory: config::Memory,
    #[command(flatten)]
    pub metrics: config::Metrics,
}

/// `agentos worker mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub nats: config::Nats,
    #[command(flatten)]
    pub mcp: config::Mcp,
    #[command(flatten)]
    pub metrics: config::Metrics,
}

/// `agentos up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub up: config::Up,
    /// The file's `[mcp]`: `up` starts a bridge when it names servers.
    #[arg(skip)]
    pub mcp: config::Mcp,
    /// Start, run the smoke test, stop everything and exit (for CI and first checks).
    #[arg(long, conflicts_with = "detach")]
    pub smoke_only: bool,
    /// Return once the platform is ready; it keeps running in the background (`agentos down`).
    #[arg(long)]
    pub detach: bool,
    /// Also start Debian's Prometheus and Alertmanager (if installed) against the platform.
    #[arg(long)]
    pub observability: bool,
    /// TLS and mTLS everywhere: HTTPS at the edge and TLS to NATS, both requiring client
    /// certificates; development certificates are made under <home>/certs when missing.
    #[arg(long)]
    pub tls: bool,
    /// Start two federated local clusters (a, and b as a leaf of a) instead, for a demo.
    #[arg(long, conflicts_with_all = ["detach", "smoke_only", "observability", "tls"])]
    pub federate: bool,
    /// Run NATS as a cluster of this many nodes on loopback (3 to 5), every stream and bucket
    /// replicated on each: the platform survives the loss of a node.
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub cluster: Option<u8>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub nats: config::Nats,
    #[command(flatten)]
    pub home: HomeArgs,
    /// The edge's HS256 secret, to check it is set and long enough.
    #[arg(long, env = "AGENTOS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// `--home` of every command but `up`, whose own is `[up] home`; the file's `[up] home` applies
/// here too (see `config::layer`).
#[derive(Clone, Debug, Args)]
pub struct HomeArgs {
    /// The platform's home folder (default .agentos).
    #[arg(long, env = "AGENTOS_HOME")]
    pub home: Option<PathBuf>,
}

impl HomeArgs {
    /// The home folder in effect.
    pub fn path(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(config::default_home)
    }
}

#[derive(Debug, Args)]
pub struct NukeArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Also delete from a NATS server that is not the one `agentos up` started.
    #[arg(long)]
    pub force: bool,
    /// NATS to delete from when no platform of this home is known (never taken from the
    /// environment: deleting from a remote NATS must be asked for explicitly).
    #[arg(long = "nats-url")]
    pub nats_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Print what a tenant needs to connect to NATS directly (URL, user, password, subjects);
    /// creates its NATS account on first use and reloads nats-server.
    Credentials(TenantArgs),
    /// Remove a tenant's NATS account; its connections are closed.
    Revoke(TenantArgs),
}

#[derive(Debug, Args)]
pub struct TenantArgs {
    /// The tenant id.
    pub tenant: String,
    #[command(flatten)]
    pub home: HomeArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    /// A component (`edge`, `orchestrator-1`, `nats`, …) or a prefix (`orchestrator`); all if absent.
    pub component: Option<String>,
    /// Keep printing new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines newer than this, e.g. `10m`, `1h`.
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
}

/// Where the edge is and how to authenticate; defaults come from `<home>/state.json`.
#[derive(Clone, Debug, Args)]
pub struct EdgeClientArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    #[arg(long, env = "AGENTOS_EDGE_URL")]
    pub edge_url: Option<String>,
    #[arg(long, env = "AGENTOS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an agent from a JSON definition (`--file` or `--json`).
    Create {
        #[command(flatten)]
        edge: EdgeClientArgs,
        #[arg(long, conflicts_with = "json", required_unless_present = "json")]
        file: Option<PathBuf>,
        #[arg(long)]
        json: Option<String>,
    },
    List {
        #[command(flatten)]
        edge: EdgeClientArgs,
    },
    Get {
        #[command(flatten)]
        edge: EdgeClientArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run; `--follow` streams its events until it ends.
    Create {
        #[command(flatten)]
        edge: EdgeClientArgs,
        #[arg(long)]
        agent: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        follow: bool,
    },
    Get {
        #[command(flatten)]
        edge: EdgeClientArgs,
        id: String,
    },
    List {
        #[command(flatten)]
        edge: EdgeClientArgs,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    Cancel {
        #[command(flatten)]
        edge: EdgeClientArgs,
        id: String,
    },
    /// The run's timeline from its journal: steps, model and tool calls with their durations,
    /// as a waterfall, and its trace id.
    Trace {
        #[command(flatten)]
        edge: EdgeClientArgs,
        id: String,
    },
}

impl Command {
    /// The `--home` of a command that takes one, but `up` (its home is `[up] home`).
    pub fn home_mut(&mut self) -> Option<&mut HomeArgs> {
        match self {
            Command::Down(h) | Command::Env(h) => Some(h),
            Command::Status(StatusArgs { home, .. })
            | Command::Logs(LogsArgs { home, .. })
            | Command::Nuke(NukeArgs { home, .. })
            | Command::Validate(ValidateArgs { home, .. })
            | Command::Tenant {
                command: TenantCommand::Credentials(TenantArgs { home, .. }),
            }
            | Command::Tenant {
                command: TenantCommand::Revoke(TenantArgs { home, .. }),
            } => Some(home),
            Command::Agent { command } => Some(match command {
                AgentCommand::Create { edge, .. }
                | AgentCommand::List { edge }
                | AgentCommand::Get { edge, .. } => &mut edge.home,
            }),
            Command::Run { command } => Some(match command {
                RunCommand::Create { edge, .. }
                | RunCommand::Get { edge, .. }
                | RunCommand::List { edge, .. }
                | RunCommand::Cancel { edge, .. }
                | RunCommand::Trace { edge, .. } => &mut edge.home,
            }),
            Command::Edge(_)
            | Command::AuthCallout(_)
            | Command::Worker { .. }
            | Command::Provision(_)
            | Command::Up(_)
            | Command::Token { .. }
            | Command::Certs { .. } => None,
        }
    }
}

/// `250ms`, `30s`, `5m`, `24h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in {s:?} (use ms, s, m or h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("x").is_err());
    }
}
