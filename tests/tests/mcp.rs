//! The MCP bridge end to end: a real Python MCP server (PyPI `mcp`, `tests/fixtures/mcp_server.py`,
//! stdio) bridged by `agentos worker mcp` beside the Rust workers, against a real nats-server.
//! An agent calls its tools and sees progress on SSE; a cancel reaches the MCP call; a server
//! killed mid-call fails that call clearly and is started again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentos_bus::envelope::{Envelope, ToolReply, ToolRequest};
use agentos_bus::id::{Tenant, ToolName};
use agentos_bus::{CallMeta, ServiceInstance, subject};
use agentos_e2e::{Options, Platform, Proc, SseEvent, eventually, free_port};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// A platform with one MCP bridge for the fixture server, whose markers go to the returned
/// folder.
async fn platform() -> (Platform, tempfile::TempDir) {
    let markers = tempfile::tempdir().expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mcp_server.py");
    let config = format!(
        "[mcp]\ncall-timeout = \"120s\"\n\n[mcp.servers.fixture]\ncommand = \"python3\"\nargs = [{script:?}]\nenv = {{ MCP_FIXTURE_DIR = {:?} }}\n",
        markers.path().display().to_string()
    );
    let mut p = Platform::start(Options {
        config: Some(config),
        ..Options::default()
    })
    .await
    .expect("platform");
    p.spawn("mcp", &["worker", "mcp"]).expect("mcp bridge");
    bridged(&p, "mcp.fixture.count").await;
    (p, markers)
}

/// Waits until a bridge serves `tool`; returns the bridge's service instance.
async fn bridged(p: &Platform, tool: &str) -> ServiceInstance {
    eventually(&format!("the bridge to serve {tool}"), LONG, || async {
        let found = p.bus.discover(Duration::from_millis(250)).await.ok()?;
        found.into_iter().find(|s| {
            s.name == "agentos-mcp" && s.endpoints.iter().any(|e| e.ends_with(&format!(".{tool}")))
        })
    })
    .await
    .expect("bridged (see tests/requirements.txt for the mcp package)")
}

/// One direct call of a bridged tool over the bus: its final reply.
async fn call(p: &Platform, tool: &str, arguments: Value) -> ToolReply {
    call_with_progress(p, tool, arguments).await.1
}

/// One direct call of a bridged tool over the bus: its progress replies and its final reply.
async fn call_with_progress(
    p: &Platform,
    tool: &str,
    arguments: Value,
) -> (Vec<ToolReply>, ToolReply) {
    let tenant: Tenant = "acme".parse().expect("tenant");
    let tool: ToolName = tool.parse().expect("tool");
    let request = ToolRequest {
        tool: tool.clone(),
        arguments,
        run_id: None,
        step: 0,
        call_id: None,
        idempotency_key: None,
        timeout_ms: 10_000,
        first_attempt: false,
        memory_namespaces: Vec::new(),
    };
    let mut replies = p
        .bus
        .call(
            subject::tool(&tenant, &tool),
            &CallMeta::new(tenant),
            request.encode(),
        )
        .await
        .expect("call");
    let mut progress = Vec::new();
    loop {
        let r = replies.next(Duration::from_secs(15)).await.expect("reply");
        let reply = ToolReply::decode(r.schema.as_deref(), &r.payload).expect("tool reply");
        if reply.is_final() {
            return (progress, reply);
        }
        progress.push(reply);
    }
}

fn marker(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

async fn journal_has(p: &Platform, run: &str, event: &str) -> bool {
    let (Ok(tenant), Ok(run)) = ("acme".parse(), run.parse()) else {
        return false;
    };
    p.bus
        .read_journal(&tenant, &run)
        .await
        .is_ok_and(|j| j.iter().any(|s| s.event.type_name() == event))
}

fn of_type<'a>(events: &'a [SseEvent], t: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e.event == t)
        .map(|e| &e.data["data"])
        .collect()
}

