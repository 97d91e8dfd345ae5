//! The configuration tree: `agentos.toml`, the `AGENTOS_*` variables and the flags. Each section
//! is one struct, declared with [`section!`], whose fields are at once TOML keys (kebab-case),
//! flags and, where its `#[arg]` names one, `AGENTOS_*` variables: clap derive and serde on the
//! same type. Precedence, lowest first: built-in defaults → the file → `AGENTOS_*` → flags.
//! Unknown keys are errors that name the key and its line. Every key is documented in
//! `agentos.example.toml` (a test checks it against these types).
//!
//! Why a small macro and not `figment`: clap can only tell "not given" from "given" through
//! `Option` fields, which figment needs as well, and figment's TOML provider drops the line
//! numbers our errors promise; the macro adds the one thing missing, a default per field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentos_bus::Admission;
use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer};

use crate::args::{Cli, Command, WorkerKind, parse_duration};

/// The file's name in the working directory, read when present.
pub const DEFAULT_FILE: &str = "agentos.toml";

/// Declares a section: a struct of optional fields (so the layers can be told apart) deriving
/// `clap::Args` and `serde::Deserialize`, and per field an accessor of the same name that
/// yields the layered value, or the default given as `= expr`.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, clap::Args, serde::Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $name {
            $( $(#[$fmeta])* $field: Option<$ty>, )*
        }

        impl $name {
            /// Each value not set here taken from `lower`.
            pub fn or(self, lower: Self) -> Self {
                Self { $( $field: self.$field.or(lower.$field), )* }
            }

            /// The built-in defaults (fields without one stay unset).
            #[cfg(test)]
            pub fn defaults() -> Self {
                Self { $( $field: section!(@default $($default)?), )* }
            }

            $( section!(@get $field : $ty $(= $default)?); )*
        }
    };
    (@default) => { None };
    (@default $default:expr) => { Some($default) };
    (@get $field:ident : $ty:ty = $default:expr) => {
        pub fn $field(&self) -> $ty {
            self.$field.as_ref().cloned().unwrap_or_else(|| $default)
        }
    };
    (@get $field:ident : $ty:ty) => {
        pub fn $field(&self) -> Option<$ty> {
            self.$field.as_ref().cloned()
        }
    };
}

/// The whole file: one section per component.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub nats: Nats,
    pub edge: Edge,
    pub tenants: Tenants,
    pub orchestrator: Orchestrator,
    pub model: Model,
    pub tool: Tool,
    pub memory: Memory,
    pub mcp: Mcp,
    pub metrics: Metrics,
    pub quotas: Quotas,
    pub federation: Federation,
    pub up: Up,
    pub security: Security,
    pub auth_callout: AuthCallout,
}

section! {
    /// `[security]`: read by every component.
    pub struct Security {
        /// `development` (default) or `production`, which refuses development settings at start.
        #[arg(long, global = true, env = "AGENTOS_PROFILE", value_enum)]
        profile: crate::profile::Profile = crate::profile::Profile::Development,
    }
}

section! {
    /// `[nats]`: how the edge, the workers, `provision` and `validate` connect.
    pub struct Nats {
        /// NATS server URL(s), comma-separated (default nats://127.0.0.1:4222).
        #[arg(long = "nats-url", env = "AGENTOS_NATS_URL")]
        url: String = "nats://127.0.0.1:4222".into(),
        /// NATS user, with --nats-password.
        #[arg(long = "nats-user", env = "AGENTOS_NATS_USER")]
        user: String,
        #[arg(long = "nats-password", env = "AGENTOS_NATS_PASSWORD", hide_env_values = true)]
        password: String,
        /// A .creds file (user JWT and nkey seed); mode 0600.
        #[arg(long = "nats-creds", env = "AGENTOS_NATS_CREDS")]
        creds: PathBuf,
        #[arg(long = "nats-nkey-seed", env = "AGENTOS_NATS_NKEY_SEED", hide_env_values = true)]
        nkey_seed: String,
        /// Verify the server against these CAs (PEM); TLS is then required.
        #[arg(long = "nats-tls-ca", env = "AGENTOS_NATS_TLS_CA")]
        tls_ca: PathBuf,
        /// A client certificate (PEM) for servers that verify clients (mTLS), with --nats-tls-key.
        #[arg(long = "nats-tls-cert", env = "AGENTOS_NATS_TLS_CERT")]
        tls_cert: PathBuf,
        /// The client certificate's key (PEM); mode 0600.
        #[arg(long = "nats-tls-key", env = "AGENTOS_NATS_TLS_KEY")]
        tls_key: PathBuf,
        /// Replicas of every stream and KV bucket (default 1; 3 on a 3-node cluster). Raising
        /// it scales existing streams up in place; lowering it is reported as drift.
        #[arg(long = "nats-replicas", env = "AGENTOS_NATS_REPLICAS")]
        replicas: usize = 1,
    }
}

