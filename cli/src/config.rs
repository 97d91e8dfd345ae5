//! `agentos.toml`: one typed configuration file. Precedence, lowest first: built-in defaults →
//! the file → `AGENTOS_*` environment variables → command-line flags. Unknown keys are errors
//! that name the key and its line. Every key is documented in `agentos.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Deserializer};

use crate::args::{Cli, Command, NatsArgs, WorkerKind};

/// The file's name in the working directory, read when present.
pub const DEFAULT_FILE: &str = "agentos.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub edge: EdgeConfig,
    #[serde(default)]
    pub orchestrator: OrchestratorConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub tool: ToolConfig,
    #[serde(default)]
    pub up: UpConfig,
    #[serde(default)]
    pub tenants: TenantsConfig,
}

/// `[tenants]`: read by the edge and the orchestrators alike, so they cannot disagree.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TenantsConfig {
    pub admission: Option<agentos_bus::Admission>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NatsConfig {
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub creds: Option<PathBuf>,
    pub nkey_seed: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EdgeConfig {
    pub listen: Option<SocketAddr>,
    /// A file holding the HS256 secret (kept out of the config file itself).
    pub jwt_secret_file: Option<PathBuf>,
    pub dev_no_auth_tenant: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OrchestratorConfig {
    pub concurrency: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub ack_wait: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub model_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub tool_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelConfig {
    pub concurrency: Option<usize>,
    /// Public model name → route. Reloaded by running model workers when the file changes.
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, RouteConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteConfig {
    /// `scripted` or `openai`.
    pub backend: String,
    /// For `openai`: e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// The name the upstream knows the model by (default: the public name).
    pub upstream_model: Option<String>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// File holding the API key.
    pub api_key_file: Option<PathBuf>,
    /// Longest wait for the upstream's response headers (per attempt).
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// Longest wait between two streamed chunks.
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    /// Retries of a refused attempt (connection error, 429, 5xx) before the first token.
    pub max_retries: Option<usize>,
    /// Most completion tokens one call may ask for.
    pub max_tokens: Option<u64>,
    /// Backend settings used when a request brings none (for `scripted`: a fixed script; for
    /// `openai`: `{ params = {…} }`, default request parameters).
    pub model_config: Option<serde_json::Value>,
    /// For `openai`: what the upstream accepts (`[model.routes.<name>.compat]`).
    pub compat: Option<agentos_workers::model::Compat>,
}

/// Builds the model route table: the built-in `scripted` route plus the configured ones.
pub fn routes(c: &ModelConfig) -> Result<agentos_workers::model::RouteTable> {
    use agentos_workers::model::{Backend, OpenAi, OpenAiOptions, Route, Secret, default_routes};
    let mut table = default_routes();
    for (name, r) in &c.routes {
        let public = agentos_bus::id::ModelName::parse(name.clone())
            .with_context(|| format!("[model.routes.{name}]"))?;
        let backend = match r.backend.as_str() {
            "scripted" => Backend::Scripted(agentos_workers::model::Scripted),
            "openai" => {
                let base_url = r
                    .base_url
                    .clone()
                    .with_context(|| format!("[model.routes.{name}] needs base-url"))?;
                let api_key = match (&r.api_key_env, &r.api_key_file) {
                    (Some(var), _) => Some(Secret::new(std::env::var(var).with_context(|| {
                        format!("[model.routes.{name}] api-key-env: {var} is not set")
                    })?)),
                    (None, Some(f)) => Some(Secret::new(
                        std::fs::read_to_string(f)
                            .with_context(|| {
                                format!("[model.routes.{name}] api-key-file {}", f.display())
                            })?
                            .trim(),
                    )),
                    (None, None) => None,
                };
                Backend::OpenAi(OpenAi::new(OpenAiOptions {
                    base_url,
                    api_key,
                    request_timeout: r.timeout.unwrap_or(Duration::from_secs(60)),
                    idle_timeout: r.idle_timeout.unwrap_or(Duration::from_secs(60)),
                    max_retries: r.max_retries.unwrap_or(2),
                    compat: r.compat.clone().unwrap_or_default(),
                })?)
            }
            other => anyhow::bail!(
                "[model.routes.{name}] backend {other:?} is not one of scripted, openai"
            ),
        };
        table.insert(
            public,
            Route {
                backend,
                upstream_model: r.upstream_model.clone(),
                config: r.model_config.clone().unwrap_or_default(),
                max_tokens: r.max_tokens,
            },
        );
    }
    Ok(table)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ToolConfig {
    pub concurrency: Option<usize>,
    pub http_allow: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpConfig {
    pub home: Option<PathBuf>,
    pub nats_port: Option<u16>,
    pub listen: Option<SocketAddr>,
    pub orchestrators: Option<usize>,
    pub model_workers: Option<usize>,
    pub tool_workers: Option<usize>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::args::parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Reloads the model routes whenever the file changes (checked every 2 s); a file that no
/// longer parses is reported and the running table kept.
pub async fn watch_routes(
    path: PathBuf,
    routes: tokio::sync::watch::Sender<std::sync::Arc<agentos_workers::model::RouteTable>>,
) -> std::convert::Infallible {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&path).and_then(|c| routes_of(&c)) {
            Ok(table) => {
                tracing::info!(models = ?table.keys().map(ToString::to_string).collect::<Vec<_>>(), "model routes reloaded");
                routes.send_replace(std::sync::Arc::new(table));
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), file = %path.display(), "model routes not reloaded; keeping the running table")
            }
        }
    }
}

fn routes_of(c: &Config) -> Result<agentos_workers::model::RouteTable> {
    routes(&c.model)
}

/// Reads `path`; the error names the file, the line and the offending key.
pub fn load(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
    toml::from_str(text)
}

/// The config file in effect: `--config`/`AGENTOS_CONFIG`, else `./agentos.toml` if present.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_owned).or_else(|| {
        Path::new(DEFAULT_FILE)
            .is_file()
            .then(|| PathBuf::from(DEFAULT_FILE))
    })
}

