//! Traces end to end: every process exports its spans over OTLP/HTTP to a receiver in this test
//! (an axum handler decoding `ExportTraceServiceRequest` with opentelemetry-proto and prost).
//! One run with two tool calls is one trace, across the edge, the orchestrator, the model worker
//! and the tool worker, with parent links edge → orchestrator → model / tool worker, rooted at
//! the client's own `traceparent`; the run record and every event name that trace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentos_e2e::{Options, Platform, eventually, free_port};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

#[derive(Clone, Debug)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut got = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                });
            }
        }
    }
    spans.lock().expect("lock").extend(got);
    ExportTraceServiceResponse::default().encode_to_vec()
}

#[tokio::test]
async fn one_run_with_two_tool_calls_is_one_trace_across_four_processes() {
    let spans = Spans::default();
    let port = free_port().expect("port");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let p = Platform::start(Options {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{port}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(json!({
        "id": "traced", "model": "scripted", "tools": ["echo"],
        "model_config": {"script": [
            {"tool_calls": [
                {"name": "echo", "arguments": {"n": 1}},
                {"name": "echo", "arguments": {"n": 2}}
            ]},
            {"text": "done"}
        ]}
    }))
    .await
    .expect("agent");

    // The client's own trace: the run joins it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = p
        .req(reqwest::Method::POST, "/v1/runs")
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&json!({"agent_id": "traced", "input": "go"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let run: serde_json::Value = r.json().await.expect("json");
    let id = run["id"].as_str().expect("id").to_owned();
    assert_eq!(run["trace_id"], client_trace, "{run}");
    let done = p
        .wait_terminal(&id, Duration::from_secs(60))
        .await
        .expect("done");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["trace_id"], client_trace, "{done}");
    let events = p.events(&id, None).await.expect("events");
    assert!(
        events.iter().all(|e| e.data["trace_id"] == client_trace),
        "{events:?}"
    );

    // Spans arrive in batches; wait for both model and both tool calls.
    let all = eventually("the run's spans", Duration::from_secs(30), || async {
        let all: Vec<Span> = spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == client_trace)
            .cloned()
            .collect();
        let count = |name: &str| all.iter().filter(|s| s.name == name).count();
        // Each process exports in its own batches: wait for every span the run makes.
        let from = |service: &str| all.iter().any(|s| s.service == service);
        (count("tool") >= 2
            && count("model") >= 2
            && from("agentos-orchestrator")
            && from("agentos-edge"))
        .then_some(all)
    })
    .await
    .expect("spans");
    for s in &all {
        eprintln!(
            "{:<22} {:<8} span {} parent {}",
            s.service, s.name, s.span_id, s.parent
        );
    }
    let services: BTreeSet<&str> = all.iter().map(|s| s.service.as_str()).collect();
    assert!(
        [
            "agentos-edge",
            "agentos-orchestrator",
            "agentos-model",
            "agentos-tool"
        ]
        .iter()
        .all(|s| services.contains(s)),
        "{services:?}"
    );
    let by_id: BTreeMap<&str, &Span> = all.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_service = |s: &Span| by_id.get(s.parent.as_str()).map(|p| p.service.clone());
    // The edge's request span is the child of the client's span.
    let edge = all
        .iter()
        .find(|s| s.service == "agentos-edge" && s.parent == client_span)
        .expect("the edge's span under the client's");
    // Each delivery of the run is a span under the edge's request.
    let runs: Vec<&Span> = all.iter().filter(|s| s.name == "run").collect();
    assert!(!runs.is_empty(), "{all:#?}");
    assert!(runs.iter().all(|s| s.parent == edge.span_id), "{all:#?}");
    // Model and tool workers' spans hang under orchestrator spans.
    for s in all.iter().filter(|s| s.name == "model" || s.name == "tool") {
        assert_eq!(
            parent_service(s).as_deref(),
            Some("agentos-orchestrator"),
            "{s:?} in {all:#?}"
        );
    }
    assert_eq!(
        all.iter().filter(|s| s.name == "model").count(),
        2,
        "{all:#?}"
    );
    assert_eq!(
        all.iter().filter(|s| s.name == "tool").count(),
        2,
        "{all:#?}"
    );

    // The operator's view: `agentos run trace` draws the run's waterfall and names its trace.
    let out = std::process::Command::new(agentos_e2e::agentos_bin().expect("bin"))
        .args(["run", "trace", &id])
        .env("AGENTOS_EDGE_URL", &p.edge_url)
        .env("AGENTOS_TOKEN", &p.token)
        .output()
        .expect("run trace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("trace {client_trace}")), "{text}");
    assert!(text.contains("run (completed)"), "{text}");
    assert_eq!(text.matches("tool echo").count(), 2, "{text}");
    assert_eq!(text.matches("  model").count(), 2, "{text}");
    assert!(text.contains("step 2"), "{text}");
    eprintln!("{text}");
}

#[tokio::test]
async fn a_chat_completion_carries_the_clients_trace_to_the_upstream() {
    let spans = Spans::default();
    let port = free_port().expect("port");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (addr, up, _server) = agentos_e2e::upstream::start_upstream().await;
    let key = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(key.path(), "sk-test-key\n").expect("write key");
    let p = Platform::start(Options {
        config: Some(format!(
            "[model.routes.up-ok]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"ok\"\napi-key-file = \"{}\"\n",
            key.path().display()
        )),
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{port}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..Options::default()
    })
    .await
    .expect("platform");
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let r = p
        .req(reqwest::Method::POST, "/v1/chat/completions")
        .header(
            "traceparent",
            format!("00-{client_trace}-b7ad6b7169203331-01"),
        )
        .json(&json!({"model": "up-ok", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    // The upstream got the trace, as a child of the model worker's span for the call.
    let sent = up.traceparents.lock().expect("lock").clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let parts: Vec<&str> = sent[0].split('-').collect();
    assert_eq!(parts[1], client_trace, "{sent:?}");
    let model = eventually(
        "the model worker's span",
        Duration::from_secs(30),
        || async {
            spans
                .lock()
                .expect("lock")
                .iter()
                .find(|s| s.name == "model" && s.trace_id == client_trace)
                .cloned()
        },
    )
    .await
    .expect("span");
    assert_eq!(model.service, "agentos-model");
    assert_eq!(parts[2], model.span_id, "{sent:?} {model:?}");
}