impl Nats {
    /// Connection options; a creds file others can read is refused.
    pub fn connect_options(&self, name: &str) -> Result<agentos_bus::ConnectOptions> {
        if let Some(creds) = &self.creds {
            crate::secret::check(creds).context("[nats] creds")?;
        }
        if let Some(key) = &self.tls_key {
            crate::secret::check(key).context("[nats] tls-key")?;
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!("[nats] tls-cert and tls-key go together");
        }
        Ok(agentos_bus::ConnectOptions {
            url: self.url(),
            name: Some(name.to_owned()),
            user: self.user(),
            password: self.password(),
            credentials_file: self.creds(),
            nkey_seed: self.nkey_seed(),
            tls_ca: self.tls_ca(),
            tls_cert: self.tls_cert(),
            tls_key: self.tls_key(),
            require_tls: self.tls_on(),
            ..Default::default()
        })
    }

    /// What streams and buckets are provisioned with: 1 to 5 replicas (JetStream's range).
    pub fn settings(&self) -> Result<agentos_bus::Settings> {
        let replicas = self.replicas();
        if !(1..=5).contains(&replicas) {
            anyhow::bail!("[nats] replicas must be 1 to 5, not {replicas}");
        }
        Ok(agentos_bus::Settings {
            replicas,
            ..Default::default()
        })
    }

    /// Whether connections use TLS: a CA or client certificate is given, or a `tls://` URL.
    pub fn tls_on(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self
                .url()
                .split(',')
                .all(|u| u.trim().starts_with("tls://"))
    }
}

section! {
    /// `[auth-callout]`: `agentos auth-callout`, which lets NATS clients in with the edge's
    /// bearer tokens (docs/operations.md, "One identity on NATS: the auth callout"). It verifies
    /// tokens with the `[edge]` settings and reads revocations over the `[nats]` connection.
    pub struct AuthCallout {
        /// The account nkey seed (`SA…`) nats-server's `auth_callout { issuer }` trusts; mode
        /// 0600.
        #[arg(long = "callout-issuer-seed-file", env = "AGENTOS_CALLOUT_ISSUER_SEED_FILE")]
        issuer_seed_file: PathBuf,
        /// The service's own NATS user, listed in `auth_callout { auth_users }`.
        #[arg(id = "callout_user", long = "callout-user", env = "AGENTOS_CALLOUT_USER")]
        user: String,
        #[arg(id = "callout_password", long = "callout-password", env = "AGENTOS_CALLOUT_PASSWORD", hide_env_values = true)]
        password: String,
        /// A system-account user: with it, connections whose token is revoked are closed too
        /// (without it they last until their token expires).
        #[arg(long = "callout-sys-user", env = "AGENTOS_CALLOUT_SYS_USER")]
        sys_user: String,
        #[arg(long = "callout-sys-password", env = "AGENTOS_CALLOUT_SYS_PASSWORD", hide_env_values = true)]
        sys_password: String,
    }
}

