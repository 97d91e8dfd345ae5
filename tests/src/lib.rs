//! The end-to-end harness: a real nats-server on a random port and the real `agentos` binary
//! as separate processes, all killed on drop. Waits are on conditions, never fixed sleeps.

pub mod federation;
pub mod proxy;
pub mod upstream;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentos_bus::cluster::NatsCluster;
use agentos_bus::server::NatsServer;
use agentos_bus::{Bus, ConnectOptions, Settings};
use anyhow::{Context, Result, bail};
use serde_json::Value;

pub const SECRET: &str = "e2e-secret";

/// The `agentos` binary cargo built next to this test executable.
pub fn agentos_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("test binary has no target dir")?;
    let bin = dir.join("agentos");
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p agentos-cli` (cargo test --workspace does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `agentos <args> --home <home>` (without the caller's `AGENTOS_NATS_URL` and
/// `AGENTOS_CONFIG`); its output, or an error with what it printed when it failed.
pub fn agentos_at(home: &std::path::Path, args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new(agentos_bin()?)
        .args(args)
        .arg("--home")
        .arg(home)
        .env_remove("AGENTOS_NATS_URL")
        .env_remove("AGENTOS_CONFIG")
        .output()
        .context("run agentos")?;
    if !out.status.success() {
        bail!(
            "agentos {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Stops the detached platform of a home (`agentos down`) however the test ends.
pub struct Down(pub PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if let Ok(bin) = agentos_bin() {
            let _ = Command::new(bin)
                .args(["down", "--home"])
                .arg(&self.0)
                .output();
        }
    }
}

/// One try at submitting a run of `agent` under `Idempotency-Key: key` (10 s at most): its id
/// once `edge` accepted it, `None` on any failure, for load tests that retry with the same key
/// through edges that may be down.
pub async fn try_submit(
    http: &reqwest::Client,
    edge: &str,
    token: &str,
    key: &str,
    agent: &str,
    input: &str,
) -> Option<String> {
    let r = http
        .post(format!("{edge}/v1/runs"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .timeout(Duration::from_secs(10))
        .json(&serde_json::json!({"agent_id": agent, "input": input}))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["id"].as_str().map(str::to_owned)
}

/// An agent `id` on the scripted model that makes one `echo` tool call, then answers "ok":
/// the run the bench, the soak and the chaos test drive.
pub fn echo_agent(id: &str) -> Value {
    serde_json::json!({
        "id": id, "model": "scripted", "tools": ["echo"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "echo", "arguments": {"n": 1}}]},
            {"text": "ok"}
        ]}
    })
}

/// A benchmark's `[runs] [concurrency]` arguments, with defaults.
pub fn bench_args(default_runs: usize) -> (usize, usize) {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    (
        args.first().copied().unwrap_or(default_runs),
        args.get(1).copied().unwrap_or(64),
    )
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A base port for `agentos up --cluster 3 --nats-port <base>`, which listens on `base + i`,
/// `base + 2000 + i` and `base + 4000 + i` for nodes `i` in 0..3. The base is drawn from
/// 10,000..28,000 so every one of those ports stays below Linux's ephemeral range (32,768 and
/// up), where `free_port` and every outgoing connection take theirs; each is checked free
/// (test clusters draw theirs from the same range: `agentos_bus::cluster::free_ports`).
pub fn cluster_base_port() -> Result<u16> {
    for _ in 0..100 {
        let base = 10_000 + free_port()? % 18_000;
        let all_free = [0, 2000, 4000]
            .iter()
            .flat_map(|offset| (0..3).map(move |i| base + offset + i))
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no free cluster base port after 100 draws")
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Owns `child`: it is killed and reaped when the `Proc` is dropped.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `p` quantile (0..=1) of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Resident set size in KiB, from /proc (0 if the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc (clock ticks at 100 Hz).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls `f` until it returns `Some`, up to `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