#[tokio::test]
async fn an_agent_calls_two_mcp_tools_and_sees_the_slow_ones_progress_on_sse() {
    let (p, _markers) = platform().await;
    // Each tool is an endpoint with its own definition in the metadata.
    let bridge = bridged(&p, "mcp.fixture.add").await;
    let meta = bridge
        .endpoint_metadata
        .get("agentos.tool.*.mcp.fixture.add")
        .expect("endpoint metadata");
    assert_eq!(meta["description"], "Adds two integers.");
    assert_eq!(meta["idempotent"], "true");
    assert_eq!(meta["timeout_ms"], "120000");
    let schema: Value = serde_json::from_str(&meta["parameters"]).expect("schema JSON");
    assert_eq!(schema["required"], json!(["a", "b"]));
    assert_eq!(bridge.metadata["mcp_servers"], "fixture");
    let spec: Value = serde_json::from_str(&meta["agentos.tool"]).expect("tool spec JSON");
    assert_eq!(
        (&spec["name"], &spec["parameters"], &spec["timeout_ms"]),
        (&json!("mcp.fixture.add"), &schema, &json!(120_000))
    );

    p.create_agent(json!({
        "id": "mcp-user", "model": "scripted",
        "tools": ["mcp.fixture.add", "mcp.fixture.count"],
        "model_config": {"script": [
            {"tool_calls": [
                {"name": "mcp.fixture.add", "arguments": {"a": 2, "b": 3}},
                {"name": "mcp.fixture.count", "arguments": {"steps": 3, "delay_s": 0.15}}
            ]},
            {"text": "done"}
        ]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("mcp-user", "go").await.expect("run");
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");

    let events = p.events(&run, None).await.expect("SSE");
    let completed = of_type(&events, "tool.completed");
    assert_eq!(completed.len(), 2, "{events:#?}");
    assert_eq!(completed[0]["name"], "mcp.fixture.add");
    assert_eq!(completed[0]["output"], json!({"result": 5}));
    assert_eq!(completed[1]["output"], json!({"result": "counted to 3"}));
    // Three notifications, 150 ms apart; the bridge sends at most ten a second, the latest
    // winning, so a slow machine may see two merged; one that reaches the bridge after the
    // result (the last, at times) is dropped.
    let progress = of_type(&events, "tool.progress");
    assert!((1..=3).contains(&progress.len()), "{events:#?}");
    let mut last = 0.0;
    for e in &progress {
        assert_eq!(e["name"], "mcp.fixture.count");
        assert_eq!(e["step"], 1);
        assert_eq!(e["total"], json!(3.0));
        let n = e["progress"].as_f64().expect("progress");
        assert!(n > last, "{progress:?}");
        assert_eq!(e["message"], format!("step {n} of 3"));
        last = n;
    }
    assert!(last >= 2.0, "{progress:?}");
    // Progress comes between its call's start and its result.
    let position = |pred: &dyn Fn(&SseEvent) -> bool| events.iter().position(pred);
    let started =
        position(&|e| e.event == "tool.started" && e.data["data"]["name"] == "mcp.fixture.count");
    let first = position(&|e| e.event == "tool.progress");
    let result =
        position(&|e| e.event == "tool.completed" && e.data["data"]["name"] == "mcp.fixture.count");
    assert!(started < first && first < result, "{events:#?}");

    // A server that announces tools/list_changed gets its new tool bridged.
    assert_eq!(
        call(&p, "mcp.fixture.grow", json!({})).await,
        ToolReply::Ok {
            output: json!({"result": "grown"})
        }
    );
    bridged(&p, "mcp.fixture.extra").await;
    assert_eq!(
        call(&p, "mcp.fixture.extra", json!({})).await,
        ToolReply::Ok {
            output: json!({"result": "extra"})
        }
    );
}

#[tokio::test]
async fn cancelling_a_run_cancels_its_mcp_call() {
    let (p, markers) = platform().await;
    p.create_agent(json!({
        "id": "counter", "model": "scripted", "tools": ["mcp.fixture.count"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "mcp.fixture.count", "arguments": {"steps": 10000, "delay_s": 0.05}}]},
            {"text": "never"}
        ]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("counter", "count").await.expect("run");
    eventually("progress of the slow call", LONG, || async {
        journal_has(&p, &run, "tool.progress").await.then_some(())
    })
    .await
    .expect("progress");
    let (status, v) = p
        .post(&format!("/v1/runs/{run}/cancel"), &json!({}))
        .await
        .expect("cancel");
    assert_eq!(status, 202, "{v}");
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "cancelled", "{done}");
    // The MCP server saw notifications/cancelled for the call.
    eventually("the server to see the cancel", LONG, || async {
        marker(markers.path(), "cancelled").exists().then_some(())
    })
    .await
    .expect("cancelled marker");
}

#[tokio::test]
async fn a_killed_mcp_server_fails_the_call_in_flight_and_is_restarted() {
    let (p, markers) = platform().await;
    p.create_agent(json!({
        "id": "doomed", "model": "scripted", "tools": ["mcp.fixture.count"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "mcp.fixture.count", "arguments": {"steps": 10000, "delay_s": 0.05}}]},
            {"text": "carried on"}
        ]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("doomed", "count").await.expect("run");
    eventually("progress of the slow call", LONG, || async {
        journal_has(&p, &run, "tool.progress").await.then_some(())
    })
    .await
    .expect("progress");
    let pid = std::fs::read_to_string(marker(markers.path(), "pid")).expect("pid");
    // The next start waits until `hold` is gone: calls meanwhile see the outage.
    std::fs::write(marker(markers.path(), "hold"), "").expect("hold");
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success());

    // The call in flight fails clearly; the model sees it and the run goes on.
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    let events = p.events(&run, None).await.expect("SSE");
    let failed = of_type(&events, "tool.failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["error"]["code"], "mcp_server_died", "{events:#?}");
    assert!(
        failed[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("went away during the call")),
        "{events:#?}"
    );

    // The bridge starts the server again; until it serves, calls fail at once, retryably.
    let restarted = eventually("the server to be started again", LONG, || async {
        let now = std::fs::read_to_string(marker(markers.path(), "pid")).ok()?;
        (now.trim() != pid.trim() && !now.is_empty()).then_some(now)
    })
    .await
    .expect("restarted");
    match call(&p, "mcp.fixture.add", json!({"a": 1, "b": 1})).await {
        ToolReply::Error { error, retryable } => {
            assert_eq!(error.code, "mcp_server_unavailable", "{error:?}");
            assert!(retryable);
        }
        other => panic!("expected mcp_server_unavailable, got {other:?}"),
    }
    std::fs::remove_file(marker(markers.path(), "hold")).expect("release");
    let reply = eventually("a call after the restart", LONG, || async {
        match call(&p, "mcp.fixture.add", json!({"a": 20, "b": 22})).await {
            ToolReply::Ok { output } => Some(output),
            _ => None,
        }
    })
    .await
    .expect("served again");
    assert_eq!(reply, json!({"result": 42}));
    let starts = std::fs::read_to_string(marker(markers.path(), "starts")).expect("starts");
    assert_eq!(starts.lines().count(), 2, "{starts}");
    assert_eq!(starts.lines().last(), Some(restarted.trim()));
}

#[tokio::test]
async fn a_streamable_http_mcp_server_is_bridged_too() {
    let markers = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mcp_server.py");
    let _server = Proc::new(
        "mcp-http",
        Command::new("python3")
            .arg(script)
            .env("MCP_FIXTURE_DIR", markers.path())
            .env("MCP_FIXTURE_HTTP_PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let config = format!("[mcp.servers.web]\nurl = \"http://127.0.0.1:{port}/mcp\"\n");
    let mut p = Platform::start(Options {
        config: Some(config),
        ..Options::default()
    })
    .await
    .expect("platform");
    // The bridge may start before the server listens: it retries with backoff.
    p.spawn("mcp", &["worker", "mcp"]).expect("mcp bridge");
    bridged(&p, "mcp.web.count").await;
    assert_eq!(
        call(&p, "mcp.web.add", json!({"a": 40, "b": 2})).await,
        ToolReply::Ok {
            output: json!({"result": 42})
        }
    );
    let (progress, done) =
        call_with_progress(&p, "mcp.web.count", json!({"steps": 2, "delay_s": 0.15})).await;
    assert_eq!(
        done,
        ToolReply::Ok {
            output: json!({"result": "counted to 2"})
        }
    );
    assert_eq!(
        progress.first(),
        Some(&ToolReply::Progress {
            progress: 1.0,
            total: Some(2.0),
            message: Some("step 1 of 2".into())
        }),
        "{progress:?}"
    );
}

/// `agentos` with `args`, reading `config`, in the home `home`.
fn agentos(home: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(agentos_e2e::agentos_bin().expect("binary"))
        .args(args)
        .arg("--home")
        .arg(home)
        .env("AGENTOS_CONFIG", config)
        .env_remove("AGENTOS_NATS_URL")
        .output()
        .expect("run agentos")
}

fn component_pid(home: &Path, name: &str) -> Option<u64> {
    let state: Value =
        serde_json::from_slice(&std::fs::read(home.join("state.json")).ok()?).ok()?;
    state["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)?["pid"]
        .as_u64()
}

#[tokio::test]
async fn up_runs_a_bridge_for_the_configured_servers_and_status_shows_them() {
    let dir = tempfile::tempdir().expect("temp");
    let (home, markers) = (dir.path().join("home"), dir.path().join("markers"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mcp_server.py");
    let config = dir.path().join("agentos.toml");
    std::fs::write(
        &config,
        format!(
            "[mcp.servers.fixture]\ncommand = \"python3\"\nargs = [{script:?}]\nenv = {{ MCP_FIXTURE_DIR = {:?} }}\n",
            markers.display().to_string()
        ),
    )
    .expect("config");
    let (nats, edge) = (free_port().expect("port"), free_port().expect("port"));
    let out = agentos(
        &home,
        &config,
        &[
            "up",
            "--detach",
            "--nats-port",
            &nats.to_string(),
            "--listen",
            &format!("127.0.0.1:{edge}"),
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mcp-1"));
    let shows_up = || async {
        let out = agentos(&home, &config, &["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .any(|l| l.starts_with("fixture") && l.ends_with(" 3"))
            .then_some(text)
    };
    let status = eventually("status to show the MCP server up", LONG, shows_up)
        .await
        .expect("status");
    assert!(status.contains("agentos-mcp"), "{status}");

    // The bridge is supervised like the other components.
    let victim = component_pid(&home, "mcp-1").expect("mcp-1 pid");
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill");
    eventually("mcp-1 restarted", LONG, || async {
        component_pid(&home, "mcp-1").filter(|pid| *pid != victim)
    })
    .await
    .expect("restarted");
    eventually("the restarted bridge to serve again", LONG, shows_up)
        .await
        .expect("status after restart");

    let out = agentos(&home, &config, &["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