section! {
    /// `[edge]`: `agentos edge`.
    pub struct Edge {
        /// Listen address (default 127.0.0.1:8080).
        #[arg(long, env = "AGENTOS_LISTEN")]
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        /// HS256 secret for bearer tokens (never in the file: see --jwt-secret-file).
        #[arg(long, env = "AGENTOS_JWT_SECRET", hide_env_values = true)]
        #[serde(skip)]
        jwt_secret: String,
        /// A file holding the HS256 secret, trimmed; mode 0600. --jwt-secret wins.
        #[arg(long, env = "AGENTOS_JWT_SECRET_FILE")]
        jwt_secret_file: PathBuf,
        /// Accept every request as this tenant, without tokens. Loopback listeners only.
        #[arg(long, env = "AGENTOS_DEV_NO_AUTH_TENANT")]
        dev_no_auth_tenant: String,
        /// RS256/ES256 tokens checked against the JWKS at this URL.
        #[arg(long, env = "AGENTOS_JWKS_URL", conflicts_with_all = ["jwks_file", "oidc_issuer"])]
        jwks_url: String,
        /// RS256/ES256 tokens checked against a JWKS file.
        #[arg(long, env = "AGENTOS_JWKS_FILE", conflicts_with = "oidc_issuer")]
        jwks_file: PathBuf,
        /// RS256/ES256 tokens from this OIDC issuer (its discovery document names the JWKS); also
        /// the required `iss` unless --jwt-issuer says otherwise.
        #[arg(long, env = "AGENTOS_OIDC_ISSUER")]
        oidc_issuer: String,
        /// Required `iss` claim.
        #[arg(long, env = "AGENTOS_JWT_ISSUER")]
        jwt_issuer: String,
        /// Required `aud` claim.
        #[arg(long, env = "AGENTOS_JWT_AUDIENCE")]
        jwt_audience: String,
        /// The claim holding the tenant (default tenant).
        #[arg(long, env = "AGENTOS_TENANT_CLAIM")]
        tenant_claim: String = "tenant".into(),
        /// The claim holding the roles, an array or a space-separated string (default roles).
        #[arg(long, env = "AGENTOS_ROLES_CLAIM")]
        roles_claim: String = "roles".into(),
        /// Longest lifetime (exp - iat) of a JWKS token; longer ones, and ones without iat, are
        /// refused (default: no limit).
        #[arg(long, env = "AGENTOS_MAX_TOKEN_LIFETIME", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        max_token_lifetime: Duration,
        /// How long a client may take to send a request's headers (slowloris; default 10s).
        #[arg(long, env = "AGENTOS_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        header_read_timeout: Duration = agentos_edge::DEFAULT_HEADER_READ_TIMEOUT,
        /// Requests in flight at once; beyond it `503 overloaded` (default 4096).
        #[arg(long, env = "AGENTOS_MAX_IN_FLIGHT")]
        max_in_flight: usize = agentos_edge::DEFAULT_MAX_IN_FLIGHT,
        /// SSE streams one tenant may keep open; beyond it `429 too_many_streams` (default 256).
        #[arg(long, env = "AGENTOS_MAX_STREAMS_PER_TENANT")]
        max_streams_per_tenant: usize = agentos_edge::DEFAULT_MAX_STREAMS_PER_TENANT,
        /// Serve HTTPS with this certificate (PEM, chain after it), reloaded when it changes.
        #[arg(id = "edge_tls_cert", long = "tls-cert", env = "AGENTOS_TLS_CERT")]
        tls_cert: PathBuf,
        /// The certificate's private key (PEM); mode 0600.
        #[arg(id = "edge_tls_key", long = "tls-key", env = "AGENTOS_TLS_KEY")]
        tls_key: PathBuf,
        /// Check client certificates against these CAs (PEM): mTLS.
        #[arg(long, env = "AGENTOS_TLS_CLIENT_CA")]
        tls_client_ca: PathBuf,
        /// `require` (default: no certificate, no connection) or `optional`.
        #[arg(
            long,
            env = "AGENTOS_TLS_CLIENT_AUTH",
            value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<agentos_edge::ClientAuth>())
        )]
        tls_client_auth: agentos_edge::ClientAuth = agentos_edge::ClientAuth::Require,
        /// Client certificates that authenticate as a principal without a token:
        /// `IDENTITY=TENANT:SUBJECT[:ROLE,ROLE]` (IDENTITY: a URI, DNS or e-mail SAN, or the CN).
        #[arg(
            long = "tls-principal",
            env = "AGENTOS_TLS_PRINCIPALS",
            value_delimiter = ';',
            value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<agentos_edge::CertPrincipal>())
        )]
        tls_principals: Vec<agentos_edge::CertPrincipal> = Vec::new(),
    }
}

