//! The OpenAI-compatible API: the `openai` backend against a real HTTP upstream started here
//! (streaming passthrough, retry before the first token, timeouts, a stream cut short), agent
//! runs on an upstream model, and the official `openai` Python SDK against the edge.

use std::sync::atomic::Ordering;
use std::time::Duration;

use agentos_e2e::upstream::start_upstream;
use agentos_e2e::{Options, Platform, eventually};
use serde_json::{Value, json};

fn routes(addr: std::net::SocketAddr, key_file: &std::path::Path) -> String {
    let mut out = String::new();
    for (name, upstream, extra) in [
        ("up-ok", "ok", ""),
        ("up-flaky", "flaky", ""),
        ("up-hang", "hang", "timeout = \"1s\"\nmax-retries = 0\n"),
        ("up-cut", "cut", ""),
        ("up-tools", "tools", ""),
    ] {
        out.push_str(&format!(
            "[model.routes.{name}]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"{upstream}\"\napi-key-file = \"{}\"\n{extra}\n",
            key_file.display()
        ));
    }
    out
}

async fn complete(p: &Platform, body: Value) -> (u16, String) {
    let r = p
        .req(reqwest::Method::POST, "/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let text = tokio::time::timeout(Duration::from_secs(30), r.text())
        .await
        .expect("no hang")
        .expect("body");
    (status, text)
}

fn streamed_text(sse_body: &str) -> (String, Vec<Value>, bool) {
    let mut text = String::new();
    let mut chunks = Vec::new();
    let mut done = false;
    for line in sse_body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("json chunk");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        chunks.push(v);
    }
    (text, chunks, done)
}

