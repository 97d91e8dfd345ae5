//! Operator commands on a local platform: `down`, `nuke`, `status`, `logs`.

use std::io::{BufRead, IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentos_bus::provision::{STREAM_RUNS, Settings};
use agentos_bus::{Bus, ConnectOptions, ORCHESTRATOR_DURABLE};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::args::{HomeArgs, LogsArgs, NukeArgs, StatusArgs};
use crate::state::{self, State};

/// Stops the platform running from `home` and waits for it; `Ok(false)` if none was running.
fn stop(home: &Path) -> Result<bool> {
    let Some(s) = State::load(home)? else {
        return Ok(false);
    };
    state::terminate(s.up_pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    while state::alive(s.up_pid) {
        if Instant::now() > deadline {
            bail!("agentos up (pid {}) did not stop within 60 s", s.up_pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(true)
}

pub fn down(a: &HomeArgs) -> Result<()> {
    let home = a.path();
    if stop(&home)? {
        println!(
            "stopped the platform in {}; its data stays (agentos up starts it again)",
            home.display()
        );
    } else {
        println!("nothing is running from {}", home.display());
    }
    Ok(())
}

pub async fn nuke(a: &NukeArgs) -> Result<()> {
    let home = &a.home.path();
    let local = State::load(home)?;
    let remote = match (&local, &a.nats_url) {
        (None, Some(url)) if !a.force => {
            bail!("{url} is not the NATS this home started; refusing without --force")
        }
        (None, Some(url)) => Some(url.clone()),
        _ => None,
    };
    if !a.yes {
        let what = remote.as_deref().map_or_else(
            || format!("{} and all its data", home.display()),
            |u| format!("every AgentOS stream and bucket on {u}"),
        );
        println!("This deletes {what}. Type `nuke` to confirm:");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "nuke" {
            bail!("not confirmed; nothing was deleted");
        }
    }
    if let Some(url) = remote {
        let bus = Bus::connect(&ConnectOptions::new(url.clone())).await?;
        for name in bus.delete_all(&Settings::default()).await? {
            println!("deleted stream {name} on {url}");
        }
    }
    if stop(home)? {
        println!("stopped the platform");
    }
    if home.exists() {
        // The local NATS kept its streams and buckets under the home folder.
        std::fs::remove_dir_all(home).with_context(|| format!("deleting {}", home.display()))?;
        println!(
            "deleted {} (NATS data: every stream and KV bucket, logs, reports, token)",
            home.display()
        );
    } else {
        println!("{} does not exist; nothing to delete there", home.display());
    }
    Ok(())
}

pub async fn status(a: &StatusArgs) -> Result<bool> {
    let Some(s) = State::load(&a.home.path())? else {
        if let Some(fed) = crate::fed_status::FederatedHome::load(&a.home.path())? {
            return crate::fed_status::status(&fed, a.json).await;
        }
        if a.json {
            println!("{}", json!({"running": false}));
        } else {
            println!(
                "not running (no live platform in {})",
                a.home.path().display()
            );
        }
        return Ok(false);
    };
    let bus = Bus::connect(&s.connect_options("agentos-status")?).await?;
    let mut streams = Vec::new();
    for item in bus
        .check(&Settings::default())
        .await?
        .items
        .iter()
        .filter(|i| i.kind == "stream")
    {
        streams.push(bus.stream_status(&item.name).await?);
    }
    let consumer = bus
        .consumer_status(STREAM_RUNS, ORCHESTRATOR_DURABLE)
        .await
        .ok();
    let services = bus.discover(Duration::from_millis(300)).await?;
    let edge_ready = s
        .http()?
        .get(format!("{}/readyz", s.edge_url))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let peers = crate::fed_status::peers(&bus).await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "running": true, "state": s, "nats": {"url": s.nats_url, "version": bus.server_version()},
                "streams": streams, "consumers": consumer.iter().collect::<Vec<_>>(), "workers": services,
                "edge": {"url": s.edge_url, "ready": edge_ready}, "federation": {"peers": peers},
            }))?
        );
        return Ok(true);
    }
    println!(
        "NATS     {} (v{}), pid {}",
        s.nats_url,
        bus.server_version(),
        s.nats_pid
    );
    println!(
        "edge     {} {}",
        s.edge_url,
        if edge_ready { "ready" } else { "NOT READY" }
    );
    println!("\nSTREAM            MESSAGES      BYTES  CONSUMERS");
    for st in &streams {
        println!(
            "{:<16} {:>9} {:>10} {:>10}",
            st.name, st.messages, st.bytes, st.consumers
        );
    }
    if let Some(c) = &consumer {
        println!("\nCONSUMER                   PENDING  ACK-PENDING  REDELIVERED");
        println!(
            "{:<26} {:>7} {:>12} {:>12}",
            format!("{}/{}", c.stream, c.name),
            c.pending,
            c.ack_pending,
            c.redelivered
        );
    }
    println!("\nWORKER                 INSTANCE                  VERSION");
    for w in &services {
        println!("{:<22} {:<25} {}", w.name, w.id, w.version);
    }
    let bridges: Vec<_> = services
        .iter()
        .filter(|w| w.name == agentos_workers::mcp::MCP_SERVICE)
        .collect();
    if !bridges.is_empty() {
        println!("\nMCP SERVER             BRIDGE                    TOOLS");
        for w in bridges {
            let servers = w
                .metadata
                .get(agentos_workers::mcp::MCP_SERVERS_KEY)
                .map(String::as_str)
                .unwrap_or_default();
            for server in servers.split(',').filter(|s| !s.is_empty()) {
                let tools = w
                    .endpoints
                    .iter()
                    .filter(|e| e.contains(&format!(".mcp.{server}.")))
                    .count();
                let tools = if tools == 0 {
                    "none yet (not up)".to_owned()
                } else {
                    tools.to_string()
                };
                println!("{server:<22} {:<25} {tools}", w.id);
            }
        }
    }
    if let Some(peers) = &peers {
        println!("\nFEDERATION");
        crate::fed_status::print_peers(peers);
    }
    Ok(true)
}

