//! `agentos up`: a local platform in one command. Numbered phases, each failing with one line
//! and a hint; everything it started is stopped again when it fails or on Ctrl-C. (Detach,
//! restarts with backoff, `down`/`status`/`logs`/`nuke` arrive with the CLI issue.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentos_bus::server::{self, NatsServer};
use agentos_bus::{Bus, ConnectOptions, Settings};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::args::UpArgs;

const PHASES: usize = 6;

fn phase(n: usize, what: &str) {
    println!("[{n}/{PHASES}] {what}");
}

/// A supervised child: SIGTERM then SIGKILL on drop.
struct Component {
    name: String,
    child: Child,
}

impl Component {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
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

fn secret(home: &Path) -> Result<String> {
    let path = home.join("jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_owned());
    }
    let s = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &s).with_context(|| format!("writing {}", path.display()))?;
    Ok(s)
}

pub async fn up(a: UpArgs) -> Result<()> {
    let started = Instant::now();
    phase(1, "config");
    std::fs::create_dir_all(a.home.join("logs"))
        .with_context(|| format!("creating {} (hint: --home DIR)", a.home.display()))?;
    let home = a.home.canonicalize()?;
    let lock = home.join("up.pid");
    if let Ok(pid) = std::fs::read_to_string(&lock)
        && Path::new(&format!("/proc/{}", pid.trim())).exists()
    {
        bail!(
            "AgentOS is already running from {} (pid {}); hint: stop it first, or use another --home",
            home.display(),
            pid.trim()
        );
    }
    std::fs::write(&lock, std::process::id().to_string())?;
    let result = run(&a, &home, started).await;
    let _ = std::fs::remove_file(&lock);
    result
}

async fn run(a: &UpArgs, home: &Path, started: Instant) -> Result<()> {
    phase(2, "nats-server");
    let binary = server::locate(&[home.join("bin/nats-server")])
        .map_err(|e| anyhow!("{e}\n  hint: run ./scripts/install-nats-server"))?;
    let nats = NatsServer::spawn(&binary, &home.join("nats"), Some(a.nats_port), &[])
        .await
        .map_err(|e| {
            anyhow!(
                "{e}\n  hint: is port {} in use? try --nats-port",
                a.nats_port
            )
        })?;
    println!(
        "      {} ({}) at {}",
        binary.display(),
        server::version_of(&binary).map_or("?".into(), |(x, y)| format!("v{x}.{y}")),
        nats.url()
    );

    phase(3, "streams and KV buckets");
    let bus = Bus::connect(&ConnectOptions::new(nats.url()).with_name("agentos-up")).await?;
    let report = bus.provision(&Settings::default()).await?;
    for item in report.drifted() {
        println!(
            "      warning: {} {} differs: {:?}",
            item.kind, item.name, item.outcome
        );
    }
    println!("      {} resources ready", report.items.len());

    phase(4, "edge and workers");
    let secret = secret(home)?;
    let exe = std::env::current_exe()?;
    let spawn = |name: String, args: Vec<String>| -> Result<Component> {
        let log = std::fs::File::create(home.join("logs").join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .args(&args)
            .env("AGENTOS_NATS_URL", nats.url())
            .env("AGENTOS_JWT_SECRET", &secret)
            .env("AGENTOS_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Component { name, child })
    };
    let mut components = vec![spawn(
        "edge".into(),
        vec!["edge".into(), "--listen".into(), a.listen.to_string()],
    )?];
    for (kind, n) in [
        ("orchestrator", a.orchestrators),
        ("model", a.model_workers),
        ("tool", a.tool_workers),
    ] {
        for i in 1..=n {
            components.push(spawn(
                format!("{kind}-{i}"),
                vec!["worker".into(), kind.into()],
            )?);
        }
    }
    println!(
        "      {}",
        components
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    phase(5, "readiness");
    let edge_url = format!("http://{}", a.listen);
    let http = reqwest::Client::new();
    wait_ready(&http, &edge_url, &bus, a, &mut components, home).await?;

    phase(6, "smoke run");
    let token = agentos_edge::mint(
        secret.as_bytes(),
        "operator",
        &"dev".parse()?,
        &["admin".into()],
        Duration::from_secs(86_400),
    )?;
    let token_file = home.join("token");
    std::fs::write(&token_file, &token)?;
    let run = smoke_run(&http, &edge_url, &token)
        .await
        .context("the smoke run failed (logs are in <home>/logs)")?;
    println!(
        "      run {} completed: {:?}",
        run["id"].as_str().unwrap_or("?"),
        run["output"].as_str().unwrap_or("")
    );

    let report = json!({
        "edge_url": edge_url, "nats_url": nats.url(), "home": home, "token_file": token_file,
        "components": components.iter().map(|c| json!({"name": c.name, "pid": c.child.id()})).collect::<Vec<_>>(),
        "nats_pid": nats.pid(), "smoke_run": run["id"], "ready_after_ms": started.elapsed().as_millis(),
    });
    std::fs::create_dir_all(home.join("reports"))?;
    let report_file = home.join("reports").join(format!(
        "up-{}.json",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    ));
    std::fs::write(&report_file, serde_json::to_vec_pretty(&report)?)?;

    println!(
        "\nAgentOS is up in {:.1}s.",
        started.elapsed().as_secs_f64()
    );
    println!("  edge:   {edge_url}   (API spec: {edge_url}/openapi.json)");
    println!("  nats:   {}", nats.url());
    println!(
        "  token:  export TOKEN=$(cat {})   # tenant dev, 24h",
        token_file.display()
    );
    println!("  logs:   {}", home.join("logs").display());
    println!("  report: {}", report_file.display());
    if a.smoke_only {
        println!("\n--smoke-only: stopping.");
    } else {
        println!(
            "\nCtrl-C stops everything (data stays in {}).",
            home.display()
        );
        tokio::signal::ctrl_c().await?;
        println!("stopping…");
    }
    for c in components.iter_mut() {
        c.stop();
    }
    drop(nats);
    println!("stopped.");
    Ok(())
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
    let want = a.orchestrators + a.model_workers + a.tool_workers;
    loop {
        for c in components.iter_mut() {
            if let Ok(Some(status)) = c.child.try_wait() {
                let log: PathBuf = home.join("logs").join(format!("{}.log", c.name));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let last = tail.lines().last().unwrap_or("").to_owned();
                bail!(
                    "{} exited with {status} while starting: {last}\n  hint: see {} (is {} in use?)",
                    c.name,
                    log.display(),
                    a.listen
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
