//! An OpenAI-shaped HTTP upstream for tests and benchmarks. The requested model name picks the
//! behaviour: `flaky` fails once with 500, `hang` never answers, `cut` ends the stream early,
//! `tools` streams a tool call, `model` acts like a small model (below); anything else answers
//! "Hello from upstream" (streamed when asked).
//!
//! `model` answers like a chat model: a tool call when tools are offered (the one `tool_choice`
//! names, else the first; arguments made from its JSON schema), text after a tool result, JSON
//! for a `json_schema` response format, 200 words when asked for "a long story", and honours
//! `max_tokens` / `max_completion_tokens`. Real servers' quirks are switched on per upstream
//! ([`start_upstream_with`]) or per route, as `+`-suffixes of the model name
//! (`model+repeat-name+no-usage`): see [`Quirks`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Misbehaviours of real OpenAI-compatible servers, each switchable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quirks {
    /// `repeat-name`: `function.name` (and `id`) in every tool-call delta (llama-cpp-python).
    pub repeat_name: bool,
    /// `long-ids`: 100-character tool call ids.
    pub long_ids: bool,
    /// `no-usage`: no usage chunk, whatever `stream_options` says.
    pub no_usage: bool,
    /// `ignore-max-completion-tokens`: only `max_tokens` limits generation.
    pub ignore_max_completion_tokens: bool,
    /// `ignore-limits`: nothing limits generation.
    pub ignore_limits: bool,
    /// `traceback`: every request fails 500 with a Python traceback in the body.
    pub traceback: bool,
    /// `refuse-null-content`: an assistant message with `content: null` fails 500 (traceback).
    pub refuse_null_content: bool,
    /// `slow-first-token`: 300 ms before the first chunk.
    pub slow_first_token: bool,
    /// `cut-mid-tool-call`: the stream ends, without `[DONE]`, inside a tool call.
    pub cut_mid_tool_call: bool,
    /// `bad-args`: the first tool call's arguments miss the tool's schema (a string property
    /// sent as a number); once a tool result reports `invalid_arguments`, the call is made
    /// again with arguments that fit, as a model correcting itself would.
    pub bad_args: bool,
}

impl Quirks {
    /// Every quirk a working client path must survive (not the failures).
    pub fn survivable() -> Self {
        Self {
            repeat_name: true,
            long_ids: true,
            no_usage: true,
            ignore_max_completion_tokens: true,
            refuse_null_content: true,
            slow_first_token: true,
            ..Self::default()
        }
    }

    /// Adds the quirks named by `+`-suffixes (`model+repeat-name+long-ids`).
    fn with_suffixes(mut self, model: &str) -> Self {
        for q in model.split('+').skip(1) {
            match q {
                "repeat-name" => self.repeat_name = true,
                "long-ids" => self.long_ids = true,
                "no-usage" => self.no_usage = true,
                "ignore-max-completion-tokens" => self.ignore_max_completion_tokens = true,
                "ignore-limits" => self.ignore_limits = true,
                "traceback" => self.traceback = true,
                "refuse-null-content" => self.refuse_null_content = true,
                "slow-first-token" => self.slow_first_token = true,
                "cut-mid-tool-call" => self.cut_mid_tool_call = true,
                "bad-args" => self.bad_args = true,
                _ => {}
            }
        }
        self
    }
}

/// An OpenAI-shaped upstream whose behaviour is chosen by the requested model name.
#[derive(Default)]
pub struct Upstream {
    pub hits: AtomicUsize,
    flaky: AtomicUsize,
    pub auth: Mutex<Vec<String>>,
    /// Quirks for every request.
    pub quirks: Quirks,
    /// The bodies `model` requests arrived with, in order.
    pub requests: Mutex<Vec<Value>>,
    /// The bodies `POST /v1/embeddings` requests arrived with, in order.
    pub embedding_requests: Mutex<Vec<Value>>,
    /// The `traceparent` headers chat requests arrived with, in order.
    pub traceparents: Mutex<Vec<String>>,
}

impl Upstream {
    /// The bodies of the `model` requests so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// A Python traceback with file paths, as llama-cpp-python's server answers a failed request.
pub const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"/opt/venv/lib/python3.11/site-packages/llama_cpp/server/errors.py\", line 171, in custom_route_handler\n    response = await original_route_handler(request)\n  File \"/opt/venv/lib/python3.11/site-packages/llama_cpp/llama_chat_format.py\", line 228, in format\nTypeError: can only concatenate str (not \"NoneType\") to str";

fn traceback() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": {"message": TRACEBACK, "type": "internal_server_error"}})),
    )
        .into_response()
}

fn sse(chunks: Vec<Value>, done: bool) -> Response {
    sse_after(chunks, done, None)
}

