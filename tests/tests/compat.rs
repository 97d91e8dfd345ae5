//! Real upstreams' quirks, one regression test per finding of issue 11: the `openai` backend
//! against the fake upstream's `model` behaviour with quirks switched on per route
//! (`tests/src/upstream.rs`), through the edge's chat API and agent runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use agentos_e2e::upstream::{Upstream, start_upstream};
use agentos_e2e::{Options, Platform};
use serde_json::{Value, json};

/// One route per `(public name, upstream model, extra keys)`.
fn routes(addr: std::net::SocketAddr, routes: &[(&str, &str, &str)]) -> String {
    routes
        .iter()
        .map(|(name, model, extra)| {
            format!(
                "[model.routes.{name}]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"{model}\"\n{extra}\n"
            )
        })
        .collect()
}

async fn platform(
    routes_: &[(&str, &str, &str)],
) -> (
    Platform,
    std::sync::Arc<Upstream>,
    tokio::task::JoinHandle<()>,
) {
    let (addr, up, task) = start_upstream().await;
    let p = Platform::start(Options {
        config: Some(routes(addr, routes_)),
        ..Options::default()
    })
    .await
    .expect("platform");
    (p, up, task)
}

async fn complete(p: &Platform, body: Value) -> (u16, Value, String) {
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
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

/// The chunks of an SSE body and whether it ended with `[DONE]`.
fn chunks(sse: &str) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
        } else {
            out.push(serde_json::from_str(data).expect("json chunk"));
        }
    }
    (out, done)
}

/// A streamed tool call assembled the way the SDKs do: every string fragment appended.
fn assembled_call(chunks: &[Value]) -> (String, String, String) {
    let (mut id, mut name, mut args) = (String::new(), String::new(), String::new());
    for c in chunks {
        for tc in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            id.push_str(tc["id"].as_str().unwrap_or(""));
            name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
            args.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    (id, name, args)
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "weather in Paris?"}], "tools": weather_tools()})
}

// 1. An upstream that repeats `function.name` (and the id) in every tool-call delta.
#[tokio::test]
async fn tool_names_repeated_in_every_delta_are_not_doubled() {
    let (p, _up, _t) = platform(&[("m", "model+repeat-name", "")]).await;
    let (status, v, text) = complete(&p, ask("m")).await;
    assert_eq!(status, 200, "{text}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{text}");
    assert_eq!(call["id"], "call_m1", "{text}");
    let mut streamed = ask("m");
    streamed["stream"] = json!(true);
    let (status, _, text) = complete(&p, streamed).await;
    assert_eq!(status, 200, "{text}");
    let (chunks, done) = chunks(&text);
    assert!(done, "{text}");
    let (id, name, args) = assembled_call(&chunks);
    assert_eq!((id.as_str(), name.as_str()), ("call_m1", "get_weather"));
    assert_eq!(
        serde_json::from_str::<Value>(&args).expect("args"),
        json!({"city": "Paris"})
    );
}

// 2. Tool call ids longer than 64 characters (llama-cpp-python: `call__0_<name>_cmpl-<uuid>`).
#[tokio::test]
async fn long_tool_call_ids_are_accepted_both_ways() {
    let (p, _up, _t) = platform(&[("m", "model+long-ids", "")]).await;
    let (status, v, text) = complete(&p, ask("m")).await;
    assert_eq!(status, 200, "{text}");
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["id"].as_str().map(str::len), Some(100), "{text}");
    // The client sends the id back on the next turn.
    let mut next = ask("m");
    next["messages"] = json!([
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call.clone()]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
    ]);
    let (status, v, text) = complete(&p, next).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The tool said: sunny"
    );
    let mut streamed = ask("m");
    streamed["stream"] = json!(true);
    let (status, _, text) = complete(&p, streamed).await;
    assert_eq!(status, 200, "{text}");
    let (chunks, done) = chunks(&text);
    assert!(done, "an in-band error instead of [DONE]: {text}");
    assert_eq!(assembled_call(&chunks).0.len(), 100);
}

