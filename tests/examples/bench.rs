//! The runs benchmark: not a test. Starts the platform (release binary), measures NATS's own
//! limits in the same run (JetStream publish, KV put), then runs with the scripted model and one
//! tool call: p50/p99 submit→completed latency at concurrency 1 and throughput at concurrency C.
//!
//! `cargo build --release -p agentos-cli && cargo run --release -p agentos-e2e --example bench -- [N] [C]`

// The benchmark's report is its stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use agentos_bus::{Bucket, Error};
use agentos_e2e::{Options, Platform, cpu_secs, millis, percentile};
use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

async fn nats_limits(p: &Platform, n: usize) -> Result<()> {
    let payload = Bytes::from(vec![b'x'; 1024]);
    let t = Instant::now();
    for _ in 0..n {
        p.bus
            .publish_raw(
                &agentos_e2e::subject("agentos.audit.bench"),
                payload.clone(),
            )
            .await?;
    }
    println!(
        "jetstream publish (sync, 1 KiB):  {:>8.0} msg/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    let kv = p.bus.kv(Bucket::Usage).await?;
    let t = Instant::now();
    for i in 0..n {
        kv.put(
            &agentos_e2e::key(&format!("bench.k{}", i % 100)),
            payload.clone(),
        )
        .await?;
    }
    println!(
        "kv put (sequential, 1 KiB):       {:>8.0} ops/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (kv, payload) = (kv.clone(), payload.clone());
            async move {
                kv.put(&agentos_e2e::key(&format!("bench.c{}", i % 100)), payload)
                    .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<Result<u64, Error>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "kv put (32 concurrent, 1 KiB):    {:>8.0} ops/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cpu_report(p: &Platform) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = p
        .procs
        .iter()
        .map(|c| (c.name.clone(), cpu_secs(c.pid())))
        .collect();
    out.push(("nats-server".into(), cpu_secs(p.nats.pid())));
    out.push(("bench client".into(), cpu_secs(std::process::id())));
    out
}

async fn one_run(p: &Platform) -> Result<Duration> {
    let t = Instant::now();
    let id = p.start_run("bench", "go").await?;
    let done = p.wait_terminal(&id, Duration::from_secs(120)).await?;
    anyhow::ensure!(done["status"] == "completed", "run {id}: {done}");
    Ok(t.elapsed())
}

/// Like [`one_run`], as the holder of `token`.
async fn one_run_as(p: &Platform, token: &str) -> Result<Duration> {
    let t = Instant::now();
    let id = p.start_run_as(token, "bench", "go").await?;
    loop {
        let (_, done) = p
            .send_as(
                token,
                reqwest::Method::GET,
                &format!("/v1/runs/{id}/wait?timeout_s=5"),
                None,
            )
            .await?;
        match done["status"].as_str() {
            Some("completed") => return Ok(t.elapsed()),
            Some("failed" | "cancelled" | "expired") => anyhow::bail!("run {id}: {done}"),
            _ => {}
        }
    }
}

/// Registers tenant `id` with `quotas` (admin API).
async fn register_tenant(p: &Platform, id: &str, quotas: serde_json::Value) -> Result<()> {
    let admin = agentos_e2e::mint_with_roles("ops", "admin")?;
    let body = json!({"id": id, "quotas": quotas});
    let (s, v) = p
        .send_as(
            &admin,
            reqwest::Method::POST,
            "/v1/admin/tenants",
            Some(&body),
        )
        .await?;
    anyhow::ensure!(s == 201, "tenant {id}: {s} {v}");
    Ok(())
}

/// The quotas' cost at concurrency 1 on the same machine state: runs of a tenant without quota
/// settings (`plain`) and of the bench tenant, alternating (each pair in turn order), so both
/// see the same load, noise and caches.
/// Returns the bench tenant's runs it made.
async fn paired(p: &Platform, pairs: usize) -> Result<usize> {
    let plain = agentos_e2e::mint("plain")?;
    register_tenant(p, "plain", json!({})).await?;
    let (s, v) = p
        .send_as(
            &plain,
            reqwest::Method::POST,
            "/v1/agents",
            Some(&agentos_e2e::echo_agent("bench")),
        )
        .await?;
    anyhow::ensure!(s == 201, "plain agent: {s} {v}");
    let (mut without, mut with, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs + 20 {
        let (a, b) = if i % 2 == 0 {
            let a = one_run_as(p, &plain).await?;
            (a, one_run(p).await?)
        } else {
            let b = one_run(p).await?;
            (one_run_as(p, &plain).await?, b)
        };
        if i >= 20 {
            without.push(a);
            with.push(b);
            diffs.push(b.as_secs_f64() - a.as_secs_f64());
        }
    }
    without.sort();
    with.sort();
    diffs.sort_by(f64::total_cmp);
    println!(
        "paired at concurrency 1 ({pairs} pairs, alternating): p50 without quotas {:.3} ms, with {:.3} ms; median of the pairs' differences {:+.3} ms",
        millis(percentile(&without, 0.5)),
        millis(percentile(&with, 0.5)),
        diffs[diffs.len() / 2] * 1e3
    );
    Ok(pairs + 20)
}

#[tokio::main]
async fn main() -> Result<()> {
    let (n, c) = agentos_e2e::bench_args(2000);
    let p = Platform::start(Options {
        orchestrators: 2,
        // Every process records and exports its metrics, as in production.
        metrics: true,
        ..Options::default()
    })
    .await
    .context("platform")?;
    // AGENTOS_BENCH_QUOTAS=budget: the bench tenant has a concurrency limit, a day's token
    // budget and run caps none of the runs reach (every run reserves, settles and releases);
    // =all adds a request rate none reaches (every HTTP request takes from it); =tenant
    // registers the tenant with no quota settings (the baseline the other two add to).
    let quotas = std::env::var("AGENTOS_BENCH_QUOTAS").unwrap_or_default();
    if !quotas.is_empty() {
        let mut q = json!({"concurrent_runs": 100_000, "tokens": {"per_day": 1_000_000_000_000u64},
            "run": {"max_tokens": 100_000}});
        match quotas.as_str() {
            "all" => q["rate"] = json!({"requests_per_second": 1_000_000, "burst": 1_000_000}),
            "tenant" => q = json!({}),
            _ => {}
        }
        register_tenant(&p, "acme", q).await?;
    }
    p.create_agent(agentos_e2e::echo_agent("bench")).await?;
    println!(
        "machine: {} cores; runs: scripted model + 1 echo tool call; 2 orchestrators; quotas: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quotas.is_empty() { "none" } else { &quotas }
    );
    nats_limits(&p, 2000).await?;

    for _ in 0..20 {
        one_run(&p).await?;
    }
    let mut lat = Vec::new();
    for _ in 0..200 {
        lat.push(one_run(&p).await?);
    }
    lat.sort();
    println!(
        "latency at concurrency 1 (HTTP submit → wait returns completed, 200 runs): p50 {:.2} ms, p99 {:.2} ms",
        millis(percentile(&lat, 0.5)),
        millis(percentile(&lat, 0.99))
    );

    // Runs of the bench tenant so far (warm-up and latency).
    let mut runs = 220;
    if !quotas.is_empty() && quotas != "tenant" {
        runs += paired(&p, 300).await?;
    }

    let before = cpu_report(&p);
    let t = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(0..n)
        .map(|_| one_run(&p))
        .buffer_unordered(c)
        .collect::<Vec<Result<Duration>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "throughput at concurrency {c} ({n} runs): {:.0} runs/s; latency p50 {:.1} ms, p99 {:.1} ms",
        n as f64 / secs,
        millis(percentile(&lat, 0.5)),
        millis(percentile(&lat, 0.99))
    );
    if !quotas.is_empty() && quotas != "tenant" {
        // Releases (and settles) land just after their runs end: wait for the last ones.
        let usage = agentos_e2e::eventually(
            "every budget hold released",
            Duration::from_secs(10),
            || async {
                let (status, usage) = p.get("/v1/usage?period=day").await.ok()?;
                (status == 200 && usage["scopes"][0]["holds"] == 0).then_some(usage)
            },
        )
        .await?;
        println!(
            "metered by the budget ledger: {} tokens over {} runs, {} holds left",
            usage["scopes"][0]["total"]["tokens"],
            n + runs,
            usage["scopes"][0]["holds"]
        );
    }
    println!("CPU during the throughput phase (seconds, over {secs:.1} s wall):");
    for ((name, after), (_, before)) in cpu_report(&p).into_iter().zip(before) {
        println!("  {name:<14} {:>6.2}", after - before);
    }
    Ok(())
}
