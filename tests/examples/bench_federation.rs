//! The federation benchmark: not a test. Two clusters on loopback (A hub, B its leaf); the
//! same run (scripted model + one echo tool call) local at A and forwarded from A to B, on the
//! same machine state, interleaved: p50/p99 submit→completed latency at concurrency 1 and
//! throughput at concurrency C, as A's client sees it.
//!
//! `cargo build --release -p agentos-cli && cargo run --release -p agentos-e2e --example bench_federation -- [N] [C]`
//! (a debug build of both works too, with debug figures).

// The benchmark's report is its stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use agentos_e2e::federation::{Clusters, FedOptions};
use agentos_e2e::{Platform, eventually, millis, percentile};
use anyhow::Result;
use futures::StreamExt;
use serde_json::json;

fn agent(id: &str) -> serde_json::Value {
    json!({
        "id": id, "model": "scripted", "tools": ["echo"],
        "model_config": {"script": [{"tool_calls": [{"name": "echo", "arguments": {"n": 1}}]}, {"text": "ok"}]}
    })
}

async fn one_run(p: &Platform, agent: &str) -> Result<Duration> {
    let t = Instant::now();
    let id = p.start_run(agent, "go").await?;
    let done = p.wait_terminal(&id, Duration::from_secs(120)).await?;
    anyhow::ensure!(done["status"] == "completed", "run {id}: {done}");
    Ok(t.elapsed())
}

async fn throughput(p: &Platform, agent: &str, n: usize, c: usize) -> Result<f64> {
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| one_run(p, agent))
        .buffer_unordered(c)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let (n, c) = agentos_e2e::bench_args(500);
    let clusters = Clusters::start(FedOptions {
        announce: "1s",
        ..Default::default()
    })
    .await?;
    clusters.a.create_agent(agent("local")).await?;
    clusters.b.create_agent(agent("remote")).await?;
    eventually("B announces its agent", Duration::from_secs(60), || async {
        let (_, v) = clusters.a.get("/v1/federation/peers").await.ok()?;
        v["data"][0]["agents"]
            .as_array()?
            .iter()
            .any(|a| a == "remote")
            .then_some(())
    })
    .await?;
    let a = &clusters.a;
    println!(
        "machine: {} cores; runs: scripted model + 1 echo tool call; 1 orchestrator per cluster",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for agent in ["local", "remote"] {
        for _ in 0..20 {
            one_run(a, agent).await?;
        }
    }
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    let samples = n.min(200);
    for _ in 0..samples {
        local.push(one_run(a, "local").await?);
        remote.push(one_run(a, "remote").await?);
    }
    local.sort();
    remote.sort();
    for (name, lat) in [("local at A", &local), ("A → B forwarded", &remote)] {
        println!(
            "{name:>16}: latency at concurrency 1 ({samples} runs, interleaved): p50 {:.2} ms, p99 {:.2} ms",
            millis(percentile(lat, 0.5)),
            millis(percentile(lat, 0.99))
        );
    }
    for round in 0..2 {
        let l = throughput(a, "local", n, c).await?;
        let r = throughput(a, "remote", n, c).await?;
        println!(
            "round {round}: throughput at concurrency {c} ({n} runs): local {l:.0} runs/s, forwarded {r:.0} runs/s"
        );
    }
    Ok(())
}