// 3. No usage chunk: usage is counted and marked estimated, never reported as zero.
#[tokio::test]
async fn usage_is_estimated_and_marked_when_the_upstream_sends_none() {
    let (p, _up, _t) = platform(&[("m", "model+no-usage", "")]).await;
    let hello = json!([{"role": "user", "content": "say hello to everyone in the room"}]);
    let (status, v, text) = complete(&p, json!({"model": "m", "messages": hello})).await;
    assert_eq!(status, 200, "{text}");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64() > Some(0), "{text}");
    assert!(u["completion_tokens"].as_u64() > Some(0), "{text}");
    assert_eq!(u["estimated"], true, "{text}");
    let (status, _, text) = complete(
        &p,
        json!({"model": "m", "messages": hello, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (chunks, _) = chunks(&text);
    let u = &chunks.last().expect("usage chunk")["usage"];
    assert!(u["total_tokens"].as_u64() > Some(0), "{text}");
    assert_eq!(u["estimated"], true, "{text}");
    // Real figures are not marked.
    let (p2, _up2, _t2) = platform(&[("m", "model", "")]).await;
    let (_, v, text) = complete(&p2, json!({"model": "m", "messages": hello})).await;
    assert!(v["usage"]["total_tokens"].as_u64() > Some(0), "{text}");
    assert!(v["usage"].get("estimated").is_none(), "{text}");
}

// 4. The route's cap holds when the client sends `max_completion_tokens` to an upstream that
// only reads `max_tokens`, and when the upstream ignores every limit.
#[tokio::test]
async fn the_token_cap_holds_whatever_the_upstream_reads() {
    let (p, up, _t) = platform(&[
        (
            "m",
            "model+ignore-max-completion-tokens",
            "max-tokens = 128\n",
        ),
        ("wild", "model+ignore-limits", "max-tokens = 16\n"),
    ])
    .await;
    let story = json!([{"role": "user", "content": "tell me a long story"}]);
    let words = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .count()
    };
    let (status, v, text) = complete(
        &p,
        json!({"model": "m", "messages": story, "max_completion_tokens": 16}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(words(&v), 16, "{text}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{text}");
    let sent = up.requests().last().cloned().unwrap_or_default();
    assert_eq!(
        sent["max_tokens"], 16,
        "translated for the upstream: {sent}"
    );
    // The upstream ignores every limit: the gateway stops the stream at the cap itself.
    for stream in [false, true] {
        let (status, v, text) = complete(
            &p,
            json!({"model": "wild", "messages": story, "stream": stream}),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let (n, finish) = if stream {
            let (chunks, done) = chunks(&text);
            assert!(done, "{text}");
            let content: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            let finish = chunks
                .iter()
                .find_map(|c| c["choices"][0]["finish_reason"].as_str())
                .map(str::to_owned);
            (content.split_whitespace().count(), finish)
        } else {
            (
                words(&v),
                v["choices"][0]["finish_reason"].as_str().map(str::to_owned),
            )
        };
        assert_eq!(n, 16, "stream {stream}: {text}");
        assert_eq!(finish.as_deref(), Some("length"), "{text}");
    }
}

// 5. Valid OpenAI fields are passed through, and logprobs come back.
#[tokio::test]
async fn openai_fields_pass_through_and_logprobs_come_back() {
    let (p, up, _t) = platform(&[
        ("m", "model", ""),
        (
            "picky",
            "model",
            "compat = { deny-params = [\"service_tier\", \"prediction\"] }\n",
        ),
    ])
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "logprobs": true, "top_logprobs": 2, "reasoning_effort": "low", "service_tier": "auto",
        "prediction": {"type": "content", "content": "Hello"}, "modalities": ["text"],
        "verbosity": "low", "prompt_cache_key": "k1", "safety_identifier": "u1",
        "stream_options": null});
    let (status, v, text) = complete(&p, body.clone()).await;
    assert_eq!(status, 200, "{text}");
    let sent = up.requests().last().cloned().unwrap_or_default();
    for k in [
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "service_tier",
        "prediction",
        "modalities",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
    ] {
        assert_eq!(sent[k], body[k], "{k} passed through: {sent}");
    }
    let lp = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(lp.len(), 3, "{text}");
    assert_eq!(lp[0]["token"], "Hello");
    // Streamed: the logprobs arrive with the chunks.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, _, text) = complete(&p, streamed).await;
    assert_eq!(status, 200, "{text}");
    let (chunks, _) = chunks(&text);
    let tokens: Vec<&str> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|e| e["token"].as_str())
        .collect();
    assert_eq!(tokens, ["Hello", " from", " upstream"], "{text}");
    // A route that denies some: dropped, not refused.
    let mut picky = body.clone();
    picky["model"] = json!("picky");
    let (status, _, text) = complete(&p, picky).await;
    assert_eq!(status, 200, "{text}");
    let sent = up.requests().last().cloned().unwrap_or_default();
    assert!(
        sent.get("service_tier").is_none() && sent.get("prediction").is_none(),
        "{sent}"
    );
    assert_eq!(sent["reasoning_effort"], "low", "{sent}");
    // Still refused: what is not OpenAI's.
    let (status, v, text) = complete(
        &p,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temprature": 1}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(v["error"]["code"], "invalid_body");
}

// 6. An upstream 500 with a traceback is sanitized for the client (logged in full, once).
#[tokio::test]
async fn upstream_tracebacks_are_not_leaked() {
    let (p, _up, _t) = platform(&[("tb", "model+traceback", "")]).await;
    let hello = json!([{"role": "user", "content": "hi"}]);
    for stream in [false, true] {
        let (status, v, text) = complete(
            &p,
            json!({"model": "tb", "messages": hello, "stream": stream}),
        )
        .await;
        assert_eq!(status, 502, "{text}");
        assert_eq!(v["error"]["code"], "upstream_error", "{text}");
        for leak in [
            "Traceback",
            "site-packages",
            "File \"",
            "/opt/",
            "TypeError",
        ] {
            assert!(!text.contains(leak), "{leak} leaked: {text}");
        }
    }
}

// 7. A 500 caused by the request itself is not retried; a transient 500 still is.
#[tokio::test]
async fn deterministic_upstream_errors_are_not_retried() {
    let (p, up, _t) = platform(&[("tb", "model+traceback", ""), ("flaky", "flaky", "")]).await;
    let hello = json!([{"role": "user", "content": "hi"}]);
    let before = up.hits.load(Ordering::SeqCst);
    let (status, _, text) = complete(&p, json!({"model": "tb", "messages": hello})).await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(
        up.hits.load(Ordering::SeqCst) - before,
        1,
        "a deterministic failure is not retried"
    );
    let before = up.hits.load(Ordering::SeqCst);
    let (status, _, text) = complete(&p, json!({"model": "flaky", "messages": hello})).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(up.hits.load(Ordering::SeqCst) - before, 2, "retried once");
}

// 8. `GET /v1/models/{id}`; the legacy routes answer a 404 that names the supported ones.
#[tokio::test]
async fn models_retrieve_and_legacy_routes() {
    let (p, _up, _t) = platform(&[("m", "model", "")]).await;
    let (status, v) = p.get("/v1/models/m").await.expect("get");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["id"].as_str(),
            v["object"].as_str(),
            v["owned_by"].as_str()
        ),
        (Some("m"), Some("model"), Some("agentos:openai"))
    );
    let (status, v) = p.get("/v1/models/nope").await.expect("get");
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    for path in ["/v1/completions", "/v1/moderations"] {
        let (status, v) = p
            .post(path, &json!({"model": "m", "input": "hi", "prompt": "hi"}))
            .await
            .expect("post");
        assert_eq!(status, 404, "{v}");
        assert_eq!(v["error"]["code"], "unsupported_route", "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("/v1/chat/completions"), "{msg}");
    }
}

// 9. The second tool turn: an assistant message with `content: null` and tool calls, to an
// upstream that refuses `null`.
#[tokio::test]
async fn null_assistant_content_is_normalized_for_the_upstream() {
    let (p, up, _t) = platform(&[("m", "model+refuse-null-content", "")]).await;
    let (status, v, text) = complete(&p, ask("m")).await;
    assert_eq!(status, 200, "{text}");
    let message = v["choices"][0]["message"].clone();
    assert!(message["content"].is_null(), "{text}");
    let call_id = message["tool_calls"][0]["id"].clone();
    let mut next = ask("m");
    next["messages"] = json!([
        {"role": "user", "content": "weather in Paris?"},
        message,
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"}
    ]);
    let (status, v, text) = complete(&p, next).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The tool said: sunny"
    );
    let sent = up.requests().last().cloned().unwrap_or_default();
    assert_eq!(sent["messages"][1]["content"], "", "{sent}");
}

