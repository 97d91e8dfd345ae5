//! One tenant floods an edge with open SSE streams while slowloris clients dribble their
//! headers; another tenant's runs are still served, start to finish. The flood's streams are
//! really open (the edge's per-tenant cap is raised above the flood for this test) and each has
//! delivered its first events; past the default cap the same flood is refused with `429`.
//!
//! 1,000 streams by default; 10,000 with `AGENTOS_LONG_TESTS=1` (the figure). The
//! other tenant's latencies, alone and under the flood, are printed for the record; the test
//! asserts only that every one of its runs completes within a generous bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentos_e2e::{Options, Platform, eventually, millis, mint, percentile, rss_kib};
use futures::{StreamExt, stream};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Streams the flooding tenant holds open.
fn flood_size() -> usize {
    if std::env::var_os("AGENTOS_LONG_TESTS").is_some() {
        10_000
    } else {
        1_000
    }
}

/// Runs the other tenant completes alone, then again under the flood.
const PROBES: usize = 20;
/// Slowloris connections kept open (re-opened when cut) during the flood.
const SLOWLORIS: usize = 200;
/// Runs of the flooding tenant the streams follow (each waits for its caller, so its streams
/// stay open).
const FOLLOWED_RUNS: usize = 50;

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_flood_and_slowloris_do_not_starve_another_tenant() {
    let flood = flood_size();
    let p = Platform::start(Options {
        env: vec![
            (
                "AGENTOS_MAX_STREAMS_PER_TENANT".into(),
                (flood + 1).to_string(),
            ),
            ("AGENTOS_HEADER_READ_TIMEOUT".into(), "2s".into()),
        ],
        ..Options::default()
    })
    .await
    .expect("platform");
    let other = mint("other").expect("token");
    let echo = json!({
        "id": "quick", "model": "scripted",
        "model_config": {"script": [{"text": "done"}]}
    });
    let (status, v) = p
        .send_as(&other, reqwest::Method::POST, "/v1/agents", Some(&echo))
        .await
        .expect("agent");
    assert_eq!(status, 201, "{v}");
    let alone = probe(&p, &other).await;
    let edge_pid = p
        .procs
        .iter()
        .find(|proc| proc.name == "edge")
        .expect("the edge")
        .pid();
    let rss = || (rss_kib(edge_pid) / 1024, rss_kib(p.nats.pid()) / 1024);
    let rss_before = rss();

    // The flooding tenant: runs that wait for their caller, each followed by many streams.
    p.create_agent(json!({
        "id": "asker", "model": "scripted",
        "client_tools": [{"name": "ask"}],
        "model_config": {"script": [{"tool_calls": [{"name": "ask", "arguments": {}}]}]}
    }))
    .await
    .expect("agent");
    let mut runs = Vec::new();
    for i in 0..FOLLOWED_RUNS {
        runs.push(p.start_run("asker", &format!("{i}")).await.expect("run"));
    }
    for run in &runs {
        eventually("the run waits", Duration::from_secs(30), || async {
            let (_, v) = p.get(&format!("/v1/runs/{run}")).await.ok()?;
            (v["status"] == "requires_action").then_some(())
        })
        .await
        .expect("waiting");
    }
    // Each stream on its own connection (no pooling across streams).
    let flood_http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let opened = Instant::now();
    let streams: Vec<reqwest::Response> = stream::iter(0..flood)
        .map(|i| {
            let req = flood_http
                .get(p.url(&format!("/v1/runs/{}/events", runs[i % runs.len()])))
                .bearer_auth(&p.token);
            async move {
                let mut resp = req.send().await.expect("open a stream");
                if resp.status() != 200 {
                    let status = resp.status();
                    panic!(
                        "stream {i}: {status} {}",
                        resp.text().await.unwrap_or_default()
                    );
                }
                // Its first events (the replayed `run.started` …) arrived: it is served.
                let first = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
                    .await
                    .expect("first events in time")
                    .expect("read")
                    .expect("a chunk");
                assert!(
                    String::from_utf8_lossy(&first).contains("event:"),
                    "stream {i}"
                );
                resp
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let open_time = opened.elapsed();
    assert_eq!(streams.len(), flood);

    // Slowloris: connections that send a header byte now and then, re-opened when cut.
    let addr = p.edge_url.trim_start_matches("http://").to_owned();
    let cut = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..SLOWLORIS)
        .map(|_| {
            let (addr, cut) = (addr.clone(), cut.clone());
            tokio::spawn(async move {
                loop {
                    let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let _ = conn
                        .write_all(b"GET /v1/agents HTTP/1.1\r\nHost: e\r\n")
                        .await;
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if conn.write_all(b"X").await.is_err() {
                            cut.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        })
        .collect();

    let flooded = probe(&p, &other).await;
    let rss_flooded = rss();
    // The flood is still open and the slowloris clients were cut off meanwhile.
    eventually("slowloris cut off", Duration::from_secs(30), || async {
        (cut.load(Ordering::Relaxed) >= SLOWLORIS).then_some(())
    })
    .await
    .expect("the header read timeout cuts slow clients");
    for s in slow {
        s.abort();
    }

    // Past the default cap the same tenant is refused, another tenant is not: a second edge
    // with default limits.
    let mut p = p;
    let capped = p
        .spawn_edge_with_env(&[("AGENTOS_MAX_STREAMS_PER_TENANT", "256")])
        .await
        .expect("edge with default caps");
    let refused = stream::iter(0..300)
        .map(|_| {
            flood_http
                .get(format!("{capped}/v1/runs/{}/events", runs[0]))
                .bearer_auth(&p.token)
                .send()
        })
        .buffer_unordered(64)
        .filter_map(|r| async move { r.ok() })
        .collect::<Vec<_>>()
        .await;
    let too_many = refused.iter().filter(|r| r.status() == 429).count();
    assert_eq!(
        (refused.len() - too_many, too_many),
        (256, 44),
        "the default cap holds 256 streams per tenant per edge"
    );
    let (status, _) = p
        .send_as(
            &other,
            reqwest::Method::GET,
            &format!("/v1/runs/{}", flooded.last_run),
            None,
        )
        .await
        .expect("other tenant");
    assert_eq!(status, 200);
    drop(refused);
    drop(streams);

    eprintln!(
        "stream flood: {flood} streams open in {:.1}s (+{SLOWLORIS} slowloris, {} cut); \
         other tenant's runs (POST + SSE to run.completed), {PROBES} each: alone p50 {:.1} ms \
         max {:.1} ms; under the flood p50 {:.1} ms max {:.1} ms; RSS MiB (edge, nats-server) \
         {rss_before:?} before, {rss_flooded:?} under the flood",
        open_time.as_secs_f64(),
        cut.load(Ordering::Relaxed),
        millis(percentile(&alone.latencies, 0.5)),
        millis(percentile(&alone.latencies, 1.0)),
        millis(percentile(&flooded.latencies, 0.5)),
        millis(percentile(&flooded.latencies, 1.0)),
    );
}

struct Probe {
    latencies: Vec<Duration>,
    last_run: String,
}

/// `PROBES` runs of the other tenant, one after another: start, follow to `run.completed`.
async fn probe(p: &Platform, token: &str) -> Probe {
    let mut latencies = Vec::new();
    let mut last_run = String::new();
    for i in 0..PROBES {
        let started = Instant::now();
        let run = p
            .start_run_as(token, "quick", &format!("probe {i}"))
            .await
            .expect("start");
        let text = tokio::time::timeout(Duration::from_secs(20), async {
            p.http
                .get(p.url(&format!("/v1/runs/{run}/events")))
                .bearer_auth(token)
                .send()
                .await
                .expect("events")
                .text()
                .await
                .expect("body")
        })
        .await
        .expect("the other tenant's run completes within 20 s");
        let events = agentos_e2e::parse_sse(&text);
        assert_eq!(
            events.last().map(|e| e.event.as_str()),
            Some("run.completed"),
            "{text}"
        );
        latencies.push(started.elapsed());
        last_run = run;
    }
    latencies.sort();
    Probe {
        latencies,
        last_run,
    }
}
