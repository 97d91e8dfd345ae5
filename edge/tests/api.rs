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
