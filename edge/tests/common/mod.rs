//! In-process edge harness: the real router (`Router::oneshot`) against a real nats-server on a
//! random port (`NatsServer::ephemeral`), no binary. Waits are on conditions, never fixed sleeps.

#![allow(dead_code)]

use std::time::Duration;

use agentos_bus::id::Tenant;
use agentos_bus::server::NatsServer;
use agentos_bus::{Admission, Bus, ConnectOptions, Settings};
use agentos_edge::{AppState, Auth};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub const SECRET: &[u8] = b"edge-test-secret";

/// A nats-server, a provisioned bus, and the edge's router and state on it.
pub struct Edge {
    pub nats: NatsServer,
    pub bus: Bus,
    pub state: AppState,
    pub router: Router,
    shutdown: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn token(tenant: &str) -> String {
    let tenant: Tenant = tenant.parse().expect("tenant");
    agentos_edge::mint(
        SECRET,
        "tester",
        &tenant,
        &["member".to_owned()],
        Duration::from_secs(3600),
    )
    .expect("mint")
}

impl Edge {
    pub async fn start() -> Self {
        let nats = NatsServer::ephemeral().await.expect("nats-server");
        let bus = Bus::connect(&ConnectOptions::new(nats.url()))
            .await
            .expect("connect");
        bus.provision(&Settings::default())
            .await
            .expect("provision");
        let auth = Auth::hs256(SECRET).expect("auth");
        let state = AppState::new(bus.clone(), auth, Admission::Implicit)
            .await
            .expect("state");
        let shutdown = CancellationToken::new();
        tokio::spawn(state.clone().watch(shutdown.clone()));
        let router = agentos_edge::router(state.clone(), agentos_edge::DEFAULT_BODY_LIMIT);
        Self {
            nats,
            bus,
            state,
            router,
            shutdown,
        }
    }

    /// One request through the router; the raw response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        tenant: &str,
        body: Option<Value>,
    ) -> Response {
        self.send_with(method, path, tenant, body, &[]).await
    }

    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        tenant: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", token(tenant)));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        self.router.clone().oneshot(req).await.expect("infallible")
    }

    /// One request; status and JSON body (`Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        tenant: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        json_of(self.send(method, path, tenant, body).await).await
    }

    pub async fn create_agent(&self, tenant: &str, id: &str) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/agents",
                tenant,
                Some(json!({"id": id, "model": "scripted"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Starts a run; its id.
    pub async fn create_run(&self, tenant: &str, agent: &str, input: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/runs",
                tenant,
                Some(json!({"agent_id": agent, "input": input})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("run id").to_owned()
    }
}

pub async fn json_of(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json body")
    };
    (status, value)
}

pub async fn text_of(resp: Response) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}
