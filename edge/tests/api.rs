//! The runs API in-process: `Router::oneshot` against a real nats-server, no binary.

mod common;

use axum::http::{Method, StatusCode};
use common::Edge;

#[tokio::test]
async fn wait_on_a_missing_or_foreign_run_leaves_no_waiter_behind() {
    let edge = Edge::start().await;
    edge.create_agent("acme", "a1").await;
    let foreign = edge.create_run("acme", "a1", "hi").await;
    for _ in 0..5 {
        let id = uuid::Uuid::now_v7();
        let (status, body) = edge
            .call(
                Method::GET,
                &format!("/v1/runs/{id}/wait?timeout_s=1"),
                "acme",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    let (status, _) = edge
        .call(
            Method::GET,
            &format!("/v1/runs/{foreign}/wait?timeout_s=1"),
            "other",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(edge.state.waiting_runs(), 0, "404s left waiters registered");
}

#[tokio::test]
async fn a_submitted_run_answers_201_even_when_the_audit_write_fails() {
    let edge = Edge::start().await;
    edge.create_agent("acme", "a1").await;
    assert!(
        edge.bus
            .delete_stream(agentos_bus::provision::STREAM_AUDIT)
            .await
            .expect("delete audit stream")
    );
    let (status, body) = edge
        .call(
            Method::POST,
            "/v1/runs",
            "acme",
            Some(serde_json::json!({"agent_id": "a1", "input": "hi"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("id");
    let (status, run) = edge
        .call(Method::GET, &format!("/v1/runs/{id}"), "acme", None)
        .await;
    assert_eq!(
        (status, run["status"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
    let (_, list) = edge.call(Method::GET, "/v1/runs", "acme", None).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id], "the run exists exactly once");
    // A cancel is committed before its audit write too.
    let (status, body) = edge
        .call(Method::POST, &format!("/v1/runs/{id}/cancel"), "acme", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled");
}
