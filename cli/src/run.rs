//! Running one component: connect, provision, serve until SIGINT/SIGTERM, drain.

use agentos_bus::Bus;
use agentos_edge::{Auth, EdgeOptions};
use agentos_workers::mcp::McpBridge;
use agentos_workers::model::{ModelWorker, ModelWorkerOptions};
use agentos_workers::orchestrator::{Orchestrator, OrchestratorOptions};
use agentos_workers::tool::{ToolWorker, ToolWorkerOptions};
use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command, LogFormat, TokenCommand, WorkerKind};
use crate::config;

/// Logs to stderr, and spans to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (the guard flushes them at exit).
pub fn init_tracing(format: LogFormat, service: &str) -> anyhow::Result<crate::otel::Guard> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn,rmcp=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let (otel, guard) = crate::otel::layer(service)?;
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .init();
    Ok(guard)
}

/// The OpenTelemetry service name of the process a command runs.
pub fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Edge(_) => "agentos-edge",
        Command::AuthCallout(_) => crate::callout::SERVICE,
        Command::Worker { kind } => match kind {
            WorkerKind::Orchestrator(_) => "agentos-orchestrator",
            WorkerKind::Model(_) => "agentos-model",
            WorkerKind::Tool(_) => "agentos-tool",
            WorkerKind::Mcp(_) => "agentos-mcp",
        },
        _ => "agentos",
    }
}

/// Fires on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested");
        fire.cancel();
    });
    token
}

pub(crate) async fn connect(nats: &config::Nats, name: &str) -> anyhow::Result<Bus> {
    let bus = Bus::connect(&nats.connect_options(name)?)
        .await
        .with_context(|| format!("connecting to NATS at {}", nats.url()))?;
    let report = bus
        .provision(&nats.settings()?)
        .await
        .context("provisioning streams and buckets")?;
    for item in report.drifted() {
        tracing::warn!(name = %item.name, outcome = ?item.outcome, "stream/bucket differs from the desired configuration; compare with `agentos provision`");
    }
    Ok(bus)
}

/// The edge's authentication from its settings: a JWKS (file, URL or OIDC issuer), an HS256
/// secret (given, or read from `jwt-secret-file`), or — on loopback only — none.
pub(crate) async fn edge_auth(a: &config::Edge) -> anyhow::Result<Auth> {
    use agentos_edge::{Jwks, JwksSource, JwtRules};
    let source = match (a.jwks_url(), a.jwks_file(), a.oidc_issuer()) {
        (Some(u), _, _) => Some(JwksSource::Url(u)),
        (None, Some(f), _) => Some(JwksSource::File(f)),
        (None, None, Some(i)) => Some(JwksSource::Oidc(i)),
        (None, None, None) => None,
    };
    if let Some(source) = source {
        if a.dev_no_auth_tenant().is_some() {
            bail!(
                "give either a JWKS (--jwks-url, --jwks-file, --oidc-issuer) or --dev-no-auth-tenant, not both"
            );
        }
        let rules = JwtRules {
            issuer: a.jwt_issuer().or_else(|| a.oidc_issuer()),
            audience: a.jwt_audience(),
            tenant_claim: a.tenant_claim(),
            roles_claim: a.roles_claim(),
            max_lifetime_secs: a.max_token_lifetime().map(|d| d.as_secs()),
            ..JwtRules::default()
        };
        let jwks = Jwks::load(source, rules)
            .await
            .map_err(|e| anyhow::anyhow!("loading the JWKS: {e}"))?;
        return Ok(Auth::Jwks(std::sync::Arc::new(jwks)));
    }
    let secret = match (a.jwt_secret(), a.jwt_secret_file()) {
        (Some(s), _) => Some(s),
        (None, Some(f)) => Some(crate::secret::read(&f).context("[edge] jwt-secret-file")?),
        (None, None) => None,
    };
    Ok(match (secret, a.dev_no_auth_tenant()) {
        (Some(secret), None) => Auth::hs256(secret.as_bytes()).context("HS256 secret")?,
        (None, Some(tenant)) => {
            let listen = a.listen();
            if !listen.ip().is_loopback() {
                bail!("--dev-no-auth-tenant is only allowed on a loopback listener, not {listen}");
            }
            tracing::warn!(%tenant, "AUTHENTICATION IS OFF: every request acts as tenant {tenant} (development only)");
            Auth::Disabled {
                tenant: tenant.parse().context("--dev-no-auth-tenant")?,
            }
        }
        (Some(_), Some(_)) => bail!("give either --jwt-secret or --dev-no-auth-tenant, not both"),
        (None, None) => bail!(
            "the edge needs --jwt-secret (or AGENTOS_JWT_SECRET, or a jwt-secret-file), a JWKS (--jwks-url, --jwks-file, --oidc-issuer); for local development only, --dev-no-auth-tenant"
        ),
    })
}