impl Edge {
    /// HTTPS settings, when a certificate is given; a readable key is refused.
    pub fn tls(&self) -> Result<Option<agentos_edge::TlsOptions>> {
        let (cert, key) = match (self.tls_cert(), self.tls_key()) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if self.tls_client_ca().is_some() || !self.tls_principals().is_empty() {
                    anyhow::bail!(
                        "[edge] tls-client-ca and tls-principals need tls-cert and tls-key"
                    );
                }
                return Ok(None);
            }
            _ => anyhow::bail!("[edge] tls-cert and tls-key go together"),
        };
        crate::secret::check(&key).context("[edge] tls-key")?;
        if self.tls_client_ca().is_none() && !self.tls_principals().is_empty() {
            anyhow::bail!("[edge] tls-principals need tls-client-ca (client certificates)");
        }
        Ok(Some(agentos_edge::TlsOptions {
            cert,
            key,
            client_ca: self.tls_client_ca(),
            client_auth: self.tls_client_auth(),
            principals: self.tls_principals(),
        }))
    }
}

section! {
    /// `[federation]`: read by the edge (docs/operations.md, "Federation").
    pub struct Federation {
        /// This cluster's node id, also its JetStream domain; federation is off without it.
        #[arg(long = "federation-node", env = "AGENTOS_FED_NODE")]
        node: String,
        /// The peers' node ids, comma-separated.
        #[arg(long = "federation-peers", env = "AGENTOS_FED_PEERS")]
        peers: String,
        /// How often this node announces itself (default 5s).
        #[arg(long = "federation-announce-interval", env = "AGENTOS_FED_ANNOUNCE_INTERVAL", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        announce_interval: Duration = Duration::from_secs(5),
        /// How long a peer may go unseen before its forwarded runs fail `peer_unavailable`
        /// (default 10m).
        #[arg(long = "federation-peer-deadline", env = "AGENTOS_FED_PEER_DEADLINE", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        peer_deadline: Duration = Duration::from_secs(600),
        /// The protocol range announced, `N` or `MIN-MAX` (default this build's; for
        /// compatibility tests).
        #[arg(long = "federation-protocol", env = "AGENTOS_FED_PROTOCOL")]
        protocol: String,
        /// Which peers each tenant's runs may be placed on: `acme=b,c; globex=; *=b` (a tenant
        /// not named, with no `*`, may use every peer).
        #[arg(long = "federation-tenant-peers", env = "AGENTOS_FED_TENANT_PEERS")]
        tenant_peers: String,
    }
}

impl Federation {
    /// The edge's federation settings, `None` when no node id is set.
    pub fn config(&self) -> Result<Option<agentos_edge::federation::FederationConfig>> {
        use agentos_bus::id::NodeId;
        let Some(node) = self.node().filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let node = NodeId::parse(node).context("[federation] node")?;
        let peers = self
            .peers()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| NodeId::parse(p).context("[federation] peers"))
            .collect::<Result<Vec<_>>>()?;
        let protocol = match self.protocol() {
            Some(p) => p
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))
                .context("[federation] protocol")?,
            None => agentos_bus::federation::PROTOCOL,
        };
        let tenant_peers: agentos_edge::federation::TenantPeers = self
            .tenant_peers()
            .unwrap_or_default()
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))
            .context("[federation] tenant-peers")?;
        if let Some(stranger) = tenant_peers.peers().find(|p| !peers.contains(p)) {
            anyhow::bail!("[federation] tenant-peers names {stranger}, which is not in peers");
        }
        Ok(Some(agentos_edge::federation::FederationConfig {
            node,
            peers,
            announce_interval: self.announce_interval(),
            peer_deadline: self.peer_deadline(),
            protocol,
            tenant_peers,
        }))
    }
}

section! {
    /// `[tenants]`: read by the edge, the orchestrators and the auth callout alike, so they cannot
    /// disagree.
    pub struct Tenants {
        /// `implicit` (default): any tenant a valid token names; `registered`: only tenants an
        /// admin created.
        #[arg(
            long = "tenants",
            env = "AGENTOS_TENANTS",
            value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<Admission>())
        )]
        admission: Admission = Admission::Implicit,
    }
}