#[tokio::test]
async fn the_openai_backend_streams_retries_times_out_and_reports_cut_streams() {
    let (addr, up, _server) = start_upstream().await;
    let key = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(key.path(), "sk-test-key\n").expect("write key");
    let p = Platform::start(Options {
        config: Some(routes(addr, key.path())),
        ..Options::default()
    })
    .await
    .expect("platform");
    let user = json!([{"role": "user", "content": "hi"}]);

    // Streaming passthrough, usage included, [DONE] at the end.
    let (status, body) = complete(&p, json!({"model": "up-ok", "messages": user, "stream": true, "stream_options": {"include_usage": true}})).await;
    assert_eq!(status, 200, "{body}");
    let (text, chunks, done) = streamed_text(&body);
    assert_eq!(text, "Hello from upstream");
    assert!(done);
    assert_eq!(
        chunks.last().expect("usage chunk")["usage"]["total_tokens"],
        10
    );
    assert!(
        up.auth
            .lock()
            .expect("lock")
            .iter()
            .all(|a| a == "Bearer sk-test-key")
    );

    // An upstream 500 is retried before the first token.
    let before = up.hits.load(Ordering::SeqCst);
    let (status, body) = complete(&p, json!({"model": "up-flaky", "messages": user})).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from upstream");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        up.hits.load(Ordering::SeqCst) - before,
        2,
        "one failure, one retry"
    );

    // A hanging upstream times out with a clear error.
    let (status, body) = complete(&p, json!({"model": "up-hang", "messages": user})).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream_timeout"), "{body}");

    // A stream cut short: an error, no hang — as an HTTP error before output, in-band after.
    let (status, body) = complete(&p, json!({"model": "up-cut", "messages": user})).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_stream_interrupted"), "{body}");
    let (status, body) = complete(
        &p,
        json!({"model": "up-cut", "messages": user, "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    let (text, chunks, done) = streamed_text(&body);
    assert_eq!(text, "Hel");
    assert!(!done);
    assert_eq!(
        chunks.last().expect("error event")["error"]["code"],
        "upstream_stream_interrupted"
    );

    // Streamed tool-call deltas pass through; the plain answer assembles them.
    let (status, body) = complete(
        &p,
        json!({"model": "up-tools", "messages": user, "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, chunks, _) = streamed_text(&body);
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"expr\": \"6*7\"}");
    let (_, body) = complete(&p, json!({"model": "up-tools", "messages": user})).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(
        (call["id"].as_str(), call["function"]["name"].as_str()),
        (Some("call_Up1"), Some("math_eval"))
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    // An agent run on an upstream model, through the same model path.
    p.create_agent(json!({"id": "relay", "model": "up-ok"}))
        .await
        .expect("agent");
    let run = p.start_run("relay", "hi").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(
        (done["status"].as_str(), done["output"].as_str()),
        (Some("completed"), Some("Hello from upstream")),
        "{done}"
    );
    let events = p.events(&run, None).await.expect("events");
    assert!(events.iter().filter(|e| e.event == "model.delta").count() >= 3);
}

#[tokio::test]
async fn the_official_openai_python_sdk_works_against_the_edge() {
    let config = r#"
[model.routes.scripted-tools]
backend = "scripted"
max-tokens = 512
model-config = { script = [
    { tool_calls = [{ name = "get_weather", arguments = { city = "Paris" } }] },
    { text = "It is sunny in Paris." },
] }
"#;
    let p = Platform::start(Options {
        config: Some(config.into()),
        ..Options::default()
    })
    .await
    .expect("platform");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/openai_sdk.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("AGENTOS_BASE_URL", p.url("/v1"))
        .env("AGENTOS_TOKEN", &p.token)
        .output()
        .await
        .expect("python3 with the openai package (tests/requirements.txt)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all openai SDK checks passed"), "{text}");
}

#[tokio::test]
async fn the_model_route_table_reloads_without_a_restart() {
    let p = Platform::start(Options {
        config: Some("[model.routes.alpha]\nbackend = \"scripted\"\n".into()),
        ..Options::default()
    })
    .await
    .expect("platform");
    let ids = |v: &Value| {
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let (_, models) = p.get("/v1/models").await.expect("models");
    assert_eq!(ids(&models), vec!["alpha", "scripted"]);
    let path = p.config_path().expect("config file").to_owned();
    std::fs::write(&path, "[model.routes.alpha]\nbackend = \"scripted\"\n[model.routes.beta]\nbackend = \"scripted\"\n").expect("rewrite");
    eventually("beta to be served", Duration::from_secs(30), || async {
        let (_, models) = p.get("/v1/models").await.ok()?;
        ids(&models).contains(&"beta".to_owned()).then_some(())
    })
    .await
    .expect("reloaded");
    let (status, body) = complete(
        &p,
        json!({"model": "beta", "messages": [{"role": "user", "content": "still here"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn model_workers_with_different_route_tables_serve_side_by_side() {
    let mut p = Platform::start(Options {
        config: Some("[model.routes.alpha]\nbackend = \"scripted\"\n".into()),
        ..Options::default()
    })
    .await
    .expect("platform");
    // A second model pool with a table of its own (think: a GPU box serving a local model).
    let mut beta = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("config");
    std::io::Write::write_all(&mut beta, b"[model.routes.beta]\nbackend = \"scripted\"\n")
        .expect("write");
    let beta_path = beta.path().display().to_string();
    p.spawn_with_env(
        "model-beta",
        &["worker", "model"],
        &[("AGENTOS_CONFIG", &beta_path)],
    )
    .expect("second model worker");
    eventually("both tables listed", Duration::from_secs(30), || async {
        let (_, models) = p.get("/v1/models").await.ok()?;
        let ids: Vec<&str> = models["data"]
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        (ids == ["alpha", "beta", "scripted"]).then_some(())
    })
    .await
    .expect("/v1/models merges every worker's models");

    // Every call reaches a worker that serves its model: none is answered model_not_found by
    // the other pool.
    for i in 0..20 {
        for model in ["alpha", "beta"] {
            let (status, body) = complete(
                &p,
                json!({"model": model, "messages": [{"role": "user", "content": format!("call {i}")}]}),
            )
            .await;
            assert_eq!(status, 200, "{model} call {i}: {body}");
        }
    }
    let (status, body) = complete(
        &p,
        json!({"model": "gamma", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("model_not_found"), "{body}");

    // No model worker at all: 503 model_unavailable.
    for proc in p.procs.iter_mut().filter(|p| p.name.starts_with("model")) {
        proc.kill();
    }
    // Until NATS has seen the workers' connections close, a request can still be routed to one
    // of them and then waits out the reply timeout: call once discovery finds no model worker.
    eventually(
        "no model worker discovered",
        Duration::from_secs(30),
        || async {
            let (status, models) = p.get("/v1/models").await.ok()?;
            let none = status == 503 || models["data"].as_array().is_some_and(Vec::is_empty);
            none.then_some(())
        },
    )
    .await
    .expect("the killed workers are gone");
    eventually("model_unavailable", Duration::from_secs(30), || async {
        let (status, body) = complete(
            &p,
            json!({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        (status == 503 && body.contains("model_unavailable")).then_some(())
    })
    .await
    .expect("503 without model workers");
}

#[tokio::test]
async fn a_model_worker_in_python_serves_beside_the_rust_one() {
    let p = Platform::start(Options::default()).await.expect("platform");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python-model/worker.py"
    );
    let _worker = agentos_e2e::Proc::new(
        "python-model",
        std::process::Command::new("python3")
            .arg(script)
            .env("AGENTOS_NATS_URL", p.nats.url())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 (see tests/requirements.txt for nats-py)"),
    );
    let models = eventually("py.reverse listed", Duration::from_secs(60), || async {
        let (_, models) = p.get("/v1/models").await.ok()?;
        let listed = models["data"]
            .as_array()?
            .iter()
            .any(|m| m["id"] == "py.reverse");
        listed.then_some(models)
    })
    .await
    .expect("the python worker registers");
    let owned_by: Vec<(&str, &str)> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["id"].as_str()?, m["owned_by"].as_str()?)))
        .collect();
    assert_eq!(
        owned_by,
        vec![
            ("py.reverse", "agentos:python"),
            ("scripted", "agentos:scripted")
        ]
    );
    for (model, want) in [("py.reverse", "olleh"), ("scripted", "hello")] {
        let (status, body) = complete(
            &p,
            json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v["choices"][0]["message"]["content"], want,
            "{model}: {body}"
        );
    }
    // An agent run on the Python model, streamed through the journal.
    p.create_agent(json!({"id": "rev", "model": "py.reverse"}))
        .await
        .expect("agent");
    let run = p.start_run("rev", "abc def").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(30))
        .await
        .expect("terminal");
    assert_eq!(
        (done["status"].as_str(), done["output"].as_str()),
        (Some("completed"), Some("fed cba")),
        "{done}"
    );
}
