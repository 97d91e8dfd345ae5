//! The model-API benchmark: not a test. Requests/s and added latency of
//! edge → bus → model worker → upstream against calling the same upstream directly, at
//! concurrency 1 and C, streamed and not; and LiteLLM's proxy in front of the same upstream when
//! a `litellm` executable is on PATH (`pip install 'litellm[proxy]'`).
//!
//! `cargo build --release -p agentos-cli && cargo run --release -p agentos-e2e --example bench_chat -- [N] [C]`

// The benchmark's report is its stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use agentos_e2e::upstream::start_upstream;
use agentos_e2e::{Options, Platform, eventually, millis, percentile};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;

struct Target {
    name: &'static str,
    url: String,
    token: Option<String>,
    model: &'static str,
}

async fn one(http: &reqwest::Client, t: &Target, stream: bool) -> Result<Duration> {
    let started = Instant::now();
    let mut r = http.post(&t.url).json(&json!({"model": t.model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(tok) = &t.token {
        r = r.bearer_auth(tok);
    }
    let resp = r.send().await?;
    if !resp.status().is_success() {
        bail!(
            "{}: {} {}",
            t.name,
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let body = resp.text().await?;
    if !body.contains("Hello") && !body.contains("upstream") {
        bail!("{}: unexpected answer {body}", t.name);
    }
    Ok(started.elapsed())
}

/// Requests/s, p50, p99.
type Figures = (f64, Duration, Duration);

async fn measure(
    http: &reqwest::Client,
    t: &Target,
    stream: bool,
    n: usize,
    c: usize,
) -> Result<Figures> {
    for _ in 0..20.min(n) {
        one(http, t, stream).await?;
    }
    let started = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(0..n)
        .map(|_| one(http, t, stream))
        .buffer_unordered(c)
        .collect::<Vec<Result<Duration>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    Ok((
        n as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    ))
}

const LITELLM_KEY: &str = "sk-bench-master-key-0123456789abcdef";

async fn start_litellm(
    upstream: std::net::SocketAddr,
) -> Result<Option<(std::process::Child, Target)>> {
    let Some(bin) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("litellm"))
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(bin)
        .args([
            "--model",
            "openai/ok",
            "--api_base",
            &format!("http://{upstream}/v1"),
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
        ])
        .env("OPENAI_API_KEY", "sk-bench")
        .env("LITELLM_MASTER_KEY", LITELLM_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(
            std::env::temp_dir().join("agentos-bench-litellm.log"),
        )?)
        .spawn()
        .context("starting litellm")?;
    let http = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/health/liveliness");
    eventually("litellm to start", Duration::from_secs(120), || async {
        http.get(&health)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await?;
    Ok(Some((
        child,
        Target {
            name: "litellm proxy",
            url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
            token: Some(LITELLM_KEY.into()),
            model: "openai/ok",
        },
    )))
}

#[tokio::main]
async fn main() -> Result<()> {
    let (n, c) = agentos_e2e::bench_args(3000);
    let (addr, _up, _server) = start_upstream().await;
    let config = format!(
        "[model.routes.bench]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"ok\"\n"
    );
    let p = Platform::start(Options {
        config: Some(config),
        ..Options::default()
    })
    .await
    .context("platform")?;
    let mut targets = vec![
        Target {
            name: "upstream direct",
            url: format!("http://{addr}/v1/chat/completions"),
            token: None,
            model: "ok",
        },
        Target {
            name: "agentos edge",
            url: p.url("/v1/chat/completions"),
            token: Some(p.token.clone()),
            model: "bench",
        },
    ];
    let litellm = start_litellm(addr).await?;
    if let Some((_, t)) = &litellm {
        targets.push(Target {
            name: t.name,
            url: t.url.clone(),
            token: t.token.clone(),
            model: t.model,
        });
    } else {
        println!("(litellm not on PATH: pip install 'litellm[proxy]' to compare)");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    println!(
        "machine: {} cores; upstream: in-process fake answering at once",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<16} {:>6} {:>5} {:>10} {:>10} {:>10}",
        "target", "stream", "conc", "req/s", "p50 ms", "p99 ms"
    );
    let mut results: Vec<(String, bool, usize, Figures)> = Vec::new();
    for stream in [false, true] {
        for (conc, count) in [(1, n.min(500)), (c, n)] {
            for t in &targets {
                let count = if t.name == "litellm proxy" {
                    count.min(1000)
                } else {
                    count
                };
                let r = measure(&http, t, stream, count, conc).await?;
                println!(
                    "{:<16} {:>6} {:>5} {:>10.0} {:>10.2} {:>10.2}",
                    t.name,
                    stream,
                    conc,
                    r.0,
                    millis(r.1),
                    millis(r.2)
                );
                results.push((t.name.to_owned(), stream, conc, r));
            }
        }
    }
    for stream in [false, true] {
        for conc in [1, c] {
            let get = |name: &str| {
                results
                    .iter()
                    .find(|(n, s, k, _)| n == name && *s == stream && *k == conc)
                    .map(|r| r.3)
            };
            if let (Some(d), Some(e)) = (get("upstream direct"), get("agentos edge")) {
                println!(
                    "added by agentos (stream {stream}, concurrency {conc}): p50 +{:.2} ms, p99 +{:.2} ms",
                    millis(e.1.saturating_sub(d.1)),
                    millis(e.2.saturating_sub(d.2))
                );
            }
        }
    }
    if let Some((mut child, _)) = litellm {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}
