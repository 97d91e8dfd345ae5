//! Command-line arguments. Every flag can also come from an `AGENTOS_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentos_bus::Admission;
use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Edge(EdgeArgs),
    /// Run a worker pool member.
    Worker {
        #[command(subcommand)]
        kind: WorkerKind,
    },
    /// Create the streams and KV buckets (idempotent; reports drift).
    Provision(NatsArgs),
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
}

#[derive(Debug, Subcommand)]
pub enum WorkerKind {
    /// Drives runs: the agent loop over the journal.
    Orchestrator(OrchestratorArgs),
    /// Serves model calls.
    Model(ModelArgs),
    /// Serves the built-in tools.
    Tool(ToolArgs),
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

#[derive(Clone, Debug, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long = "nats-url",
        env = "AGENTOS_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    #[arg(long = "nats-user", env = "AGENTOS_NATS_USER")]
    pub user: Option<String>,
    #[arg(
        long = "nats-password",
        env = "AGENTOS_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    #[arg(long = "nats-creds", env = "AGENTOS_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    #[arg(
        long = "nats-nkey-seed",
        env = "AGENTOS_NATS_NKEY_SEED",
        hide_env_values = true
    )]
    pub nkey_seed: Option<String>,
    #[arg(long = "nats-tls-ca", env = "AGENTOS_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    #[arg(long = "nats-tls-cert", env = "AGENTOS_NATS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long = "nats-tls-key", env = "AGENTOS_NATS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[arg(long, env = "AGENTOS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tenants: TenantsArg,
    /// HS256 secret for bearer tokens.
    #[arg(long, env = "AGENTOS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Accept every request as this tenant, without tokens. Loopback listeners only.
    #[arg(long, env = "AGENTOS_DEV_NO_AUTH_TENANT")]
    pub dev_no_auth_tenant: Option<String>,
    /// RS256/ES256 tokens checked against the JWKS at this URL.
    #[arg(long, env = "AGENTOS_JWKS_URL", conflicts_with_all = ["jwks_file", "oidc_issuer"])]
    pub jwks_url: Option<String>,
    /// RS256/ES256 tokens checked against a JWKS file.
    #[arg(long, env = "AGENTOS_JWKS_FILE", conflicts_with = "oidc_issuer")]
    pub jwks_file: Option<PathBuf>,
    /// RS256/ES256 tokens from this OIDC issuer (its discovery document names the JWKS); also
    /// the required `iss` unless --jwt-issuer says otherwise.
    #[arg(long, env = "AGENTOS_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "AGENTOS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "AGENTOS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The claim holding the tenant.
    #[arg(long, env = "AGENTOS_TENANT_CLAIM", default_value = "tenant")]
    pub tenant_claim: String,
    /// The claim holding the roles (an array, or a space-separated string).
    #[arg(long, env = "AGENTOS_ROLES_CLAIM", default_value = "roles")]
    pub roles_claim: String,
}

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Runs driven at once.
    #[arg(long, env = "AGENTOS_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
    /// Redelivery delay of a run whose orchestrator went silent.
    #[arg(long, env = "AGENTOS_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    #[arg(long, env = "AGENTOS_MODEL_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub model_timeout: Duration,
    #[arg(long, env = "AGENTOS_TOOL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub tool_timeout: Duration,
    #[command(flatten)]
    pub tenants: TenantsArg,
}

/// Which tenants may use the platform; the edge and the orchestrators must agree.
#[derive(Clone, Copy, Debug, Args)]
pub struct TenantsArg {
    /// `implicit`: any tenant a valid token names; `registered`: only tenants an admin created.
    #[arg(
        long = "tenants",
        env = "AGENTOS_TENANTS",
        default_value = "implicit",
        value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Admission>())
    )]
    pub admission: Admission,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[arg(long, env = "AGENTOS_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct ToolArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[arg(long, env = "AGENTOS_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
    /// Hosts (`host` or `host:port`) the `http.get` tool may fetch, comma-separated.
    #[arg(long, env = "AGENTOS_HTTP_ALLOW", value_delimiter = ',')]
    pub http_allow: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where NATS data, logs, the token and reports live.
    #[arg(long, env = "AGENTOS_HOME", default_value = ".agentos")]
    pub home: PathBuf,
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub orchestrators: usize,
    #[arg(long, default_value_t = 1)]
    pub model_workers: usize,
    #[arg(long, default_value_t = 1)]
    pub tool_workers: usize,
    /// Start, run the smoke test, stop everything and exit (for CI and first checks).
    #[arg(long, conflicts_with = "detach")]
    pub smoke_only: bool,
    /// Return once the platform is ready; it keeps running in the background (`agentos down`).
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub home: HomeArgs,
    /// The edge's HS256 secret, to check it is set and long enough.
    #[arg(long, env = "AGENTOS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct HomeArgs {
    /// The platform's home folder.
    #[arg(long, env = "AGENTOS_HOME", default_value = ".agentos")]
    pub home: PathBuf,
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

impl NatsArgs {
    pub fn connect_options(&self, name: &str) -> agentos_bus::ConnectOptions {
        agentos_bus::ConnectOptions {
            url: self.url.clone(),
            name: Some(name.to_owned()),
            user: self.user.clone(),
            password: self.password.clone(),
            credentials_file: self.creds.clone(),
            nkey_seed: self.nkey_seed.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            ..Default::default()
        }
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