/// `agentos validate`: one line per check; true when all pass.
pub async fn validate(a: &crate::args::ValidateArgs, explicit_config: Option<&Path>) -> bool {
    let mut ok = true;
    let mut line = |pass: bool, check: &str, detail: String| {
        ok &= pass;
        println!(
            "{} {check:<10} {detail}",
            if pass { "ok  " } else { "FAIL" }
        );
    };
    let file = match crate::config::locate(explicit_config) {
        None => {
            line(
                true,
                "config",
                "no agentos.toml; defaults, environment and flags".into(),
            );
            None
        }
        Some(p) => match crate::config::load(&p) {
            Ok(c) => {
                line(true, "config", p.display().to_string());
                // Building the route table resolves API keys (variables, files) as the model
                // worker will, so a missing one fails here and not at the worker's start.
                match crate::config::routes(&c.model) {
                    Ok(t) => line(true, "models", format!("{} routes", t.len())),
                    Err(e) => line(false, "models", format!("{e:#}")),
                }
                // Shown only when the file names MCP servers.
                match crate::config::mcp_bridge(&c.mcp) {
                    Ok(m) if m.servers.is_empty() => {}
                    Ok(m) => line(true, "mcp", format!("{} servers", m.servers.len())),
                    Err(e) => line(false, "mcp", format!("{e:#}")),
                }
                Some(c)
            }
            Err(e) => {
                line(false, "config", format!("{e:#}"));
                None
            }
        },
    };
    // A running local platform is what to check; otherwise the configured NATS.
    let home = a.home.path();
    let running = State::load(&home).ok().flatten();
    let url = running
        .as_ref()
        .map_or_else(|| a.nats.url(), |s| s.nats_url.clone());
    for (what, file, secret) in [
        ("tls ca", a.nats.tls_ca(), false),
        ("tls cert", a.nats.tls_cert(), false),
        ("tls key", a.nats.tls_key(), false),
        ("creds", a.nats.creds(), true),
    ] {
        if let Some(f) = file {
            let readable = if secret {
                crate::secret::check(&f)
            } else {
                Ok(())
            }
            .and_then(|()| Ok(std::fs::File::open(&f).map(drop)?));
            match readable {
                Ok(()) => line(true, "files", format!("{what} {} readable", f.display())),
                Err(e) => line(false, "files", format!("{what} {}: {e:#}", f.display())),
            }
        }
    }
    let opts = match &running {
        Some(s) => s.connect_options("agentos-validate"),
        None => a.nats.connect_options("agentos-validate"),
    };
    match opts {
        Err(e) => line(false, "nats", format!("{url}: {e:#}")),
        Ok(mut opts) => {
            opts.url = url.clone();
            opts.request_timeout = Some(Duration::from_secs(3));
            let settings = a.nats.settings().unwrap_or_else(|e| {
                line(false, "streams", format!("{e:#}"));
                Settings::default()
            });
            nats_checks(&opts, &settings, &url, &mut line).await;
        }
    }
    let secret = match (
        &a.jwt_secret,
        &running,
        file.and_then(|c| c.edge.jwt_secret_file()),
    ) {
        (Some(s), _, _) => Ok(Some(s.clone())),
        (None, Some(_), _) => crate::secret::read(&home.join("jwt-secret")).map(Some),
        (None, None, Some(f)) => crate::secret::read(&f)
            .map(Some)
            .context("[edge] jwt-secret-file"),
        (None, None, None) => Ok(None),
    };
    match secret.map(|s| s.map(|s| s.trim().len())) {
        Ok(Some(n)) if n >= 32 => line(true, "auth", format!("HS256 secret set ({n} bytes)")),
        Ok(Some(n)) => line(
            false,
            "auth",
            format!("HS256 secret is only {n} bytes; use at least 32"),
        ),
        Ok(None) => line(
            false,
            "auth",
            "no HS256 secret (AGENTOS_JWT_SECRET or [edge] jwt-secret-file)".into(),
        ),
        Err(e) => line(false, "auth", format!("{e:#}")),
    }
    ok
}