pub struct Platform {
    /// The nats-server, or the first node of a cluster ([`Options::cluster`]).
    pub nats: NatsServer,
    /// The other nodes of a cluster (`n1`, `n2`, …); empty on a single server.
    pub nats_peers: Vec<NatsServer>,
    /// What every process connects with: one URL, or every node's, comma-separated.
    pub nats_url: String,
    /// A cluster's ports (monitoring for [`Platform::wait_nats_healthy`]).
    pub nats_ports: Vec<agentos_bus::cluster::NodePorts>,
    pub bus: Bus,
    pub edge_url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub procs: Vec<Proc>,
    worker_env: Vec<(String, String)>,
    /// Each worker's own metrics listener (`host:port`) by process name, when started with
    /// [`Options::metrics`]; the edge serves `/metrics` on its API listener.
    pub metrics_targets: Vec<(String, String)>,
    metrics: bool,
    /// The agentos.toml every process reads, kept alive as long as they run.
    _config: Option<tempfile::NamedTempFile>,
    /// A cluster's stores; dropped after the nodes (fields drop in order).
    _nats_temp: Option<tempfile::TempDir>,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// `agentos.toml` contents for every process (model routes, …).
    pub config: Option<String>,
    /// More environment for every process (e.g. `AGENTOS_JWKS_FILE` for the edge).
    pub env: Vec<(String, String)>,
    pub orchestrators: usize,
    pub ack_wait: &'static str,
    pub http_allow: Vec<String>,
    pub tenant: &'static str,
    /// Give every worker its own metrics listener on a free port ([`Platform::metrics_targets`]).
    pub metrics: bool,
    /// The HS256 secret of this platform's edge (default [`SECRET`]).
    pub jwt_secret: Option<String>,
    /// Run NATS as a cluster of this many nodes, streams and buckets at that many replicas
    /// (0 or 1: one server, R1).
    pub cluster: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: None,
            env: Vec::new(),
            orchestrators: 1,
            ack_wait: "30s",
            http_allow: Vec::new(),
            tenant: "acme",
            metrics: false,
            jwt_secret: None,
            cluster: 0,
        }
    }
}

impl Platform {
    pub async fn start(opts: Options) -> Result<Self> {
        match opts.cluster {
            0 | 1 => Self::start_on(NatsServer::ephemeral().await?, opts).await,
            n => {
                let cluster = NatsCluster::ephemeral(n).await?;
                let ports = cluster.ports.clone();
                let (mut nodes, temp) = cluster.into_parts();
                let first = nodes.remove(0);
                let settings = Settings {
                    replicas: n.min(5),
                    ..Settings::default()
                };
                Self::start_nodes(first, nodes, ports, temp, settings, opts).await
            }
        }
    }

    /// Like [`Platform::start`], on a nats-server the caller started (a federated cluster's).
    pub async fn start_on(nats: NatsServer, opts: Options) -> Result<Self> {
        Self::start_nodes(
            nats,
            Vec::new(),
            Vec::new(),
            None,
            Settings::default(),
            opts,
        )
        .await
    }