// The compatibility matrix: the official openai SDK, the OpenAI Agents SDK and LangChain through
// AgentOS to an upstream with every survivable quirk on; then an AgentOS agent run with a
// built-in tool on the same route.
#[tokio::test]
async fn the_clients_people_use_work_through_a_quirky_upstream() {
    let (addr, up, _t) =
        agentos_e2e::upstream::start_upstream_with(agentos_e2e::upstream::Quirks::survivable())
            .await;
    let p = Platform::start(Options {
        config: Some(routes(addr, &[("quirky", "model", "max-tokens = 512\n")])),
        ..Options::default()
    })
    .await
    .expect("platform");
    let (ok, text) = agentos_e2e::client_matrix(&p, "quirky", false).await;
    eprintln!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains(" 0 failed"), "{text}");

    p.create_agent(json!({"id": "calc", "model": "quirky", "tools": ["math.eval"]}))
        .await
        .expect("agent");
    let run = p.start_run("calc", "What is 6*7?").await.expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        done["output"].as_str().unwrap_or("").contains("42"),
        "{done}"
    );
    assert!(done["usage"]["total_tokens"].as_u64() > Some(0), "{done}");
    // The model was shown the tool's schema (under its alias) and called it.
    let first = up
        .requests()
        .into_iter()
        .rfind(|r| r["messages"].as_array().is_some_and(|m| m.len() == 1))
        .unwrap_or_default();
    let tool = &first["tools"][0]["function"];
    assert_eq!(tool["name"], "math_eval", "{first}");
    assert_eq!(tool["parameters"]["required"][0], "expr", "{first}");
    let events = p.events(&run, None).await.expect("events");
    let started = events
        .iter()
        .find(|e| e.event == "tool.started")
        .expect("tool.started");
    assert_eq!(started.data["data"]["arguments"], json!({"expr": "6*7"}));
}

// A stream cut inside a tool call: an error, never a half call passed off as complete.
#[tokio::test]
async fn a_stream_cut_mid_tool_call_is_an_error() {
    let (p, _up, _t) = platform(&[("m", "model+cut-mid-tool-call", "")]).await;
    let (status, v, text) = complete(&p, ask("m")).await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(v["error"]["code"], "upstream_stream_interrupted", "{text}");
    let mut streamed = ask("m");
    streamed["stream"] = json!(true);
    let (status, _, text) = complete(&p, streamed).await;
    assert_eq!(status, 200, "{text}");
    let (chunks, done) = chunks(&text);
    assert!(!done, "{text}");
    assert_eq!(
        chunks.last().expect("error event")["error"]["code"],
        "upstream_stream_interrupted"
    );
}
