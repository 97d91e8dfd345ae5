//! Soak: runs at a steady rate for a long while, through the edge, two orchestrators and the
//! workers. Every run completes (none lost), and the memory of every process levels off: its
//! resident set grows by at most a quarter (or 16 MiB) over the second half of the soak, when
//! caches and pools have long been warm. 600 runs over 30 s by default; 10,000 runs over
//! 10 minutes with `AGENTOS_LONG_TESTS=1`. Prints every process's RSS at each quarter.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentos_e2e::{Options, Platform, rss_kib, try_submit};
use serde_json::Value;

const CLIENTS: usize = 16;

fn plan() -> (usize, Duration) {
    if std::env::var_os("AGENTOS_LONG_TESTS").is_some() {
        (10_000, Duration::from_secs(600))
    } else {
        (600, Duration::from_secs(30))
    }
}

/// Every process of the platform: name and pid.
fn processes(p: &Platform) -> Vec<(String, u32)> {
    p.procs
        .iter()
        .enumerate()
        .map(|(i, proc)| (format!("{}#{i}", proc.name), proc.pid()))
        .chain([("nats-server".to_owned(), p.nats.pid())])
        .collect()
}

/// One run: submitted (retried with its idempotency key until accepted), then waited for.
async fn one_run(http: &reqwest::Client, edge: &str, token: &str, i: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let key = format!("soak-{i}");
        if let Some(id) = try_submit(http, edge, token, &key, "soak", &format!("soak {i}")).await {
            let done: Value = http
                .get(format!("{edge}/v1/runs/{id}/wait?timeout_s=60"))
                .bearer_auth(token)
                .send()
                .await
                .expect("wait")
                .json()
                .await
                .expect("wait json");
            return done;
        }
        assert!(Instant::now() < deadline, "run soak-{i} never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steady_load_loses_no_run_and_memory_levels_off() {
    let (n, span) = plan();
    let p = Platform::start(Options {
        orchestrators: 2,
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(agentos_e2e::echo_agent("soak"))
        .await
        .expect("agent");

    let procs = processes(&p);
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, edge, token) = (p.http.clone(), p.edge_url.clone(), p.token.clone());
        let (next, finished) = (next.clone(), finished.clone());
        clients.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return done;
                }
                // Paced: run i starts no sooner than its share of the span.
                let due = started + span.mul_f64(i as f64 / n as f64);
                tokio::time::sleep_until(due.into()).await;
                done.push(one_run(&http, &edge, &token, i).await);
                finished.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // RSS at each quarter of the runs.
    let mut samples: Vec<Vec<u64>> = Vec::new();
    for quarter in 1..=4 {
        let goal = n * quarter / 4;
        while finished.load(Ordering::SeqCst) < goal {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                started.elapsed() < span * 3 + Duration::from_secs(120),
                "the soak stalled at {} of {n} runs",
                finished.load(Ordering::SeqCst)
            );
        }
        samples.push(procs.iter().map(|(_, pid)| rss_kib(*pid)).collect());
    }
    let mut runs = Vec::new();
    for c in clients {
        runs.extend(c.await.expect("client"));
    }
    let elapsed = started.elapsed();

    assert_eq!(runs.len(), n, "every run answered");
    let ids: HashSet<&str> = runs.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), n, "one run per submission");
    let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] != "completed").collect();
    assert!(
        failed.is_empty(),
        "{} runs not completed: {:?}",
        failed.len(),
        failed.first()
    );

    eprintln!(
        "soak: {n} runs in {:.0} s ({:.1} runs/s), all completed; RSS (MiB) at each quarter:",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    for (k, (name, _)) in procs.iter().enumerate() {
        let mib: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1}", s[k] as f64 / 1024.0))
            .collect();
        eprintln!("  {name:<16} {}", mib.join(" → "));
    }
    for (k, (name, _)) in procs.iter().enumerate() {
        let (half, end) = (samples[1][k], samples[3][k]);
        let allowed = (half / 4).max(16 * 1024);
        assert!(
            end <= half + allowed,
            "{name} grew from {half} KiB to {end} KiB over the second half of the soak"
        );
    }
}