    /// The platform on `nats` and its cluster peers (none: one server).
    async fn start_nodes(
        nats: NatsServer,
        nats_peers: Vec<NatsServer>,
        nats_ports: Vec<agentos_bus::cluster::NodePorts>,
        nats_temp: Option<tempfile::TempDir>,
        settings: Settings,
        opts: Options,
    ) -> Result<Self> {
        let nats_url = std::iter::once(&nats)
            .chain(&nats_peers)
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let bus = Bus::connect(&ConnectOptions::new(nats_url.clone())).await?;
        // A cluster answers JetStream requests once it has elected its meta leader.
        eventually("JetStream provisioned", Duration::from_secs(60), || async {
            bus.provision(&settings).await.ok()
        })
        .await?;
        // Every node current with the meta leader and every stream: before that, a client on a
        // lagging node is told "no stream" for a stream the others have.
        agentos_bus::cluster::wait_healthy(&nats_ports, Duration::from_secs(60)).await?;
        let port = free_port()?;
        let edge_url = format!("http://127.0.0.1:{port}");
        let token = match &opts.jwt_secret {
            Some(secret) => mint_with_secret(secret, opts.tenant, "member")?,
            None => mint(opts.tenant)?,
        };
        let config = match &opts.config {
            None => None,
            Some(text) => {
                let mut f = tempfile::Builder::new().suffix(".toml").tempfile()?;
                std::io::Write::write_all(&mut f, text.as_bytes())?;
                Some(f)
            }
        };
        let mut worker_env = vec![
            ("AGENTOS_NATS_URL".into(), nats_url.clone()),
            (
                "AGENTOS_NATS_REPLICAS".into(),
                settings.replicas.to_string(),
            ),
            ("AGENTOS_ACK_WAIT".into(), opts.ack_wait.to_owned()),
            ("AGENTOS_HTTP_ALLOW".into(), opts.http_allow.join(",")),
            (
                "AGENTOS_JWT_SECRET".into(),
                opts.jwt_secret.clone().unwrap_or_else(|| SECRET.into()),
            ),
            ("AGENTOS_LOG".into(), "info,async_nats=warn".into()),
        ];
        if let Some(f) = &config {
            worker_env.push(("AGENTOS_CONFIG".into(), f.path().display().to_string()));
        }
        worker_env.extend(opts.env.iter().cloned());
        let mut p = Self {
            worker_env,
            _config: config,
            nats,
            nats_peers,
            nats_url,
            nats_ports,
            _nats_temp: nats_temp,
            bus,
            edge_url,
            token,
            http: reqwest::Client::new(),
            procs: Vec::new(),
            metrics_targets: Vec::new(),
            metrics: opts.metrics,
        };
        p.spawn("edge", &["edge", "--listen", &format!("127.0.0.1:{port}")])?;
        p.spawn("model", &["worker", "model"])?;
        p.spawn("tool", &["worker", "tool"])?;
        for _ in 0..opts.orchestrators {
            p.spawn_orchestrator()?;
        }
        p.wait_ready(opts.orchestrators).await?;
        Ok(p)
    }

    pub fn spawn(&mut self, name: &str, args: &[&str]) -> Result<&mut Proc> {
        self.spawn_with_env(name, args, &[])
    }