section! {
    /// `[orchestrator]`: `agentos worker orchestrator`.
    pub struct Orchestrator {
        /// Runs driven at once (default 256).
        #[arg(long, env = "AGENTOS_CONCURRENCY")]
        concurrency: usize = 256,
        /// How long a run whose orchestrator went silent waits before another takes it over;
        /// progress is acked four times as often (default 2s; the same for the whole pool).
        #[arg(long, env = "AGENTOS_ACK_WAIT", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        ack_wait: Duration = agentos_bus::DEFAULT_ACK_WAIT,
        /// Longest wait for the next model reply chunk (default 120s).
        #[arg(long, env = "AGENTOS_MODEL_TIMEOUT", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        model_timeout: Duration = Duration::from_secs(120),
        /// Longest wait for a tool reply (default 60s).
        #[arg(long, env = "AGENTOS_TOOL_TIMEOUT", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        tool_timeout: Duration = Duration::from_secs(60),
        /// Lease of a thread's lock: how long a thread waits for a run whose orchestrator went
        /// silent before the next run may start (default 30s).
        #[arg(long, env = "AGENTOS_THREAD_LEASE", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        thread_lease: Duration = Duration::from_secs(30),
    }
}

section! {
    /// `[quotas]`: read by the edge and the orchestrators (cost budgets, budget holds).
    pub struct Quotas {
        /// How long a budget hold outlives its run's last model call before it is reclaimed
        /// (its run was lost) (default 10m).
        #[arg(long = "quota-hold-lease", env = "AGENTOS_QUOTA_LEASE", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        hold_lease: Duration = agentos_bus::quota::DEFAULT_HOLD_LEASE,
        /// Public model name → price in US dollars per million tokens (`input`, `output`);
        /// file only.
        #[arg(skip)]
        prices: BTreeMap<String, agentos_bus::quota::Price> = BTreeMap::new(),
    }
}

impl Quotas {
    pub fn price_table(&self) -> std::sync::Arc<agentos_bus::quota::Prices> {
        std::sync::Arc::new(agentos_bus::quota::Prices(self.prices()))
    }
}

section! {
    /// `[model]`: `agentos worker model`.
    pub struct Model {
        /// Model calls served at once (default 256).
        #[arg(long, env = "AGENTOS_CONCURRENCY")]
        concurrency: usize = 256,
        /// Public model name → route; file only. Reloaded by running model workers when the
        /// file changes.
        #[arg(skip)]
        routes: BTreeMap<String, RouteConfig> = BTreeMap::new(),
    }
}

section! {
    /// `[tool]`: `agentos worker tool`.
    pub struct Tool {
        /// Tool calls served at once (default 256).
        #[arg(long, env = "AGENTOS_CONCURRENCY")]
        concurrency: usize = 256,
        /// Hosts (`host` or `host:port`) the `http.get` tool may fetch, comma-separated (none).
        #[arg(long, env = "AGENTOS_HTTP_ALLOW", value_delimiter = ',')]
        http_allow: Vec<String> = Vec::new(),
    }
}

section! {
    /// `[metrics]`: Prometheus metrics, read by the edge and every worker.
    pub struct Metrics {
        /// Serve this process's metrics on their own listener (workers: without it they export
        /// none; the edge: instead of `/metrics` on its API listener).
        #[arg(id = "metrics_listen", long = "metrics-listen", env = "AGENTOS_METRICS_LISTEN")]
        listen: SocketAddr,
        /// Tenants whose metrics carry their own `tenant` label, comma-separated; every other
        /// tenant's are labelled `other` (none).
        #[arg(id = "metrics_tenants", long = "metrics-tenants", env = "AGENTOS_METRICS_TENANTS", value_delimiter = ',')]
        tenants: Vec<String> = Vec::new(),
        /// A series that has not changed for this long is dropped (default 10m).
        #[arg(id = "metrics_idle_timeout", long = "metrics-idle-timeout", env = "AGENTOS_METRICS_IDLE_TIMEOUT", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        idle_timeout: Duration = Duration::from_secs(600),
    }
}

section! {
    /// `[memory]`: read by the edge and the tool worker (the memory API and the memory tools).
    pub struct Memory {
        /// Most items a search reads in one namespace; a larger one is refused (default 10000).
        #[arg(long = "memory-max-scan", env = "AGENTOS_MEMORY_MAX_SCAN")]
        max_scan: usize = agentos_bus::recall::DEFAULT_MAX_SCAN,
        /// Namespace prefix → its embedding settings; file only.
        #[arg(skip)]
        namespaces: BTreeMap<String, NamespaceConfig> = BTreeMap::new(),
    }
}

/// `[memory.namespaces."<prefix>"]`: the namespaces under a prefix (whole dotted tokens).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NamespaceConfig {
    /// The model (an embedding route of the model workers) that embeds items and queries.
    pub embedding_model: String,
}

