//! Quotas end to end (real nats-server, the real binary): a budget that fits exactly 50 of 200
//! concurrent runs through two edges and two orchestrators, then the same with the chat API; a
//! concurrency limit of 3 under 100 queued runs while another tenant's runs pass; `kill -9` of
//! the orchestrator holding a reserved run; the admin API naming a wrong quota field.

use std::time::{Duration, Instant};

use agentos_bus::envelope::{Event, EventData};
use agentos_bus::id::{RunId, Tenant};
use agentos_bus::key::{self, Scope};
use agentos_bus::quota::Ledger;
use agentos_e2e::{Options, Platform, eventually, millis, mint, mint_with_roles, percentile};
use serde_json::{Value, json};

async fn send(
    p: &Platform,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = p
        .http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("request");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

async fn admin_create_tenant(p: &Platform, body: Value) -> (u16, Value) {
    let admin = mint_with_roles("ops", "admin").expect("admin token");
    let (s, v, _) = send(
        p,
        &p.edge_url,
        &admin,
        reqwest::Method::POST,
        "/v1/admin/tenants",
        Some(&body),
    )
    .await;
    (s, v)
}

async fn ledger(p: &Platform, tenant: &str) -> Ledger {
    let t = Tenant::parse(tenant).expect("tenant");
    p.bus
        .budgets()
        .await
        .expect("budgets")
        .read(&key::ledger(&t, &Scope::Tenant))
        .await
        .expect("read ledger")
        .map(|v| v.value)
        .unwrap_or_default()
}

/// The tenant's ledger once every hold in it is released (within 30 s).
async fn released(p: &Platform, tenant: &str) -> Ledger {
    let what = format!("every hold of {tenant} released");
    eventually(&what, Duration::from_secs(30), || async {
        let l = ledger(p, tenant).await;
        l.holds.values().all(|h| h.dropped).then_some(l)
    })
    .await
    .expect("released")
}

async fn create_agent_as(p: &Platform, token: &str, body: &Value) {
    let (s, v, _) = send(
        p,
        &p.edge_url,
        token,
        reqwest::Method::POST,
        "/v1/agents",
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

async fn wait_terminal_as(p: &Platform, base: &str, token: &str, run: &str) -> Value {
    eventually("a terminal run", Duration::from_secs(120), || async {
        let (_, v, _) = send(
            p,
            base,
            token,
            reqwest::Method::GET,
            &format!("/v1/runs/{run}/wait?timeout_s=5"),
            None,
        )
        .await;
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(v)
    })
    .await
    .expect("terminal")
}

async fn journal(p: &Platform, tenant: &str, run: &str) -> Vec<Event> {
    let tenant = Tenant::parse(tenant).expect("tenant");
    let run = RunId::parse(run).expect("run id");
    p.bus
        .read_journal(&tenant, &run)
        .await
        .expect("journal")
        .into_iter()
        .map(|s| s.event)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_for_exactly_50_admits_50_of_200_runs_and_50_of_200_chat_completions() {
    let mut p = Platform::start(Options {
        orchestrators: 2,
        ..Options::default()
    })
    .await
    .expect("platform");
    let edge2 = p.spawn_edge().await.expect("another edge");
    let edges = [p.edge_url.clone(), edge2];
    let echo = json!({"id": "echo", "model": "scripted"});

    // The admin API names the wrong field.
    for (bad, param) in [
        (json!({"tokens": {"per_dya": 5}}), "quotas.tokens.per_dya"),
        (json!({"run": {"max_tokens": 0}}), "quotas.run.max_tokens"),
        (
            json!({"agents": {"echo": {"concurrent_runs": "two"}}}),
            "quotas.agents.echo.concurrent_runs",
        ),
    ] {
        let (s, v) = admin_create_tenant(&p, json!({"id": "acme", "quotas": bad})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_quotas")),
            "{v}"
        );
        assert_eq!(v["error"]["param"], param, "{v}");
    }

    // What one run uses, measured at a tenant without quotas.
    let probe = mint("probe").expect("token");
    create_agent_as(&p, &probe, &echo).await;
    let (s, v, _) = send(
        &p,
        &p.edge_url,
        &probe,
        reqwest::Method::POST,
        "/v1/runs",
        Some(&json!({"agent_id": "echo", "input": "one two three"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let done = wait_terminal_as(&p, &p.edge_url, &probe, v["id"].as_str().expect("id")).await;
    let per_run = done["usage"]["total_tokens"].as_u64().expect("usage");
    assert!(per_run > 0, "{done}");

    // acme: each run reserves its cap (exactly what it uses); the day's budget fits 50.
    let (s, v) = admin_create_tenant(
        &p,
        json!({"id": "acme", "quotas": {
        "tokens": {"per_day": 50 * per_run}, "run": {"max_tokens": per_run}}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    create_agent_as(&p, &p.token, &echo).await;
    let started = Instant::now();
    let submits = (0..200).map(|i| {
        let (p, base) = (&p, edges[i % 2].clone());
        async move {
            let (s, v, _) = send(
                p,
                &base,
                &p.token,
                reqwest::Method::POST,
                "/v1/runs",
                Some(&json!({"agent_id": "echo", "input": "one two three"})),
            )
            .await;
            assert_eq!(s, 201, "{v}");
            let id = v["id"].as_str().expect("id").to_owned();
            wait_terminal_as(p, &base, &p.token, &id).await
        }
    });
    let ended = futures::future::join_all(submits).await;
    let completed: Vec<&Value> = ended
        .iter()
        .filter(|r| r["status"] == "completed")
        .collect();
    let refused: Vec<&Value> = ended
        .iter()
        .filter(|r| r["error"]["code"] == "budget_exceeded")
        .collect();
    eprintln!(
        "200 runs ended in {:?}: {} completed, {} budget_exceeded",
        started.elapsed(),
        completed.len(),
        refused.len()
    );
    assert_eq!(completed.len(), 50, "exactly 50 fit");
    assert_eq!(refused.len(), 150, "the others fail budget_exceeded");
    let message = refused[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("tokens.per_day") && message.contains("resets at"),
        "{message}"
    );
    // A refused run never started: it used nothing.
    assert!(
        refused
            .iter()
            .all(|r| r["usage"]["total_tokens"] == 0 && r["started_at"].is_null())
    );
    let used: u64 = completed
        .iter()
        .map(|r| r["usage"]["total_tokens"].as_u64().unwrap_or(0))
        .sum();
    let l = released(&p, "acme").await;
    assert_eq!(
        (l.day.used.tokens, l.total.tokens),
        (used, used),
        "metered == the runs' own usage"
    );
    // The caller sees the same through GET /v1/usage.
    let (s, v) = p.get("/v1/usage?period=day").await.expect("usage");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["scopes"][0]["used"]["tokens"], used);
    assert_eq!(v["scopes"][0]["remaining"]["tokens"], 0);
    // Metered by agent and model too.
    assert_eq!(v["scopes"][0]["by_agent"]["echo"]["tokens"], used, "{v}");
    assert_eq!(
        v["scopes"][0]["by_model"]["scripted"]["tokens"], used,
        "{v}"
    );

    // A run published straight onto NATS is held to the same budget, by the orchestrator.
    let direct = agentos_bus::envelope::RunRequest {
        run_id: RunId::new(),
        tenant: Tenant::parse("acme").expect("tenant"),
        agent_id: agentos_bus::id::AgentId::parse("echo").expect("agent id"),
        agent: None,
        input: "one two three".into(),
        thread_id: None,
        multitask_strategy: None,
        metadata: Default::default(),
        submitted_at: agentos_bus::envelope::now(),
        expires_at: None,
    };
    let direct_id = direct.run_id.to_string();
    p.bus
        .submit(
            &agentos_bus::envelope::SubmitMessage::Run(Box::new(direct)),
            &agentos_bus::SubmitMeta::default(),
        )
        .await
        .expect("direct submit");
    let r = wait_terminal_as(&p, &p.edge_url, &p.token, &direct_id).await;
    assert_eq!(r["error"]["code"], "budget_exceeded", "{r}");
    assert_eq!(r["created_by"], "nats:acme", "{r}");

    // The chat API: 200 concurrent completions, a budget for 50.
    let body =
        json!({"model": "scripted", "messages": [{"role": "user", "content": "one two three"}]});
    let (s, v, _) = send(
        &p,
        &p.edge_url,
        &probe,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&body),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let per_chat = v["usage"]["total_tokens"].as_u64().expect("usage");
    let (s, v) = admin_create_tenant(
        &p,
        json!({"id": "chatco", "quotas": {
        "tokens": {"per_day": 50 * per_chat}, "run": {"max_tokens": per_chat}}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let chatco = mint("chatco").expect("token");
    let calls = (0..200).map(|i| {
        let (p, base, token, body) = (&p, edges[i % 2].clone(), chatco.clone(), body.clone());
        async move {
            send(
                p,
                &base,
                &token,
                reqwest::Method::POST,
                "/v1/chat/completions",
                Some(&body),
            )
            .await
        }
    });
    let replies = futures::future::join_all(calls).await;
    let ok: Vec<_> = replies.iter().filter(|r| r.0 == 200).collect();
    let over: Vec<_> = replies.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(
        (ok.len(), over.len()),
        (50, 150),
        "exactly 50 completions fit"
    );
    let (_, e, headers) = over[0];
    assert_eq!(e["error"]["code"], "budget_exceeded", "{e}");
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    assert_eq!(e["error"]["param"], "quotas.tokens.per_day", "{e}");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=86_400).contains(&retry), "Retry-After {retry}");
    let chat_used: u64 = ok
        .iter()
        .map(|r| r.1["usage"]["total_tokens"].as_u64().unwrap_or(0))
        .sum();
    let l = released(&p, "chatco").await;
    assert_eq!(
        l.day.used.tokens, chat_used,
        "metered == the completions' usage"
    );
}

fn sleeper(id: &str, ms: u64) -> Value {
    json!({"id": id, "model": "scripted", "tools": ["sleep"], "model_config": {"script": [
        {"tool_calls": [{"name": "sleep", "arguments": {"ms": ms}}]},
        {"text": "slept"}
    ]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_limit_of_3_holds_under_100_queued_runs_and_other_tenants_pass() {
    let mut p = Platform::start(Options {
        orchestrators: 2,
        ..Options::default()
    })
    .await
    .expect("platform");
    let edge2 = p.spawn_edge().await.expect("another edge");
    let edges = [p.edge_url.clone(), edge2];
    let (s, v) =
        admin_create_tenant(&p, json!({"id": "acme", "quotas": {"concurrent_runs": 3}})).await;
    assert_eq!(s, 201, "{v}");
    create_agent_as(&p, &p.token, &sleeper("nap", 100)).await;
    let calm = mint("calm").expect("token");
    create_agent_as(&p, &calm, &sleeper("nap", 100)).await;

    // The other tenant's latency alone first.
    let mut alone = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (_, v, _) = send(
            &p,
            &p.edge_url,
            &calm,
            reqwest::Method::POST,
            "/v1/runs",
            Some(&json!({"agent_id": "nap", "input": "x"})),
        )
        .await;
        wait_terminal_as(&p, &p.edge_url, &calm, v["id"].as_str().expect("id")).await;
        alone.push(t.elapsed());
    }

    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..100 {
        let (s, v, _) = send(
            &p,
            &edges[i % 2],
            &p.token,
            reqwest::Method::POST,
            "/v1/runs",
            Some(&json!({"agent_id": "nap", "input": "x"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    // Meanwhile, the other tenant's runs.
    let mut during = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (_, v, _) = send(
            &p,
            &p.edge_url,
            &calm,
            reqwest::Method::POST,
            "/v1/runs",
            Some(&json!({"agent_id": "nap", "input": "x"})),
        )
        .await;
        wait_terminal_as(&p, &p.edge_url, &calm, v["id"].as_str().expect("id")).await;
        during.push(t.elapsed());
    }
    let backlog_left = {
        let l = ledger(&p, "acme").await;
        l.running()
    };
    for id in &ids {
        let r = wait_terminal_as(&p, &p.edge_url, &p.token, id).await;
        assert_eq!(r["status"], "completed", "{r}");
    }
    let all_done = started.elapsed();
    // From the journals: never more than 3 active at once.
    let mut edges_in_time = Vec::new();
    for id in &ids {
        let events = journal(&p, "acme", id).await;
        let start = events
            .iter()
            .find(|e| matches!(e.data, EventData::RunStarted { .. }))
            .map(|e| e.ts)
            .expect("run.started");
        let end = events.last().map(|e| e.ts).expect("events");
        edges_in_time.push((start, 1i32));
        edges_in_time.push((end, -1i32));
    }
    edges_in_time.sort();
    let (mut active, mut most) = (0, 0);
    for (_, d) in edges_in_time {
        active += d;
        most = most.max(active);
    }
    alone.sort();
    during.sort();
    eprintln!(
        "100 runs at concurrent_runs=3 took {all_done:?}; most active at once {most}; other tenant p50/max alone {:.0}/{:.0} ms, during the backlog {:.0}/{:.0} ms (backlog still holding {backlog_left} slots then)",
        millis(percentile(&alone, 0.5)),
        millis(percentile(&alone, 1.0)),
        millis(percentile(&during, 0.5)),
        millis(percentile(&during, 1.0)),
    );
    assert!(most <= 3, "{most} runs were active at once");
    assert_eq!(most, 3, "the limit was used");
    assert!(
        percentile(&during, 1.0) < Duration::from_secs(3),
        "the other tenant waited behind the backlog: {during:?}"
    );
    let l = released(&p, "acme").await;
    assert_eq!(l.running(), 0);

    // With `reject`, a run over the limit fails quota_exceeded instead of waiting.
    let admin = mint_with_roles("ops", "admin").expect("admin token");
    let (s, v, _) = send(
        &p,
        &p.edge_url,
        &admin,
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        Some(&json!({"quotas": {"concurrent_runs": 1, "over_concurrency": "reject"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    create_agent_as(&p, &p.token, &sleeper("long", 3000)).await;
    // The orchestrators' tenant cache (2 s) sees the change once a run is refused.
    let refused = eventually(
        "a run refused over the limit",
        Duration::from_secs(30),
        || async {
            let first = p.start_run("long", "x").await.ok()?;
            let second = p.start_run("long", "x").await.ok()?;
            let a = p
                .wait_terminal(&first, Duration::from_secs(60))
                .await
                .ok()?;
            let b = p
                .wait_terminal(&second, Duration::from_secs(60))
                .await
                .ok()?;
            [a, b]
                .into_iter()
                .find(|r| r["error"]["code"] == "quota_exceeded")
        },
    )
    .await
    .expect("quota_exceeded");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("concurrent_runs"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_orchestrator_holding_a_reserved_run_returns_the_reservation_to_zero() {
    let mut p = Platform::start(Options {
        orchestrators: 1,
        ack_wait: "2s",
        ..Options::default()
    })
    .await
    .expect("platform");
    let (s, v) = admin_create_tenant(
        &p,
        json!({"id": "acme", "quotas": {
        "concurrent_runs": 2, "tokens": {"per_day": 1_000_000}, "run": {"max_tokens": 1000}}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    p.create_agent(sleeper("nap", 3000)).await.expect("agent");
    let run = p.start_run("nap", "x").await.expect("run");
    // Wait until the run holds its reservation and sleeps in its tool call.
    eventually(
        "the run reserved and in its tool call",
        Duration::from_secs(30),
        || async {
            let events = journal(&p, "acme", &run).await;
            let l = ledger(&p, "acme").await;
            // The first model call's settle goes in the background: wait for it too.
            (l.holds.get(&run).is_some_and(|h| h.settled.tokens > 0)
                && events
                    .iter()
                    .any(|e| matches!(e.data, EventData::ToolStarted { .. })))
            .then_some(())
        },
    )
    .await
    .expect("reserved");
    // The hold keeps the cap minus what the first model call settled.
    let l = ledger(&p, "acme").await;
    assert_eq!(l.outstanding().tokens, 1000 - l.holds[&run].settled.tokens);
    let holder = p
        .procs
        .iter()
        .position(|x| x.name == "orchestrator")
        .expect("orchestrator");
    p.procs[holder].kill();
    p.spawn_orchestrator().expect("another orchestrator");
    let done = p
        .wait_terminal(&run, Duration::from_secs(90))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    let l = released(&p, "acme").await;
    assert_eq!((l.running(), l.outstanding().tokens), (0, 0));
    assert_eq!(
        l.total.tokens,
        done["usage"]["total_tokens"].as_u64().expect("usage"),
        "metered == the run's usage"
    );
}

/// A run that waits for its caller longer than its hold's lease: the hold lapses (another run
/// takes the one slot meanwhile), and when the answer resumes the run it is held again and
/// its usage is still metered whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_waiting_longer_than_its_hold_lease_is_held_again_when_answered() {
    let p = Platform::start(Options {
        env: vec![("AGENTOS_QUOTA_LEASE".into(), "2s".into())],
        ..Options::default()
    })
    .await
    .expect("platform");
    let (s, v) = admin_create_tenant(
        &p,
        json!({"id": "acme", "quotas": {
        "concurrent_runs": 1, "tokens": {"per_day": 1_000_000}, "run": {"max_tokens": 1000}}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    p.create_agent(json!({
        "id": "asker", "model": "scripted",
        "client_tools": [{"name": "lookup", "description": "asks the caller",
            "parameters": {"type": "object"}}],
        "model_config": {"script": [
            {"tool_calls": [{"name": "lookup", "arguments": {}}]},
            {"text": "the caller said {last_tool_output}"}
        ]}
    }))
    .await
    .expect("agent");
    p.create_agent(json!({"id": "plain", "model": "scripted",
        "model_config": {"script": [{"text": "hi"}]}}))
        .await
        .expect("agent");
    let waiting = p.start_run("asker", "ask").await.expect("run");
    let parked = eventually("the run waiting", Duration::from_secs(30), || async {
        let (_, v, _) = send(
            &p,
            &p.edge_url,
            &p.token,
            reqwest::Method::GET,
            &format!("/v1/runs/{waiting}"),
            None,
        )
        .await;
        (v["status"] == "requires_action").then_some(v)
    })
    .await
    .expect("requires_action");
    // Its hold lapses after 2 s; then another run takes the one slot and completes.
    let expires = ledger(&p, "acme").await.holds[&waiting].expires;
    eventually("the hold's lease over", Duration::from_secs(10), || async {
        (time::OffsetDateTime::now_utc().unix_timestamp() > expires).then_some(())
    })
    .await
    .expect("lapsed");
    let other = p.start_run("plain", "x").await.expect("run");
    let done = p
        .wait_terminal(&other, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    let l = ledger(&p, "acme").await;
    assert!(
        !l.holds.contains_key(&waiting),
        "the lapsed hold was reclaimed"
    );

    // The answer resumes the run: held again, then released with its whole usage counted.
    let call = parked["required_action"]["tool_calls"][0]["call_id"]
        .as_str()
        .expect("call id")
        .to_owned();
    let (s, v, _) = send(
        &p,
        &p.edge_url,
        &p.token,
        reqwest::Method::POST,
        &format!("/v1/runs/{waiting}/tool_outputs"),
        Some(&json!({"tool_outputs": [{"call_id": call, "output": "42"}]})),
    )
    .await;
    assert!(s < 300, "{s} {v}");
    let resumed = p
        .wait_terminal(&waiting, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(resumed["status"], "completed", "{resumed}");
    let l = released(&p, "acme").await;
    assert_eq!((l.running(), l.outstanding().tokens), (0, 0));
    let used = |r: &Value| r["usage"]["total_tokens"].as_u64().expect("usage");
    assert_eq!(
        l.total.tokens,
        used(&resumed) + used(&done),
        "metered == the runs' usage"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_of_10_per_second_holds_across_two_edges_and_the_openai_sdk_backs_off() {
    let mut p = Platform::start(Options::default()).await.expect("platform");
    let edge2 = p.spawn_edge().await.expect("another edge");
    let edges = [p.edge_url.clone(), edge2];
    let (s, v) = admin_create_tenant(
        &p,
        json!({"id": "acme", "quotas": {"rate": {"requests_per_second": 10, "burst": 10}}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    // Eight clients hammer both edges for 10 s.
    let window = Duration::from_secs(10);
    let started = Instant::now();
    let clients = (0..8).map(|c| {
        let (p, edges) = (&p, edges.clone());
        async move {
            let (mut ok, mut limited, mut first_429) = (0u32, 0u32, None);
            let mut i = c;
            while started.elapsed() < window {
                let (s, v, h) = send(
                    p,
                    &edges[i % 2],
                    &p.token,
                    reqwest::Method::GET,
                    "/v1/agents",
                    None,
                )
                .await;
                i += 1;
                match s {
                    200 => ok += 1,
                    429 => {
                        limited += 1;
                        first_429.get_or_insert((v, h));
                    }
                    other => panic!("unexpected {other}: {v}"),
                }
            }
            (ok, limited, first_429)
        }
    });
    let results = futures::future::join_all(clients).await;
    let admitted: u32 = results.iter().map(|r| r.0).sum();
    let refused: u32 = results.iter().map(|r| r.1).sum();
    eprintln!("10 s at 10/s (burst 10) over two edges: {admitted} admitted, {refused} refused");
    // Documented drift on one machine (no clock skew): rate × T + burst.
    assert!(
        (95..=111).contains(&admitted),
        "{admitted} admitted in 10 s"
    );
    let (body, headers) = results.iter().find_map(|r| r.2.clone()).expect("a 429");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(headers["retry-after"], "1");
    let ms: u64 = headers["retry-after-ms"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("ms");
    assert!((1..=100).contains(&ms), "retry-after-ms {ms} at 10/s");
    assert_eq!(headers["x-ratelimit-limit-requests"], "10");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    // The refusals are counted in the edge's metrics (tenants not allow-listed are `other`).
    let metrics = p
        .http
        .get(p.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("agentos_quota_rejections_total{")
                && l.contains("code=\"rate_limited\"")),
        "no quota rejection counted: {metrics}"
    );

    // Tokens refill: after a quiet second, a burst of 10 passes again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut burst = 0;
    for i in 0..10 {
        let (s, _, _) = send(
            &p,
            &edges[i % 2],
            &p.token,
            reqwest::Method::GET,
            "/v1/agents",
            None,
        )
        .await;
        burst += u32::from(s == 200);
    }
    assert!(burst >= 9, "{burst} of 10 after a refill");

    // The official SDK's retry honours Retry-After: at 2/s with no burst, four calls in a row
    // meet 429s and all succeed.
    let admin = mint_with_roles("ops", "admin").expect("admin token");
    let (s, v, _) = send(
        &p,
        &p.edge_url,
        &admin,
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        Some(&json!({"quotas": {"rate": {"requests_per_second": 2, "burst": 1}}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // The other edge's tenant cache (2 s) may still have the old rate: this edge forgot it.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/openai_rate_limit.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("AGENTOS_BASE_URL", format!("{}/v1", p.edge_url))
        .env("AGENTOS_TOKEN", &p.token)
        .output()
        .await
        .expect("python3 with the openai package (tests/requirements.txt)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!("openai SDK under 2/s: {report}");
    assert_eq!(
        report["answers"],
        json!(["call 0", "call 1", "call 2", "call 3"])
    );
    let limited = report["limited"].as_array().expect("list");
    assert!(!limited.is_empty(), "the SDK met 429s: {report}");
    assert!(
        limited
            .iter()
            .all(|l| l["retry_after"] == "1" && l["remaining"] == "0"),
        "{report}"
    );
    // Four calls at 2/s cannot take less than 1.5 s: the SDK waited, it did not hammer.
    assert!(
        report["elapsed_s"].as_f64().unwrap_or(0.0) >= 1.4,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_by_its_cap_fails_budget_exceeded_and_keeps_its_partial_output() {
    let p = Platform::start(Options::default()).await.expect("platform");
    let (s, v) = admin_create_tenant(
        &p,
        json!({"id": "acme", "quotas": {"run": {"max_steps": 1}}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    p.create_agent(json!({"id": "two-steps", "model": "scripted", "tools": ["echo"], "model_config": {"script": [
        {"tool_calls": [{"name": "echo", "arguments": {"text": "halfway there"}}]},
        {"text": "done"}
    ]}}))
    .await
    .expect("agent");
    let run = p.start_run("two-steps", "go").await.expect("run");
    let r = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "budget_exceeded", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("run.max_steps"),
        "{r}"
    );
    // Step 2 started; its model call was refused before it was made.
    assert_eq!(r["steps"], 2, "{r}");
    assert!(
        r["output"]
            .as_str()
            .unwrap_or_default()
            .contains("halfway there"),
        "the partial output is kept: {r}"
    );
    assert!(r["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0, "{r}");
}