    /// Like [`Platform::spawn`], with `env` on top of every process's environment (a model
    /// worker with its own `AGENTOS_CONFIG`, say).
    pub fn spawn_with_env(
        &mut self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<&mut Proc> {
        let mut metrics_env = Vec::new();
        if self.metrics && args.first() == Some(&"worker") {
            let addr = format!("127.0.0.1:{}", free_port()?);
            self.metrics_targets.push((name.to_owned(), addr.clone()));
            metrics_env.push(("AGENTOS_METRICS_LISTEN", addr));
        }
        let child = Command::new(agentos_bin()?)
            .args(args)
            .envs(metrics_env)
            .envs(
                self.worker_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("AGENTOS_E2E_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
        });
        let last = self.procs.len() - 1;
        Ok(&mut self.procs[last])
    }

    /// Waits until every one of `runs` (tenant `tenant`) has journaled `tool.started`.
    pub async fn wait_tool_started(
        &self,
        tenant: &agentos_bus::id::Tenant,
        runs: &[agentos_bus::id::RunId],
    ) -> Result<()> {
        eventually(
            "every tool call started",
            Duration::from_secs(60),
            || async {
                for id in runs {
                    let journal = self.bus.read_journal(tenant, id).await.ok()?;
                    journal
                        .iter()
                        .any(|s| s.event.type_name() == "tool.started")
                        .then_some(())?;
                }
                Some(())
            },
        )
        .await
    }

    /// Starts one more edge on the same NATS, with the same settings; its URL once it is ready.
    pub async fn spawn_edge(&mut self) -> Result<String> {
        self.spawn_edge_with_env(&[]).await
    }

    /// Like [`Platform::spawn_edge`], with `env` on top of the platform's environment.
    pub async fn spawn_edge_with_env(&mut self, env: &[(&str, &str)]) -> Result<String> {
        let port = free_port()?;
        self.spawn_with_env(
            "edge",
            &["edge", "--listen", &format!("127.0.0.1:{port}")],
            env,
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let (http, ready) = (self.http.clone(), format!("{url}/readyz"));
        eventually("another edge ready", Duration::from_secs(60), || async {
            let r = http.get(&ready).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await?;
        Ok(url)
    }

    /// Node `i` of the cluster (`n<i>`; 0 is [`Platform::nats`]).
    pub fn nats_node(&mut self, i: usize) -> Option<&mut NatsServer> {
        match i {
            0 => Some(&mut self.nats),
            i => self.nats_peers.get_mut(i - 1),
        }
    }

    /// Waits until every node of the cluster answers `/healthz` (no-op on a single server).
    pub async fn wait_nats_healthy(&self, timeout: Duration) -> Result<()> {
        Ok(agentos_bus::cluster::wait_healthy(&self.nats_ports, timeout).await?)
    }

    pub fn spawn_orchestrator(&mut self) -> Result<&mut Proc> {
        self.spawn("orchestrator", &["worker", "orchestrator"])
    }

    /// Waits until the edge is ready and `orchestrators` orchestrators, a model worker and a
    /// tool worker answer the service API.
    pub async fn wait_ready(&self, orchestrators: usize) -> Result<()> {
        let url = format!("{}/readyz", self.edge_url);
        eventually("edge readiness", Duration::from_secs(60), || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await?;
        self.wait_services(orchestrators).await
    }

    pub async fn wait_services(&self, orchestrators: usize) -> Result<()> {
        eventually("worker services", Duration::from_secs(60), || async {
            let found = self.bus.discover(Duration::from_millis(250)).await.ok()?;
            let count = |n: &str| found.iter().filter(|s| s.name == n).count();
            (count("agentos-orchestrator") == orchestrators
                && count("agentos-model") >= 1
                && count("agentos-tool") >= 1)
                .then_some(())
        })
        .await
    }

    /// The `agentos.toml` every process reads, when the platform was started with one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self._config.as_ref().map(tempfile::NamedTempFile::path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.edge_url)
    }

    /// An authorized request.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.send_as(&self.token, reqwest::Method::POST, path, Some(body))
            .await
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send_as(&self.token, reqwest::Method::GET, path, None)
            .await
    }

    /// A request as the holder of `token`: the status and the JSON body (`Null` if none).
    pub async fn send_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn create_agent(&self, body: Value) -> Result<()> {
        let (status, v) = self.post("/v1/agents", &body).await?;
        if status != 201 {
            bail!("create agent: {status} {v}");
        }
        Ok(())
    }

    pub async fn start_run(&self, agent: &str, input: &str) -> Result<String> {
        self.start_run_as(&self.token, agent, input).await
    }

    /// Like [`Platform::start_run`], as the holder of `token`.
    pub async fn start_run_as(&self, token: &str, agent: &str, input: &str) -> Result<String> {
        let body = serde_json::json!({"agent_id": agent, "input": input});
        let (status, v) = self
            .send_as(token, reqwest::Method::POST, "/v1/runs", Some(&body))
            .await?;
        if status != 201 {
            bail!("start run: {status} {v}");
        }
        Ok(v["id"].as_str().context("run id")?.to_owned())
    }

    /// Long-polls until the run is terminal.
    pub async fn wait_terminal(&self, run: &str, timeout: Duration) -> Result<Value> {
        eventually("a terminal run", timeout, || async {
            let (_, v) = self
                .get(&format!("/v1/runs/{run}/wait?timeout_s=5"))
                .await
                .ok()?;
            matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "expired")
            )
            .then_some(v)
        })
        .await
    }

    /// Reads the run's SSE stream until `event` arrives (a stream that stays open, e.g. of a
    /// waiting run, is then dropped); the text read. An error if the stream ends first or
    /// `timeout` passes.
    pub async fn sse_until(&self, run: &str, event: &str, timeout: Duration) -> Result<String> {
        let mut sse = self
            .req(reqwest::Method::GET, &format!("/v1/runs/{run}/events"))
            .send()
            .await?;
        let (mut text, wanted) = (String::new(), format!("event: {event}"));
        let saw = tokio::time::timeout(timeout, async {
            while let Ok(Some(chunk)) = sse.chunk().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains(&wanted) {
                    return true;
                }
            }
            false
        })
        .await;
        if saw != Ok(true) {
            bail!("no {event} on the stream of run {run}; so far: {text}");
        }
        Ok(text)
    }