/// The memory settings the edge and the tool worker share.
pub fn memory(c: &Memory) -> Result<agentos_bus::recall::MemoryConfig> {
    let mut prefixes = Vec::new();
    for (prefix, ns) in &c.namespaces() {
        let p = agentos_bus::id::Namespace::parse(prefix.clone())
            .with_context(|| format!("[memory.namespaces.\"{prefix}\"]"))?;
        let m = agentos_bus::id::ModelName::parse(ns.embedding_model.clone())
            .with_context(|| format!("[memory.namespaces.\"{prefix}\"] embedding-model"))?;
        prefixes.push((p, m));
    }
    Ok(agentos_bus::recall::MemoryConfig::new(
        prefixes,
        c.max_scan().max(1),
    ))
}

section! {
    /// `[mcp]`: `agentos worker mcp`.
    pub struct Mcp {
        /// MCP calls served at once (default 256).
        #[arg(long, env = "AGENTOS_CONCURRENCY")]
        concurrency: usize = 256,
        /// Longest an MCP tool call may run (default 60s); each bridged tool announces it.
        #[arg(long, env = "AGENTOS_MCP_CALL_TIMEOUT", value_parser = parse_duration)]
        #[serde(deserialize_with = "duration")]
        call_timeout: Duration = Duration::from_secs(60),
        /// Server name → how to reach it; file only.
        #[arg(skip)]
        servers: BTreeMap<String, McpServerConfig> = BTreeMap::new(),
    }
}

/// `[mcp.servers.<name>]`: a stdio command (`command`, `args`, `env`) or a streamable-HTTP
/// `url`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct McpServerConfig {
    /// The program to start (looked up on `PATH`).
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    /// Variables set for the program, over the bridge's own environment.
    pub env: Option<BTreeMap<String, String>>,
    /// A streamable-HTTP MCP endpoint, instead of `command`.
    pub url: Option<String>,
}

