//! An OpenAI-shaped HTTP upstream for tests and benchmarks. The requested model name picks the
//! behaviour: `flaky` fails once with 500, `hang` never answers, `cut` ends the stream early,
//! `tools` streams a tool call; anything else answers "Hello from upstream" (streamed when asked).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An OpenAI-shaped upstream whose behaviour is chosen by the requested model name.
#[derive(Default)]
pub struct Upstream {
    pub hits: AtomicUsize,
    flaky: AtomicUsize,
    pub auth: std::sync::Mutex<Vec<String>>,
}

fn sse(chunks: Vec<Value>, done: bool) -> Response {
    let mut events: Vec<Result<Bytes, std::io::Error>> = chunks
        .into_iter()
        .map(|c| Ok(Bytes::from(format!("data: {c}\n\n"))))
        .collect();
    if done {
        events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    }
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(futures::stream::iter(events)),
    )
        .into_response()
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
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
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
    match body["model"].as_str().unwrap_or("") {
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

/// Starts the upstream on a random port; it stops when the returned task is dropped… or aborted.
pub async fn start_upstream() -> (
    std::net::SocketAddr,
    Arc<Upstream>,
    tokio::task::JoinHandle<()>,
) {
    let up = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
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