fn sse_after(chunks: Vec<Value>, done: bool, first_delay: Option<Duration>) -> Response {
    let mut events: Vec<Result<Bytes, std::io::Error>> = chunks
        .into_iter()
        .map(|c| Ok(Bytes::from(format!("data: {c}\n\n"))))
        .collect();
    if done {
        events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    }
    // The response headers go out at once; the first chunk waits `first_delay`.
    let body = futures::StreamExt::then(
        futures::StreamExt::enumerate(futures::stream::iter(events)),
        move |(i, e)| async move {
            if let Some(d) = first_delay.filter(|_| i == 0) {
                tokio::time::sleep(d).await;
            }
            e
        },
    );
    let body = Body::from_stream(body);
    ([("content-type", "text/event-stream")], body).into_response()
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn usage() -> Value {
    json!({"id": "up-1", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
}

async fn chat(State(up): State<Arc<Upstream>>, headers: HeaderMap, body: String) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        up.auth.lock().expect("lock").push(a.to_owned());
    }
    if let Some(t) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        up.traceparents.lock().expect("lock").push(t.to_owned());
    }
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("").to_owned();
    if model == "model" || model.starts_with("model+") {
        up.requests.lock().expect("lock").push(body.clone());
        return act(&body, &up.quirks.clone().with_suffixes(&model)).await;
    }
    if body["stream"] != true {
        return axum::Json(json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from upstream"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})).into_response();
    }
    let text = || {
        sse(
            vec![
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({"content": "Hello"}), None),
                chunk(json!({"content": " from"}), None),
                chunk(json!({"content": " upstream"}), None),
                chunk(json!({}), Some("stop")),
                usage(),
            ],
            true,
        )
    };
    match model.as_str() {
        "flaky" if up.flaky.fetch_add(1, Ordering::SeqCst) == 0 => {
            (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            text()
        }
        "cut" => sse(vec![chunk(json!({"content": "Hel"}), None)], false),
        "tools" => sse(
            vec![
                chunk(
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_Up1", "type": "function",
                    "function": {"name": "math_eval", "arguments": ""}}]}),
                    None,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"expr\": "}}]}),
                    None,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"6*7\"}"}}]}),
                    None,
                ),
                chunk(json!({}), Some("tool_calls")),
                usage(),
            ],
            true,
        ),
        _ => text(),
    }
}

/// A value that fits `schema` (objects, strings, numbers, booleans, arrays, enums, anyOf).
fn sample(schema: &Value, name: &str) -> Value {
    if let Some(first) = schema["enum"].get(0) {
        return first.clone();
    }
    if let Some(first) = schema["anyOf"].get(0).or_else(|| schema["oneOf"].get(0)) {
        return sample(first, name);
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut o = serde_json::Map::new();
            for (k, v) in schema["properties"].as_object().into_iter().flatten() {
                o.insert(k.clone(), sample(v, k));
            }
            Value::Object(o)
        }
        Some("integer") => json!(42),
        Some("number") => json!(4.5),
        Some("boolean") => json!(true),
        Some("array") => json!([sample(&schema["items"], name)]),
        Some("null") => Value::Null,
        _ if name == "expr" || name == "expression" => json!("6*7"),
        _ => json!("Paris"),
    }
}

/// What `model` says: text pieces or one tool call (name, arguments).
enum Answer {
    Text(Vec<String>),
    Call(String, String),
}

fn answer(body: &Value, q: &Quirks) -> Answer {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    let tools = body["tools"].as_array().cloned().unwrap_or_default();
    let choice = &body["tool_choice"];
    let refused = last["role"] == "tool"
        && last["content"]
            .as_str()
            .is_some_and(|c| c.contains("invalid_arguments"));
    if last["role"] == "tool" && !(q.bad_args && refused) {
        let said = last["content"].as_str().unwrap_or("").to_owned();
        return Answer::Text(
            format!("The tool said: {said}")
                .split_inclusive(' ')
                .map(str::to_owned)
                .collect(),
        );
    }
    if !tools.is_empty() && choice != "none" {
        let named = choice["function"]["name"].as_str();
        let tool = tools
            .iter()
            .find(|t| Some(t["function"]["name"].as_str().unwrap_or("")) == named)
            .or(tools.first())
            .cloned()
            .unwrap_or_default();
        let name = tool["function"]["name"].as_str().unwrap_or("f").to_owned();
        let params = &tool["function"]["parameters"];
        let first_call = !messages.iter().any(|m| m["role"] == "tool");
        let args = if params.is_null() {
            json!({})
        } else if q.bad_args && first_call {
            let mut wrong = sample(params, "");
            if let Some(o) = wrong.as_object_mut() {
                for v in o.values_mut().filter(|v| v.is_string()) {
                    *v = json!(42);
                }
            }
            wrong
        } else {
            sample(params, "")
        };
        return Answer::Call(name, args.to_string());
    }
    let format = &body["response_format"];
    if format["type"] == "json_schema" {
        let v = sample(&format["json_schema"]["schema"], "");
        return Answer::Text(vec![v.to_string()]);
    }
    if format["type"] == "json_object" {
        return Answer::Text(vec!["{\"answer\": \"Paris\"}".into()]);
    }
    let asked = last["content"].as_str().unwrap_or("");
    if asked.contains("long story") {
        return Answer::Text((0..200).map(|i| format!("word{i} ")).collect());
    }
    Answer::Text(vec!["Hello".into(), " from".into(), " upstream".into()])
}