/// Where a value came from: only defaults and absent values yield to the file.
fn from_default(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), None | Some(ValueSource::DefaultValue))
}

fn set<T: Clone>(m: &ArgMatches, id: &str, target: &mut T, file: Option<&T>) {
    if let Some(v) = file
        && from_default(m, id)
    {
        *target = v.clone();
    }
}

fn set_opt<T: Clone>(m: &ArgMatches, id: &str, target: &mut Option<T>, file: Option<&T>) {
    if let Some(v) = file
        && from_default(m, id)
    {
        *target = Some(v.clone());
    }
}

fn nats(m: &ArgMatches, a: &mut NatsArgs, c: &NatsConfig) {
    set(m, "url", &mut a.url, c.url.as_ref());
    set_opt(m, "user", &mut a.user, c.user.as_ref());
    set_opt(m, "password", &mut a.password, c.password.as_ref());
    set_opt(m, "creds", &mut a.creds, c.creds.as_ref());
    set_opt(m, "nkey_seed", &mut a.nkey_seed, c.nkey_seed.as_ref());
    set_opt(m, "tls_ca", &mut a.tls_ca, c.tls_ca.as_ref());
    set_opt(m, "tls_cert", &mut a.tls_cert, c.tls_cert.as_ref());
    set_opt(m, "tls_key", &mut a.tls_key, c.tls_key.as_ref());
}