/// The bridge's options from `[mcp]`: every server validated (name and transport).
pub fn mcp_bridge(c: &Mcp) -> Result<agentos_workers::mcp::McpBridgeOptions> {
    use agentos_workers::mcp::{McpServerSpec, McpTransport};
    let servers = c
        .servers()
        .into_iter()
        .map(|(name, s)| {
            let at = || format!("[mcp.servers.{name}]");
            let server = agentos_bus::id::McpServer::parse(name.clone()).with_context(at)?;
            let transport = match (s.command, s.url) {
                (Some(command), None) => McpTransport::Stdio {
                    command,
                    args: s.args.unwrap_or_default(),
                    env: s.env.unwrap_or_default(),
                },
                (None, Some(url)) if s.args.is_none() && s.env.is_none() => {
                    anyhow::ensure!(
                        url.starts_with("http://") || url.starts_with("https://"),
                        "{}: url must be http:// or https://",
                        at()
                    );
                    McpTransport::Http { url }
                }
                (None, Some(_)) => anyhow::bail!("{}: args and env go with command, not url", at()),
                _ => anyhow::bail!("{}: give either command or url", at()),
            };
            Ok(McpServerSpec {
                name: server,
                transport,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(agentos_workers::mcp::McpBridgeOptions {
        servers,
        concurrency: c.concurrency(),
        call_timeout: c.call_timeout(),
    })
}

section! {
    /// `[up]`: `agentos up`; its `home` is every command's `--home`.
    pub struct Up {
        /// Where NATS data, logs, the token and reports live (default .agentos).
        #[arg(long, env = "AGENTOS_HOME")]
        home: PathBuf = PathBuf::from(".agentos"),
        /// nats-server's client port, on 127.0.0.1 (default 4222).
        #[arg(long)]
        nats_port: u16 = 4222,
        /// The edge's address (default 127.0.0.1:8080).
        #[arg(long)]
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        /// Orchestrator instances (default 1).
        #[arg(long)]
        orchestrators: usize = 1,
        /// Model worker instances (default 1).
        #[arg(long)]
        model_workers: usize = 1,
        /// Tool worker instances (default 1).
        #[arg(long)]
        tool_workers: usize = 1,
        /// Let NATS clients connect with the edge's bearer tokens (an auth callout, run as the
        /// `auth-callout` component); tenants' static accounts keep working.
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        auth_callout: bool = false,
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
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
    /// File holding the API key (mode 0600).
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
    /// For `hash`: the vector size (default 256).
    pub dimensions: Option<u32>,
}

/// Builds the model route table: the built-in `scripted` route plus the configured ones.
pub fn routes(c: &Model) -> Result<agentos_workers::model::RouteTable> {
    use agentos_workers::model::{Backend, OpenAi, OpenAiOptions, Route, Secret, default_routes};
    let mut table = default_routes();
    for (name, r) in &c.routes() {
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
                    (None, Some(f)) => {
                        Some(Secret::new(crate::secret::read(f).with_context(|| {
                            format!("[model.routes.{name}] api-key-file")
                        })?))
                    }
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
            "hash" => Backend::Hash(agentos_workers::model::HashEmbed {
                dimensions: match r.dimensions {
                    None => agentos_workers::model::HashEmbed::default().dimensions,
                    Some(d @ 1..=4096) => d,
                    Some(d) => {
                        anyhow::bail!("[model.routes.{name}] dimensions {d} is not 1..=4096")
                    }
                },
            }),
            other => anyhow::bail!(
                "[model.routes.{name}] backend {other:?} is not one of scripted, openai, hash"
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

/// A duration key: `"250ms"`, `"30s"`, `"5m"`, `"24h"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s))
        .transpose()
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

/// Lays the command line (flags, then `AGENTOS_*` variables, as clap read them) over the file:
/// each section the command takes keeps what was given and takes the rest from `file`; the
/// accessors supply the defaults last.
pub fn layer(cli: &mut Cli, file: Config) {
    use std::mem::take;
    cli.security = take(&mut cli.security).or(file.security);
    match &mut cli.command {
        Command::Edge(a) => {
            a.nats = take(&mut a.nats).or(file.nats);
            a.edge = take(&mut a.edge).or(file.edge);
            a.tenants = take(&mut a.tenants).or(file.tenants);
            a.memory = take(&mut a.memory).or(file.memory);
            a.metrics = take(&mut a.metrics).or(file.metrics);
            a.quotas = take(&mut a.quotas).or(file.quotas);
            a.federation = take(&mut a.federation).or(file.federation);
        }
        Command::Worker { kind } => match kind {
            WorkerKind::Orchestrator(a) => {
                a.nats = take(&mut a.nats).or(file.nats);
                a.orchestrator = take(&mut a.orchestrator).or(file.orchestrator);
                a.tenants = take(&mut a.tenants).or(file.tenants);
                a.metrics = take(&mut a.metrics).or(file.metrics);
                a.quotas = take(&mut a.quotas).or(file.quotas);
            }
            WorkerKind::Model(a) => {
                a.nats = take(&mut a.nats).or(file.nats);
                a.model = take(&mut a.model).or(file.model);
                a.metrics = take(&mut a.metrics).or(file.metrics);
            }
            WorkerKind::Tool(a) => {
                a.nats = take(&mut a.nats).or(file.nats);
                a.tool = take(&mut a.tool).or(file.tool);
                a.memory = take(&mut a.memory).or(file.memory);
                a.metrics = take(&mut a.metrics).or(file.metrics);
            }
            WorkerKind::Mcp(a) => {
                a.nats = take(&mut a.nats).or(file.nats);
                a.mcp = take(&mut a.mcp).or(file.mcp);
                a.metrics = take(&mut a.metrics).or(file.metrics);
            }
        },
        Command::AuthCallout(a) => {
            a.nats = take(&mut a.nats).or(file.nats);
            a.edge = take(&mut a.edge).or(file.edge);
            a.tenants = take(&mut a.tenants).or(file.tenants);
            a.callout = take(&mut a.callout).or(file.auth_callout);
        }
        Command::Provision(nats) => *nats = take(nats).or(file.nats),
        Command::Up(a) => {
            a.up = take(&mut a.up).or(file.up);
            a.mcp = file.mcp;
        }
        Command::Validate(a) => {
            a.nats = take(&mut a.nats).or(file.nats);
            a.home.home = a.home.home.take().or(file.up.home);
        }
        other => {
            if let Some(h) = other.home_mut() {
                h.home = h.home.take().or(file.up.home);
            }
        }
    }
}

/// The home folder when neither `--home`, `AGENTOS_HOME` nor `[up] home` names one.
pub fn default_home() -> PathBuf {
    Up::default().home()
}

#[cfg(test)]
mod tests;