/// `model`'s reply to one request, quirks applied.
async fn act(body: &Value, q: &Quirks) -> Response {
    if q.traceback {
        return traceback();
    }
    let null_content = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["role"] == "assistant" && m.get("content").is_some_and(Value::is_null));
    if q.refuse_null_content && null_content {
        return traceback();
    }
    let limit = if q.ignore_limits {
        None
    } else if q.ignore_max_completion_tokens {
        body["max_tokens"].as_u64()
    } else {
        body["max_completion_tokens"]
            .as_u64()
            .or(body["max_tokens"].as_u64())
    };
    let logprobs = body["logprobs"] == true;
    let prompt_tokens = body["messages"].to_string().len() as u64 / 4;
    let (mut pieces, call) = match answer(body, q) {
        Answer::Text(t) => (t, None),
        Answer::Call(name, args) => {
            let third = args.len() / 3;
            let split = |i: usize| args.char_indices().nth(i).map_or(args.len(), |(b, _)| b);
            let (a, b) = (split(third), split(2 * third));
            let pieces = vec![
                args[..a].to_owned(),
                args[a..b].to_owned(),
                args[b..].to_owned(),
            ];
            (pieces, Some(name))
        }
    };
    let mut finish = if call.is_some() { "tool_calls" } else { "stop" };
    if let Some(n) = limit.map(|n| n as usize).filter(|n| *n < pieces.len()) {
        pieces.truncate(n);
        finish = "length";
    }
    let completion_tokens = pieces.len() as u64;
    let id = call.as_ref().map(|name| {
        if q.long_ids {
            let mut id = format!("call__0_{name}_cmpl-");
            while id.len() < 100 {
                id.push('x');
            }
            id.truncate(100);
            id
        } else {
            "call_m1".to_owned()
        }
    });
    let usage_value = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    if body["stream"] != true {
        let mut message = json!({"role": "assistant", "content": null});
        match (&call, &id) {
            (Some(name), Some(id)) => {
                message["tool_calls"] = json!([{"id": id, "type": "function",
                    "function": {"name": name, "arguments": pieces.concat()}}]);
            }
            _ => message["content"] = json!(pieces.concat()),
        }
        return axum::Json(json!({"id": "up-m", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage_value}))
        .into_response();
    }
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    let cut = q.cut_mid_tool_call && call.is_some();
    for (i, piece) in pieces.iter().enumerate() {
        let delta = match (&call, &id) {
            (Some(name), Some(id)) => {
                let mut c = json!({"index": 0, "function": {"arguments": piece}});
                if i == 0 || q.repeat_name {
                    c["id"] = json!(id);
                    c["type"] = json!("function");
                    c["function"]["name"] = json!(name);
                }
                json!({"tool_calls": [c]})
            }
            _ => json!({"content": piece}),
        };
        let mut c = chunk(delta, None);
        if logprobs && call.is_none() {
            c["choices"][0]["logprobs"] = json!({"content": [{"token": piece, "logprob": -0.25,
                "bytes": piece.as_bytes(), "top_logprobs": []}]});
        }
        chunks.push(c);
        if cut && i == 1 {
            return sse(chunks, false);
        }
    }
    chunks.push(chunk(json!({}), Some(finish)));
    if !q.no_usage {
        chunks.push(json!({"id": "up-m", "object": "chat.completion.chunk", "choices": [], "usage": usage_value}));
    }
    let delay = q.slow_first_token.then_some(Duration::from_millis(300));
    sse_after(chunks, true, delay)
}

/// `POST /v1/embeddings`: vector `[i, length of input i, 1]` per input, listed in reverse order
/// (clients must sort by `index`); the model `broken` fails with a traceback.
async fn embeddings(State(up): State<Arc<Upstream>>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    up.embedding_requests
        .lock()
        .expect("lock")
        .push(body.clone());
    if body["model"] == "broken" {
        return traceback();
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": [i as f64, t.len() as f64, 1.0]}))
        .collect();
    axum::Json(
        json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
    )
    .into_response()
}

/// Starts the upstream on a random port; it stops when the returned task is dropped… or aborted.
pub async fn start_upstream() -> (
    std::net::SocketAddr,
    Arc<Upstream>,
    tokio::task::JoinHandle<()>,
) {
    start_upstream_with(Quirks::default()).await
}

/// Like [`start_upstream`], with `quirks` on every `model` request.
pub async fn start_upstream_with(
    quirks: Quirks,
) -> (
    std::net::SocketAddr,
    Arc<Upstream>,
    tokio::task::JoinHandle<()>,
) {
    let up = Arc::new(Upstream {
        quirks,
        ..Upstream::default()
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/v1/embeddings", axum::routing::post(embeddings))
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, up, task)
}
