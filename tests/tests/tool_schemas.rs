//! Tool declarations end to end (real nats-server, real binary): the model is shown a tool's
//! description and JSON Schema, arguments that miss the schema fail the call with
//! `invalid_arguments` and the model sees why at its next step, and a tool nobody serves is
//! accepted with a warning and fails its call with `tool_unavailable`.

use std::time::Duration;

use agentos_e2e::upstream::start_upstream;
use agentos_e2e::{Options, Platform, SseEvent};
use serde_json::{Value, json};

fn routes(addr: std::net::SocketAddr, key_file: &std::path::Path) -> String {
    let mut out = String::new();
    for (name, upstream) in [("up", "model"), ("up-bad", "model+bad-args")] {
        out.push_str(&format!(
            "[model.routes.{name}]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"{upstream}\"\napi-key-file = \"{}\"\n\n",
            key_file.display()
        ));
    }
    out
}

/// The `data` of each event of type `kind`.
fn of_type<'a>(events: &'a [SseEvent], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e.event == kind)
        .map(|e| &e.data["data"])
        .collect()
}

/// The function the upstream was shown for `name` (aliased `math.eval` → `math_eval`).
fn shown<'a>(request: &'a Value, name: &str) -> &'a Value {
    request["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["function"]["name"] == name))
        .map(|t| &t["function"])
        .unwrap_or_else(|| panic!("no tool {name} in {request}"))
}

#[tokio::test]
async fn models_see_declared_schemas_and_invalid_arguments_come_back_to_them() {
    let (addr, up, _server) = start_upstream().await;
    let key = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(key.path(), "sk-test-key\n").expect("write key");
    let p = Platform::start(Options {
        config: Some(routes(addr, key.path())),
        ..Options::default()
    })
    .await
    .expect("platform");

    // GET /v1/tools lists the tool worker's declarations, schemas included.
    let (status, tools) = p.get("/v1/tools").await.expect("tools");
    assert_eq!(status, 200, "{tools}");
    let math = tools["data"]
        .as_array()
        .and_then(|d| d.iter().find(|t| t["name"] == "math.eval"))
        .cloned()
        .unwrap_or_else(|| panic!("math.eval missing from {tools}"));
    assert_eq!(math["parameters"]["required"], json!(["expr"]));
    assert!(math["timeout_ms"].as_u64().is_some_and(|t| t > 0), "{math}");

    // 1. The model request carries math.eval's description and schema.
    p.create_agent(json!({"id": "calc", "model": "up", "tools": ["math.eval"]}))
        .await
        .expect("agent");
    let run = p.start_run("calc", "what is 6*7?").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    let requests = up.requests();
    let function = shown(&requests[0], "math_eval");
    assert_eq!(function["description"], math["description"]);
    assert_eq!(function["parameters"], math["parameters"]);
    assert_eq!(
        function["parameters"]["properties"]["expr"]["type"],
        "string"
    );
    let events = p.events(&run, None).await.expect("events");
    assert_eq!(
        of_type(&events, "tool.completed")[0]["output"],
        json!({"value": 42.0})
    );

    // 2. Arguments outside the schema: tool.failed / invalid_arguments before the call starts,
    //    the run goes on, the model's next request holds the validator's message, and the
    //    corrected call runs.
    let before = up.requests().len();
    p.create_agent(json!({"id": "fixer", "model": "up-bad", "tools": ["math.eval"]}))
        .await
        .expect("agent");
    let run = p.start_run("fixer", "what is 6*7?").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    let events = p.events(&run, None).await.expect("events");
    let failed = of_type(&events, "tool.failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["error"]["code"], "invalid_arguments");
    let message = failed[0]["error"]["message"].as_str().expect("message");
    assert!(message.contains("arguments/expr"), "{message}");
    assert!(message.contains("string"), "{message}");
    // Refused before it started: the only tool.started is the corrected call's, which ran.
    let started = of_type(&events, "tool.started");
    assert_eq!(started.len(), 1, "{events:#?}");
    assert_eq!(started[0]["step"], 2);
    assert_eq!(started[0]["arguments"], json!({"expr": "6*7"}));
    assert_eq!(
        of_type(&events, "tool.completed")[0]["output"],
        json!({"value": 42.0})
    );
    let requests = up.requests();
    let second = &requests[before + 1];
    let tool_message = second["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool"))
        .unwrap_or_else(|| panic!("no tool message in {second}"));
    let content: Value =
        serde_json::from_str(tool_message["content"].as_str().expect("content")).expect("json");
    assert_eq!(content["error"]["code"], "invalid_arguments", "{content}");
    assert_eq!(content["error"]["message"], message, "{content}");
}

#[tokio::test]
async fn an_unserved_tool_is_accepted_with_a_warning_and_its_call_fails_tool_unavailable() {
    let p = Platform::start(Options::default()).await.expect("platform");
    let (status, agent) = p
        .post(
            "/v1/agents",
            &json!({
                "id": "early", "model": "scripted", "tools": ["math.eval", "ghost.tool"],
                "model_config": {"script": [
                    {"tool_calls": [{"name": "ghost.tool", "arguments": {"x": 1}}]},
                    {"text": "carried on"}
                ]}
            }),
        )
        .await
        .expect("agent");
    assert_eq!(status, 201, "{agent}");
    assert_eq!(
        agent["warnings"],
        json!([{"code": "tool_unavailable", "tool": "ghost.tool",
            "message": agent["warnings"][0]["message"]}])
    );
    assert!(
        agent["warnings"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ghost.tool")),
        "{agent}"
    );

    let run = p.start_run("early", "go").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "carried on");
    let events = p.events(&run, None).await.expect("events");
    let failed = of_type(&events, "tool.failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["error"]["code"], "tool_unavailable");
    assert_eq!(failed[0]["name"], "ghost.tool");
}
