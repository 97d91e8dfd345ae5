//! A recording proxy in front of a real OpenAI-compatible server: forwards every
//! `POST /v1/chat/completions` unchanged (the answer streamed back as it comes) and keeps the
//! request bodies, so a test can check what a real model was sent.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// What went through the proxy.
#[derive(Default)]
pub struct Recorded {
    target: String,
    http: reqwest::Client,
    bodies: Mutex<Vec<Value>>,
}

impl Recorded {
    /// The chat request bodies so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

async fn forward(State(rec): State<Arc<Recorded>>, headers: HeaderMap, body: String) -> Response {
    if let Ok(v) = serde_json::from_str(&body)
        && let Ok(mut b) = rec.bodies.lock()
    {
        b.push(v);
    }
    let mut req = rec
        .http
        .post(format!("{}/v1/chat/completions", rec.target))
        .header("content-type", "application/json")
        .body(body);
    if let Some(auth) = headers.get("authorization") {
        req = req.header("authorization", auth);
    }
    match req.send().await {
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            (
                status,
                [("content-type", content_type)],
                Body::from_stream(resp.bytes_stream()),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// Starts the proxy on a random port in front of `target` (`http://host:port`); it stops when
/// the returned task is dropped… or aborted.
pub async fn start_proxy(
    target: String,
) -> (
    std::net::SocketAddr,
    Arc<Recorded>,
    tokio::task::JoinHandle<()>,
) {
    let rec = Arc::new(Recorded {
        target,
        ..Recorded::default()
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(forward))
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, rec, task)
}
