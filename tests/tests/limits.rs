//! The edge's bounds, end to end: past its requests in flight it answers `503 overloaded` with
//! `Retry-After` at once (health still answers), and past a tenant's open SSE streams `429
//! too_many_streams`, while another tenant streams on; a closed stream frees its slot.
//! (Streams follow runs waiting for their caller: their streams stay open.)

use std::time::Duration;

use agentos_e2e::{Options, Platform, eventually, mint};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_sheds_load_past_its_caps_and_recovers() {
    let p = Platform::start(Options {
        env: vec![
            ("AGENTOS_MAX_IN_FLIGHT".into(), "2".into()),
            ("AGENTOS_MAX_STREAMS_PER_TENANT".into(), "2".into()),
        ],
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(json!({
        "id": "slow",
        "model": "scripted",
        "tools": ["sleep"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "sleep", "arguments": {"ms": 8000}}]},
            {"text": "slept"}
        ]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("slow", "nap").await.expect("run");

    // Two long-polls fill the edge; a third request is refused at once, health is not.
    // (A wait that races a probe below may itself be shed: it tries again.)
    let waits: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, token) = (
                p.http.clone(),
                p.url(&format!("/v1/runs/{run}/wait?timeout_s=20")),
                p.token.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let r = http.get(&url).bearer_auth(&token).send().await;
                    match r.map(|r| r.status().as_u16()) {
                        Ok(503) => tokio::task::yield_now().await,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    let refused = eventually("a request shed", Duration::from_secs(10), || async {
        let r = p
            .req(reqwest::Method::GET, "/v1/agents")
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 503).then_some(r)
    })
    .await
    .expect("shed");
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let (status, _) = p.get("/healthz").await.expect("health");
    assert_eq!(status, 200);
    for w in waits {
        assert_eq!(w.await.expect("join").expect("wait"), 200);
    }
    let (status, _) = p.get("/v1/agents").await.expect("agents");
    assert_eq!(status, 200, "the edge recovers once the load is gone");

    // Streams: two per tenant, following a run that waits for its caller (its stream stays
    // open).
    p.create_agent(json!({
        "id": "asker",
        "model": "scripted",
        "client_tools": [{"name": "ask"}],
        "model_config": {"script": [{"tool_calls": [{"name": "ask", "arguments": {}}]}]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("asker", "wait").await.expect("run");
    let open = |token: String, run: String| {
        let r = p
            .http
            .get(p.url(&format!("/v1/runs/{run}/events")))
            .bearer_auth(token);
        async move { r.send().await.expect("stream") }
    };
    let first = open(p.token.clone(), run.clone()).await;
    let second = open(p.token.clone(), run.clone()).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = open(p.token.clone(), run.clone()).await;
    assert_eq!(third.status(), 429);
    let body: serde_json::Value = third.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    // Another tenant is not held back.
    let other = mint("other").expect("token");
    let (status, v) = p
        .send_as(
            &other,
            reqwest::Method::POST,
            "/v1/agents",
            Some(
                &json!({"id": "asker", "model": "scripted", "client_tools": [{"name": "ask"}],
                "model_config": {"script": [{"tool_calls": [{"name": "ask", "arguments": {}}]}]}}),
            ),
        )
        .await
        .expect("agent");
    assert_eq!(status, 201, "{v}");
    let (status, v) = p
        .send_as(
            &other,
            reqwest::Method::POST,
            "/v1/runs",
            Some(&json!({"agent_id": "asker", "input": "x"})),
        )
        .await
        .expect("run");
    assert_eq!(status, 201, "{v}");
    let theirs = open(other, v["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(theirs.status(), 200);
    // A closed stream frees its slot.
    drop(first);
    eventually("a freed stream slot", Duration::from_secs(30), || async {
        let again = open(p.token.clone(), run.clone()).await;
        (again.status() == 200).then_some(())
    })
    .await
    .expect("slot freed");
    drop(second);
}

/// A client that sends its headers too slowly (slowloris) is cut off after the header read
/// timeout; a normal client is served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_header_sender_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Platform::start(Options {
        env: vec![("AGENTOS_HEADER_READ_TIMEOUT".into(), "1s".into())],
        ..Options::default()
    })
    .await
    .expect("platform");
    let addr = p.edge_url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let (status, _) = p.get("/healthz").await.expect("health");
    assert_eq!(status, 200, "others are served meanwhile");
    // The server closes the connection (possibly after a 408): reading reaches its end.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "still open after 30 s: {}",
        String::from_utf8_lossy(&buf)
    );
    eprintln!(
        "slow client cut off after {:?}: {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&buf).lines().next()
    );
    // A client that connects and never sends a byte is cut off by the same timeout.
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}