    /// Reads the SSE stream to its end (it closes after the terminal event).
    pub async fn events(&self, run: &str, last_event_id: Option<u64>) -> Result<Vec<SseEvent>> {
        let mut r = self.req(reqwest::Method::GET, &format!("/v1/runs/{run}/events"));
        if let Some(id) = last_event_id {
            r = r.header("Last-Event-ID", id.to_string());
        }
        let resp = tokio::time::timeout(Duration::from_secs(60), r.send()).await??;
        if !resp.status().is_success() {
            bail!("events: {}", resp.status());
        }
        let text = tokio::time::timeout(Duration::from_secs(60), resp.text()).await??;
        Ok(parse_sse(&text))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (None, None, String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if let (Some(id), Some(event)) = (id, event) {
            out.push(SseEvent {
                id,
                event,
                data: serde_json::from_str(&data).unwrap_or(Value::Null),
            });
        }
    }
    out
}

/// A development token for `tenant`, minted by the real binary.
pub fn mint(tenant: &str) -> Result<String> {
    mint_with_roles(tenant, "member")
}

/// A development token with comma-separated `roles`.
pub fn mint_with_roles(tenant: &str, roles: &str) -> Result<String> {
    mint_with_secret(SECRET, tenant, roles)
}

/// A development token signed with `secret`.
pub fn mint_with_secret(secret: &str, tenant: &str, roles: &str) -> Result<String> {
    let out = Command::new(agentos_bin()?)
        .args([
            "token", "mint", "--secret", secret, "--tenant", tenant, "--roles", roles,
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "token mint failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Runs the client compatibility matrix (`tests/python/compat_matrix.py`: the openai SDK, the
/// OpenAI Agents SDK, LangChain) against `model` on `p`; `real` relaxes the checks on what a
/// real model says. Whether every check passed, and the script's output.
pub async fn client_matrix(p: &Platform, model: &str, real: bool) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/compat_matrix.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("AGENTOS_BASE_URL", p.url("/v1"))
        .env("AGENTOS_TOKEN", &p.token)
        .env("AGENTOS_MODEL", model)
        .env("AGENTOS_REAL_MODEL", if real { "1" } else { "0" })
        .output()
        .await;
    match out {
        Err(e) => (
            false,
            format!("python3: {e} (install tests/requirements.txt)"),
        ),
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
    }
}

/// A tiny HTTP server that counts GETs: a visible side effect for tool tests.
pub struct CountingServer {
    pub addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Requests>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`CountingServer`] was asked: every request, and the distinct `Idempotency-Key`s.
#[derive(Default)]
struct Requests {
    hits: usize,
    keys: std::collections::HashSet<String>,
    /// Requests without a key (each one an effect).
    unkeyed: usize,
}

impl CountingServer {
    pub async fn start() -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Requests::default()));
        let requests = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut head = Vec::new();
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        if head.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let key = String::from_utf8_lossy(&head).lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("idempotency-key")
                            .then(|| value.trim().to_owned())
                    });
                    let n = {
                        let mut r = requests.lock().unwrap_or_else(|e| e.into_inner());
                        r.hits += 1;
                        match key {
                            Some(key) => {
                                r.keys.insert(key);
                            }
                            None => r.unkeyed += 1,
                        }
                        r.hits
                    };
                    let body = format!("hit {n}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// Requests received.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).hits
    }

    /// Distinct `Idempotency-Key`s received.
    pub fn keys(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .len()
    }

    /// Effects at a service that honours `Idempotency-Key`: one per distinct key, plus every
    /// request without one.
    pub fn effects(&self) -> usize {
        let r = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        r.keys.len() + r.unkeyed
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subject from text, for tests that publish or call by hand (malformed traffic included).
pub fn subject(s: &str) -> agentos_bus::subject::Subject {
    agentos_bus::subject::Subject::parse(s).expect("subject")
}

/// A KV key from text, for tests and benchmarks that read or write buckets by hand.
pub fn key(k: &str) -> agentos_bus::Key {
    agentos_bus::Key::parse(k).expect("key")
}
