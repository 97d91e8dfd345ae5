//! A tool worker written in Python (examples/python-tool) serves a tool in an agent run, beside
//! the Rust workers.

use std::process::{Command, Stdio};
use std::time::Duration;

use agentos_bus::envelope::{Envelope, ToolReply, ToolRequest};
use agentos_bus::{CallMeta, Error};
use agentos_e2e::{Options, Platform, Proc, eventually};
use serde_json::json;

#[tokio::test]
async fn a_python_tool_worker_serves_an_agent_run() {
    let p = Platform::start(Options::default()).await.expect("platform");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python-tool/worker.py"
    );
    let _worker = Proc::new(
        "python3",
        Command::new("python3")
            .arg(script)
            .env("AGENTOS_NATS_URL", p.nats.url())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 (see tests/requirements.txt for nats-py)"),
    );
    let tenant: agentos_bus::id::Tenant = "acme".parse().expect("tenant");
    let request = ToolRequest {
        tool: "py.upper".parse().expect("tool"),
        arguments: json!({"text": "ping"}),
        run_id: None,
        step: 0,
        call_id: None,
        idempotency_key: None,
        timeout_ms: 1000,
        first_attempt: false,
        memory_namespaces: Vec::new(),
    };
    let reply = eventually(
        "the python worker to answer",
        Duration::from_secs(60),
        || async {
            let mut replies = p
                .bus
                .call(
                    agentos_e2e::subject("agentos.tool.acme.py.upper"),
                    &CallMeta::new(tenant.clone()),
                    request.encode(),
                )
                .await
                .ok()?;
            match replies.next(Duration::from_secs(2)).await {
                Ok(r) => ToolReply::decode(r.schema.as_deref(), &r.payload).ok(),
                Err(Error::NoResponders { .. } | Error::TimedOut { .. }) => None,
                Err(e) => panic!("{e}"),
            }
        },
    )
    .await
    .expect("python worker up");
    assert_eq!(
        reply,
        ToolReply::Ok {
            output: json!({"text": "PING"})
        }
    );

    p.create_agent(json!({
        "id": "shout", "model": "scripted", "tools": ["py.upper"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "py.upper", "arguments": {"text": "hello from rust"}}]},
            {"text": "done"}
        ]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("shout", "go").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    let events = p.events(&run, None).await.expect("events");
    let output = events
        .iter()
        .find(|e| e.event == "tool.completed")
        .expect("tool.completed");
    assert_eq!(output.data["data"]["output"]["text"], "HELLO FROM RUST");
}
