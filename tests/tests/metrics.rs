//! Metrics end to end: a real Prometheus (Debian's, `scripts/install-prometheus`) scrapes every
//! process of a running platform, and PromQL answers run counts by outcome and model tokens by
//! model; every process's output passes `promtool check metrics`; and 1,000 tenants making
//! runs leave the series count bounded (the `tenant` label allow-list).

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_e2e::{Options, Platform, Proc, SECRET, eventually, free_port};
use futures::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

/// Every scrape target: the edge's `/metrics` and each worker's own listener.
fn targets(p: &Platform) -> Vec<String> {
    let edge = p.edge_url.trim_start_matches("http://").to_owned();
    std::iter::once(edge)
        .chain(p.metrics_targets.iter().map(|(_, a)| a.clone()))
        .collect()
}

async fn scrape(p: &Platform, target: &str) -> String {
    let r = p
        .http
        .get(format!("http://{target}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(r.status(), 200, "{target}");
    r.text().await.expect("body")
}

/// Every series (name and labels, without the value) across every process, by process.
async fn series(p: &Platform) -> std::collections::BTreeSet<String> {
    let mut all = std::collections::BTreeSet::new();
    for t in targets(p) {
        for line in scrape(p, &t).await.lines() {
            if let Some((key, _value)) = line.rsplit_once(' ')
                && !line.starts_with('#')
            {
                all.insert(format!("{t} {key}"));
            }
        }
    }
    all
}

fn token(tenant: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "bench", "tenant": tenant, "roles": ["member"], "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("sign")
}

fn agent(id: &str, max_steps: u32) -> Value {
    json!({
        "id": id, "model": "scripted", "tools": ["echo"], "max_steps": max_steps,
        "model_config": {"script": [
            {"tool_calls": [{"name": "echo", "arguments": {"n": 1}}]},
            {"text": "done"}
        ]}
    })
}

/// Creates the agent and runs it to its end as `tenant`; the terminal status.
async fn run_as(p: &Platform, tenant: &str, max_steps: u32) -> String {
    let tok = token(tenant);
    let post = reqwest::Method::POST;
    let (s, v) = p
        .send_as(
            &tok,
            post.clone(),
            "/v1/agents",
            Some(&agent("a", max_steps)),
        )
        .await
        .expect("agent");
    assert!(s == 201 || s == 409, "{s} {v}");
    let body = json!({"agent_id": "a", "input": "go"});
    let (s, v) = p
        .send_as(&tok, post, "/v1/runs", Some(&body))
        .await
        .expect("run");
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let (_, v) = p
        .send_as(
            &tok,
            reqwest::Method::GET,
            &format!("/v1/runs/{id}/wait?timeout_s=60"),
            None,
        )
        .await
        .expect("wait");
    v["status"].as_str().unwrap_or("?").to_owned()
}

async fn platform() -> Platform {
    Platform::start(Options {
        metrics: true,
        env: vec![("AGENTOS_METRICS_TENANTS".into(), "acme".into())],
        ..Options::default()
    })
    .await
    .expect("platform")
}

/// Debian's Prometheus scraping `targets` every second; killed on drop.
struct Prometheus {
    url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("dir");
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "agentos",
                "sample_limit": 5000,
                "label_limit": 12,
                "static_configs": [{"targets": targets}],
            }],
        });
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config.to_string()).expect("config"); // JSON is YAML
        let port = free_port().expect("port");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus: install it with ./scripts/install-prometheus");
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            _proc: Proc::new("prometheus", child),
            _dir: dir,
        }
    }

    /// An instant query's result vector.
    async fn query(&self, http: &reqwest::Client, q: &str) -> Option<Vec<Value>> {
        let r = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

/// `{label value: sample value}` of a query's result.
fn by(result: &[Value], label: &str) -> std::collections::BTreeMap<String, f64> {
    result
        .iter()
        .filter_map(|r| {
            let k = r["metric"][label].as_str()?.to_owned();
            let v = r["value"][1].as_str()?.parse().ok()?;
            Some((k, v))
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_runs_by_outcome_and_tokens_by_model() {
    let p = platform().await;
    for _ in 0..3 {
        assert_eq!(run_as(&p, "acme", 8).await, "completed");
    }
    // One step allowed, two needed: failed (max_steps_exceeded).
    assert_eq!(run_as(&p, "globex", 1).await, "failed");

    let prom = Prometheus::start(&targets(&p)).await;
    let q = "sum by (outcome) (agentos_runs_total)";
    let outcomes = eventually(
        "runs by outcome in Prometheus",
        Duration::from_secs(60),
        || async {
            let r = by(&prom.query(&p.http, q).await?, "outcome");
            (r.get("completed") == Some(&3.0) && r.get("failed") == Some(&1.0)).then_some(r)
        },
    )
    .await
    .expect("query");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");

    let q = "sum by (model) (agentos_model_input_tokens_total + agentos_model_output_tokens_total)";
    let tokens = eventually("tokens by model", Duration::from_secs(30), || async {
        let r = by(&prom.query(&p.http, q).await?, "model");
        r.get("scripted").is_some_and(|v| *v > 0.0).then_some(r)
    })
    .await
    .expect("query");
    assert_eq!(tokens.keys().collect::<Vec<_>>(), ["scripted"]);

    // The allow-listed tenant by name, the other one as `other`.
    let q = "sum by (tenant) (agentos_runs_total)";
    let tenants = by(&prom.query(&p.http, q).await.expect("query"), "tenant");
    assert_eq!(tenants.get("acme"), Some(&3.0), "{tenants:?}");
    assert_eq!(tenants.get("other"), Some(&1.0), "{tenants:?}");

    // Every process is up, and none exceeded the scrape limits.
    // (Prometheus scrapes each target on its own schedule: wait until it has seen them all.)
    let want = targets(&p).len();
    let up = eventually("every target scraped", Duration::from_secs(30), || async {
        let up = by(&prom.query(&p.http, "up").await?, "instance");
        (up.len() == want).then_some(up)
    })
    .await
    .expect("up");
    assert!(up.values().all(|v| *v == 1.0), "{up:?}");

    // HTTP requests by matched route (a template, never a raw path) and status class.
    let q =
        r#"sum by (route, status_class) (agentos_http_requests_total{route="/v1/runs/{id}/wait"})"#;
    let waits = prom.query(&p.http, q).await.expect("query");
    assert_eq!(
        by(&waits, "status_class").get("2xx"),
        Some(&4.0),
        "{waits:?}"
    );
}

#[tokio::test]
async fn every_process_passes_promtool_check_metrics() {
    let p = platform().await;
    assert_eq!(run_as(&p, "acme", 8).await, "completed");
    // The poller publishes the consumer gauges within 5 s.
    eventually("queue gauges", Duration::from_secs(30), || async {
        let mut all = String::new();
        for t in targets(&p) {
            all += &scrape(&p, &t).await;
        }
        all.contains("agentos_consumer_ack_pending_messages")
            .then_some(())
    })
    .await
    .expect("gauges");
    for t in targets(&p) {
        let text = scrape(&p, &t).await;
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{t}: {said}\n{text}"
        );
    }
}

#[tokio::test]
async fn a_thousand_tenants_leave_the_series_count_bounded() {
    let p = platform().await;
    assert_eq!(run_as(&p, "acme", 8).await, "completed");
    assert_eq!(run_as(&p, "tenant-0", 8).await, "completed");
    // The first scrape adds the series of `/metrics` itself: count from the second.
    series(&p).await;
    let before = series(&p).await;
    let statuses: Vec<String> = futures::stream::iter(1..1000)
        .map(|i| {
            let p = &p;
            async move { run_as(p, &format!("tenant-{i}"), 8).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| s == "completed"), "{statuses:?}");
    let after = series(&p).await;
    let added: Vec<_> = after.difference(&before).collect();
    eprintln!(
        "series across all processes: {} after 2 tenants, {} after 1,001 tenants; added: {added:#?}",
        before.len(),
        after.len()
    );
    let tenants: std::collections::BTreeSet<&str> = after
        .iter()
        .filter_map(|s| s.split("tenant=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(tenants, ["acme", "other"].into(), "tenant label values");
    // What may still appear: histogram series of an outcome or route seen for the first time
    // (the 999 runs are new only in number, not in kind), never per tenant.
    assert!(added.iter().all(|s| !s.contains("tenant-")), "{added:?}");
    assert!(
        after.len() <= before.len() + 40,
        "{} → {}",
        before.len(),
        after.len()
    );
}