/// Fills every argument that was not given on the command line or in the environment from the
/// file.
pub fn apply(cli: &mut Cli, m: &ArgMatches, c: &Config) -> Result<()> {
    match &mut cli.command {
        Command::Edge(a) => {
            let Some(m) = m.subcommand_matches("edge") else {
                return Ok(());
            };
            nats(m, &mut a.nats, &c.nats);
            set(m, "listen", &mut a.listen, c.edge.listen.as_ref());
            set(
                m,
                "admission",
                &mut a.tenants.admission,
                c.tenants.admission.as_ref(),
            );
            set_opt(
                m,
                "dev_no_auth_tenant",
                &mut a.dev_no_auth_tenant,
                c.edge.dev_no_auth_tenant.as_ref(),
            );
            if let Some(file) = &c.edge.jwt_secret_file
                && from_default(m, "jwt_secret")
            {
                let secret = std::fs::read_to_string(file)
                    .with_context(|| format!("[edge] jwt-secret-file {}", file.display()))?;
                a.jwt_secret = Some(secret.trim().to_owned());
            }
        }
        Command::Worker { kind } => {
            let Some(m) = m.subcommand_matches("worker") else {
                return Ok(());
            };
            match kind {
                WorkerKind::Orchestrator(a) => {
                    let Some(m) = m.subcommand_matches("orchestrator") else {
                        return Ok(());
                    };
                    let o = &c.orchestrator;
                    nats(m, &mut a.nats, &c.nats);
                    set(m, "concurrency", &mut a.concurrency, o.concurrency.as_ref());
                    set(
                        m,
                        "admission",
                        &mut a.tenants.admission,
                        c.tenants.admission.as_ref(),
                    );
                    set(m, "ack_wait", &mut a.ack_wait, o.ack_wait.as_ref());
                    set(
                        m,
                        "model_timeout",
                        &mut a.model_timeout,
                        o.model_timeout.as_ref(),
                    );
                    set(
                        m,
                        "tool_timeout",
                        &mut a.tool_timeout,
                        o.tool_timeout.as_ref(),
                    );
                }
                WorkerKind::Model(a) => {
                    let Some(m) = m.subcommand_matches("model") else {
                        return Ok(());
                    };
                    nats(m, &mut a.nats, &c.nats);
                    set(
                        m,
                        "concurrency",
                        &mut a.concurrency,
                        c.model.concurrency.as_ref(),
                    );
                }
                WorkerKind::Tool(a) => {
                    let Some(m) = m.subcommand_matches("tool") else {
                        return Ok(());
                    };
                    nats(m, &mut a.nats, &c.nats);
                    set(
                        m,
                        "concurrency",
                        &mut a.concurrency,
                        c.tool.concurrency.as_ref(),
                    );
                    set(
                        m,
                        "http_allow",
                        &mut a.http_allow,
                        c.tool.http_allow.as_ref(),
                    );
                }
            }
        }
        Command::Up(a) => {
            let Some(m) = m.subcommand_matches("up") else {
                return Ok(());
            };
            let u = &c.up;
            set(m, "home", &mut a.home, u.home.as_ref());
            set(m, "nats_port", &mut a.nats_port, u.nats_port.as_ref());
            set(m, "listen", &mut a.listen, u.listen.as_ref());
            set(
                m,
                "orchestrators",
                &mut a.orchestrators,
                u.orchestrators.as_ref(),
            );
            set(
                m,
                "model_workers",
                &mut a.model_workers,
                u.model_workers.as_ref(),
            );
            set(
                m,
                "tool_workers",
                &mut a.tool_workers,
                u.tool_workers.as_ref(),
            );
        }
        Command::Down(h)
        | Command::Status(crate::args::StatusArgs { home: h, .. })
        | Command::Logs(crate::args::LogsArgs { home: h, .. }) => {
            if let Some((_, m)) = m.subcommand() {
                set(m, "home", &mut h.home, c.up.home.as_ref());
            }
        }
        Command::Provision(a) | Command::Validate(crate::args::ValidateArgs { nats: a, .. }) => {
            if let Some((_, m)) = m.subcommand() {
                nats(m, a, &c.nats);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_sets_every_section() {
        let c = parse(include_str!("../../agentos.example.toml")).expect("example parses");
        assert_eq!(c.orchestrator.ack_wait, Some(Duration::from_secs(30)));
        assert_eq!(c.up.orchestrators, Some(1));
        assert_eq!(c.tenants.admission, Some(agentos_bus::Admission::Implicit));
        let c = parse("[tenants]\nadmission = \"registered\"\n").expect("registered");
        assert_eq!(
            c.tenants.admission,
            Some(agentos_bus::Admission::Registered)
        );
        assert!(parse("[tenants]\nadmission = \"closed\"\n").is_err());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse("[edge]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("lisen"), "{err}");
        let err = parse("[orchestrator]\nack-wait = \"5 days\"\n")
            .expect_err("bad duration")
            .to_string();
        assert!(err.contains("line 2") && err.contains("duration"), "{err}");
    }
}