/// Runs the command; the result is the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Worker { kind } = &cli.command {
        crate::profile::check_worker(cli.security.profile(), kind.nats())?;
    }
    match cli.command {
        Command::Edge(a) => {
            crate::profile::check_edge(cli.security.profile(), &a.edge, &a.nats)?;
            let auth = edge_auth(&a.edge).await?;
            let tls = a.edge.tls()?;
            let metrics = crate::metrics::install(&a.metrics, true)?.handle();
            let bus = connect(&a.nats, "agentos-edge").await?;
            let opts = EdgeOptions {
                listen: a.edge.listen(),
                auth,
                body_limit: agentos_edge::DEFAULT_BODY_LIMIT,
                admission: a.tenants.admission(),
                memory: config::memory(&a.memory)?,
                limits: agentos_edge::Limits::new(
                    a.edge.max_in_flight(),
                    a.edge.max_streams_per_tenant(),
                ),
                header_read_timeout: a.edge.header_read_timeout(),
                metrics,
                prices: a.quotas.price_table(),
                hold_lease: a.quotas.hold_lease(),
                tls,
                federation: a.federation.config()?,
            };
            agentos_edge::serve(bus, opts, shutdown_on_signal()).await?;
        }
        Command::Worker { kind } => match kind {
            WorkerKind::Orchestrator(a) => {
                let metrics = crate::metrics::install(&a.metrics, false)?;
                let bus = connect(&a.nats, "agentos-orchestrator").await?;
                let o = &a.orchestrator;
                let mut opts = OrchestratorOptions {
                    concurrency: o.concurrency(),
                    model_timeout: o.model_timeout(),
                    tool_timeout: o.tool_timeout(),
                    thread_lease: o.thread_lease(),
                    admission: a.tenants.admission(),
                    queue_gauges: metrics.is_on().then_some(crate::metrics::QUEUE_GAUGES),
                    prices: a.quotas.price_table(),
                    hold_lease: a.quotas.hold_lease(),
                    ..Default::default()
                };
                opts.queue.ack_wait = o.ack_wait();
                opts.progress_interval = opts.queue.progress_interval();
                Orchestrator::new(bus, opts)
                    .await?
                    .run(shutdown_on_signal())
                    .await?;
            }
            WorkerKind::Model(a) => {
                crate::metrics::install(&a.metrics, false)?;
                let bus = connect(&a.nats, "agentos-model").await?;
                let file = config::locate(cli.config.as_deref());
                let (mut opts, routes) = ModelWorkerOptions::new(config::routes(&a.model)?);
                opts.concurrency = a.model.concurrency();
                let shutdown = shutdown_on_signal();
                let worker = ModelWorker::new(bus, opts).run(shutdown.clone());
                match file {
                    None => worker.await?,
                    Some(f) => {
                        tokio::select! {
                            r = worker => r?,
                            never = config::watch_routes(f, routes) => match never {},
                        }
                    }
                }
            }
            WorkerKind::Tool(a) => {
                crate::metrics::install(&a.metrics, false)?;
                let bus = connect(&a.nats, "agentos-tool").await?;
                let opts = ToolWorkerOptions {
                    concurrency: a.tool.concurrency(),
                    http_allow: a.tool.http_allow(),
                    memory: config::memory(&a.memory)?,
                    ..Default::default()
                };
                ToolWorker::new(bus, opts)
                    .await?
                    .run(shutdown_on_signal())
                    .await?;
            }
            WorkerKind::Mcp(a) => {
                let opts = config::mcp_bridge(&a.mcp)?;
                if opts.servers.is_empty() {
                    bail!(
                        "no MCP servers to bridge: name them in [mcp.servers.<name>] of agentos.toml"
                    );
                }
                crate::metrics::install(&a.metrics, false)?;
                let bus = connect(&a.nats, "agentos-mcp").await?;
                McpBridge::new(bus, opts)
                    .await?
                    .run(shutdown_on_signal())
                    .await?;
            }
        },
        Command::AuthCallout(a) => crate::callout::serve(*a, cli.security.profile()).await?,
        Command::Provision(nats) => {
            let bus = Bus::connect(&nats.connect_options("agentos-provision")?)
                .await
                .with_context(|| format!("connecting to NATS at {}", nats.url()))?;
            let report = bus.provision(&nats.settings()?).await?;
            for item in &report.items {
                println!("{:<6} {:<22} {:?}", item.kind, item.name, item.outcome);
            }
            if !report.is_clean() {
                bail!("drift found; nothing was changed");
            }
        }
        Command::Up(a) => crate::up::up(a, config::locate(cli.config.as_deref())).await?,
        Command::Certs { command } => crate::certs::command(command)?,
        Command::Validate(a) => {
            return Ok(if crate::ops::validate(&a, cli.config.as_deref()).await {
                0
            } else {
                1
            });
        }
        Command::Down(a) => crate::ops::down(&a)?,
        Command::Nuke(a) => crate::ops::nuke(&a).await?,
        Command::Status(a) => return Ok(if crate::ops::status(&a).await? { 0 } else { 1 }),
        Command::Logs(a) => crate::ops::logs(&a)?,
        Command::Agent { command } => crate::client::agent(command).await?,
        Command::Run { command } => {
            return Ok(if crate::client::run(command).await? == 0 {
                0
            } else {
                1
            });
        }
        Command::Env(a) => crate::tenant::env(&a)?,
        Command::Tenant { command } => crate::tenant::tenant(command).await?,
        Command::Token {
            command:
                TokenCommand::Mint {
                    secret,
                    tenant,
                    subject,
                    roles,
                    ttl,
                },
        } => {
            let tenant = tenant.parse().context("--tenant")?;
            let token = agentos_edge::mint(secret.as_bytes(), &subject, &tenant, &roles, ttl)
                .context("minting the token")?;
            println!("{token}");
        }
    }
    Ok(0)
}
