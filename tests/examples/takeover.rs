//! The takeover benchmark: not a test. (1) How long runs wait for another orchestrator after
//! `kill -9` of the one driving them (50 runs inside a tool call), with the default ack wait.
//! (2) What keeping runs alive costs: CPU of nats-server and the orchestrators over 4 s while
//! 1,000 runs sit in a tool call, with the old 30 s ack wait and with the 2 s default.
//!
//! `cargo build --release -p agentos-cli && cargo run --release -p agentos-e2e --example takeover`

// The benchmark's report is its stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use agentos_bus::id::{RunId, Tenant};
use agentos_e2e::{Options, Platform, cpu_secs, millis, percentile};
use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::json;

async fn platform(ack_wait: &'static str, orchestrators: usize) -> Result<Platform> {
    Platform::start(Options {
        ack_wait,
        orchestrators,
        env: vec![("AGENTOS_CONCURRENCY".into(), "1500".into())],
        ..Options::default()
    })
    .await
    .context("platform")
}

async fn sleeper(p: &Platform, ms: u64) -> Result<()> {
    p.create_agent(json!({
        "id": "sleeper", "model": "scripted", "tools": ["sleep"],
        "model_config": {"script": [{"tool_calls": [{"name": "sleep", "arguments": {"ms": ms}}]}, {"text": "ok"}]}
    }))
    .await
}

async fn submit(p: &Platform, n: usize) -> Result<Vec<String>> {
    futures::stream::iter(0..n)
        .map(|i| async move { p.start_run("sleeper", &format!("run {i}")).await })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn takeover() -> Result<()> {
    let mut p = platform("2s", 1).await?;
    sleeper(&p, 1000).await?;
    let runs = submit(&p, 50).await?;
    let tenant = Tenant::parse("acme")?;
    let ids: Vec<RunId> = runs
        .iter()
        .map(|r| RunId::parse(r))
        .collect::<Result<_, _>>()?;
    p.wait_tool_started(&tenant, &ids).await?;
    p.spawn_orchestrator()?;
    p.wait_services(2).await?;
    if let Some(first) = p.procs.iter_mut().find(|c| c.name == "orchestrator") {
        first.kill();
    }
    let killed = time::OffsetDateTime::now_utc();
    let mut waited = Vec::new();
    for (run, id) in runs.iter().zip(&ids) {
        p.wait_terminal(run, Duration::from_secs(120)).await?;
        let journal = p.bus.read_journal(&tenant, id).await?;
        if let Some(s) = journal.iter().find(|s| s.event.ts > killed) {
            waited.push(Duration::try_from(s.event.ts - killed).unwrap_or_default());
        }
    }
    waited.sort();
    println!(
        "takeover after kill -9 (ack wait 2 s, {} runs in a tool call): p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        waited.len(),
        millis(percentile(&waited, 0.5)),
        millis(percentile(&waited, 0.9)),
        millis(waited.last().copied().unwrap_or_default())
    );
    Ok(())
}

async fn keep_alive_cost(ack_wait: &'static str) -> Result<()> {
    let p = platform(ack_wait, 2).await?;
    sleeper(&p, 20_000).await?;
    let t = Instant::now();
    submit(&p, 1000).await?;
    // Let every run reach its tool call, then measure a quiet window.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(t.elapsed())).await;
    let pids: Vec<(String, u32)> = p
        .procs
        .iter()
        .filter(|c| c.name == "orchestrator")
        .map(|c| (c.name.clone(), c.pid()))
        .chain([("nats-server".to_owned(), p.nats.pid())])
        .collect();
    let before: Vec<f64> = pids.iter().map(|(_, pid)| cpu_secs(*pid)).collect();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let secs = window.elapsed().as_secs_f64();
    let used: Vec<String> = pids
        .iter()
        .zip(&before)
        .map(|((name, pid), b)| format!("{name} {:.3}", (cpu_secs(*pid) - b) / secs))
        .collect();
    println!(
        "1,000 runs in a tool call, ack wait {ack_wait}: CPU cores used: {}",
        used.join(", ")
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    takeover().await?;
    keep_alive_cost("30s").await?;
    keep_alive_cost("2s").await?;
    Ok(())
}