/// The `nats`, `jetstream` and `streams` lines of `validate`.
async fn nats_checks(
    opts: &ConnectOptions,
    settings: &Settings,
    url: &str,
    line: &mut impl FnMut(bool, &str, String),
) {
    match Bus::connect(opts).await {
        Err(e) => line(false, "nats", e.to_string()),
        Ok(bus) => {
            line(true, "nats", format!("{url} (v{})", bus.server_version()));
            match bus.jetstream_ok().await {
                Err(e) => line(false, "jetstream", e.to_string()),
                Ok(()) => {
                    line(true, "jetstream", "enabled".into());
                    match bus.check(settings).await {
                        Err(e) => line(false, "streams", e.to_string()),
                        Ok(r) if r.is_clean() => line(
                            true,
                            "streams",
                            format!("{} streams and buckets match", r.items.len()),
                        ),
                        Ok(r) => {
                            for item in r.drifted() {
                                line(
                                    false,
                                    "streams",
                                    format!("{} {}: {:?}", item.kind, item.name, item.outcome),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Renders one log line: JSON lines become `ts level component message k=v` on a terminal.
fn render(component: &str, line: &str, terminal: bool) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    if !terminal {
        let mut v = v;
        v["component"] = Value::String(component.to_owned());
        return Some(v.to_string());
    }
    let fields = v.get("fields").and_then(Value::as_object);
    let message = fields
        .and_then(|f| f.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let rest: String = fields
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "message")
        .map(|(k, v)| {
            format!(
                " {k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            )
        })
        .collect();
    Some(format!(
        "{} {:<5} {:<15} {message}{rest}",
        v.get("timestamp").and_then(Value::as_str).unwrap_or(""),
        v.get("level").and_then(Value::as_str).unwrap_or(""),
        component
    ))
}

fn timestamp_ok(line: &str, since: Option<time::OffsetDateTime>) -> bool {
    let Some(since) = since else { return true };
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| {
            v.get("timestamp")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .and_then(|t| {
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_none_or(|t| t >= since)
}

pub fn logs(a: &LogsArgs) -> Result<()> {
    let dir = a.home.path().join("logs");
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no logs in {} (has `agentos up` run with this --home?)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p.clone())))
        .filter(|(name, _)| a.component.as_deref().is_none_or(|c| name.starts_with(c)))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "no log for {:?} in {}",
            a.component.as_deref().unwrap_or("any component"),
            dir.display()
        );
    }
    let terminal = std::io::stdout().is_terminal();
    let since = a.since.map(|d| time::OffsetDateTime::now_utc() - d);
    let mut offsets = vec![0u64; files.len()];
    loop {
        for ((name, path), offset) in files.iter().zip(offsets.iter_mut()) {
            let Ok(mut f) = std::fs::File::open(path) else {
                continue;
            };
            f.seek(SeekFrom::Start(*offset))?;
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            // Only whole lines; a partial last line is read next time.
            let complete = text.rfind('\n').map_or(0, |i| i + 1);
            *offset += complete as u64;
            for line in text[..complete].lines().filter(|l| timestamp_ok(l, since)) {
                match render(name, line, terminal) {
                    Some(out) => println!("{out}"),
                    None => println!("{name:<15} {line}"),
                }
            }
        }
        if !a.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn json_log_lines_render_for_terminals_and_stay_json_otherwise() {
        let line = r#"{"timestamp":"2026-11-29T03:00:00.000000Z","level":"INFO","fields":{"message":"run submitted","run":"r1"},"target":"agentos_edge::runs"}"#;
        assert_eq!(
            render("edge", line, true).expect("rendered"),
            "2026-11-29T03:00:00.000000Z INFO  edge            run submitted run=r1"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render("edge", line, false).expect("json")).expect("valid");
        assert_eq!(json["component"], "edge");
        assert!(render("nats", "[1] plain text", true).is_none());
    }
}
