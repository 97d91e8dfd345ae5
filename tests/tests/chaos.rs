//! Chaos: random `kill -9`s of edges, orchestrators, model and tool workers while runs flow.
//! Two of each run; a killed process is started again at once, as a supervisor would. Clients
//! retry a submission with its `Idempotency-Key`, and a wait, on the other edge. Every run
//! reaches a terminal state, exactly once: one terminal event, each step's model call completed
//! once, each tool call with one outcome (a tool worker killed mid-call may leave its call
//! `tool_timeout`, which the model sees), and no run id twice. 300 runs and 12 kills by default;
//! 5,000 runs and 100 kills with `AGENTOS_LONG_TESTS=1`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentos_bus::envelope::EventData;
use agentos_bus::id::{RunId, Tenant};
use agentos_e2e::{Options, Platform, eventually, try_submit};
use serde_json::Value;

const CLIENTS: usize = 16;

fn plan() -> (usize, usize) {
    if std::env::var_os("AGENTOS_LONG_TESTS").is_some() {
        (5_000, 100)
    } else {
        (300, 12)
    }
}

/// Submits run `i` through either edge until one accepts it, then waits for its end on either.
async fn one_run(http: &reqwest::Client, edges: &[String; 2], token: &str, i: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut k = i;
    let id = loop {
        let edge = &edges[k % 2];
        k += 1;
        let key = format!("chaos-{i}");
        if let Some(id) = try_submit(http, edge, token, &key, "chaos", &format!("chaos {i}")).await
        {
            break id;
        }
        assert!(Instant::now() < deadline, "run chaos-{i} never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let edge = &edges[k % 2];
        k += 1;
        let waited = http
            .get(format!("{edge}/v1/runs/{id}/wait?timeout_s=30"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        if let Ok(r) = waited
            && let Ok(v) = r.json::<Value>().await
            && matches!(
                v["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "expired")
            )
        {
            return id;
        }
        assert!(Instant::now() < deadline, "run {id} never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The processes chaos may kill, by index in `procs`.
fn victims(p: &Platform) -> Vec<usize> {
    p.procs
        .iter()
        .enumerate()
        .filter(|(_, proc)| {
            ["edge", "orchestrator", "model", "tool"]
                .iter()
                .any(|n| proc.name.starts_with(n))
        })
        .map(|(i, _)| i)
        .collect()
}

/// `kill -9` of `procs[i]` and the same process started again (an edge on its own port).
async fn kill_and_restart(p: &mut Platform, i: usize, edge_ports: &HashMap<usize, String>) {
    p.procs[i].kill();
    let name = p.procs[i].name.clone();
    let args: Vec<String> = match name.as_str() {
        "edge" => vec!["edge".into(), "--listen".into(), edge_ports[&i].clone()],
        "orchestrator" => vec!["worker".into(), "orchestrator".into()],
        "model" => vec!["worker".into(), "model".into()],
        _ => vec!["worker".into(), "tool".into()],
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    p.spawn(&name, &args).expect("start again");
    // Keep the index stable: the new process takes the killed one's place.
    let new = p.procs.pop().expect("the new process");
    p.procs[i] = new;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_of_every_component_lose_and_duplicate_no_run() {
    let (n, kills) = plan();
    let mut p = Platform::start(Options {
        orchestrators: 2,
        ack_wait: "2s",
        env: vec![
            ("AGENTOS_MODEL_TIMEOUT".into(), "5s".into()),
            ("AGENTOS_TOOL_TIMEOUT".into(), "5s".into()),
        ],
        ..Options::default()
    })
    .await
    .expect("platform");
    let edge2 = p.spawn_edge().await.expect("a second edge");
    p.spawn("model", &["worker", "model"])
        .expect("a second model worker");
    p.spawn("tool", &["worker", "tool"])
        .expect("a second tool worker");
    p.create_agent(agentos_e2e::echo_agent("chaos"))
        .await
        .expect("agent");
    // Each edge's listen address, by its index in `procs`.
    let edges = [p.edge_url.clone(), edge2];
    let edge_ports: HashMap<usize, String> = p
        .procs
        .iter()
        .enumerate()
        .filter(|(_, proc)| proc.name == "edge")
        .zip(&edges)
        .map(|((i, _), url)| (i, url.trim_start_matches("http://").to_owned()))
        .collect();

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, edges, token) = (p.http.clone(), edges.clone(), p.token.clone());
        let (next, done) = (next.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return ids;
                }
                ids.push(one_run(&http, &edges, &token, i).await);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kills spread over the load: one each time another share of the runs has ended.
    let targets = victims(&p);
    let mut killed: HashMap<String, usize> = HashMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for k in 0..kills {
        let at = n * (k + 1) / (kills + 2);
        eventually(
            "the load reaches the next kill",
            Duration::from_secs(300),
            || async { (done.load(Ordering::SeqCst) >= at).then_some(()) },
        )
        .await
        .expect("load");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = targets[(seed % targets.len() as u64) as usize];
        *killed.entry(p.procs[i].name.clone()).or_default() += 1;
        kill_and_restart(&mut p, i, &edge_ports).await;
    }
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.expect("client"));
    }
    let elapsed = started.elapsed();

    assert_eq!(ids.len(), n);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        n,
        "no run id twice"
    );
    let tenant = Tenant::parse("acme").expect("tenant");
    let (mut completed, mut tool_timeouts) = (0, 0);
    for id in &ids {
        let run = RunId::parse(id).expect("run id");
        let journal = eventually("the whole journal", Duration::from_secs(30), || async {
            let j = p.bus.read_journal(&tenant, &run).await.ok()?;
            j.iter().any(|s| s.event.data.is_terminal()).then_some(j)
        })
        .await
        .expect("journal");
        let events: Vec<&EventData> = journal.iter().map(|s| &s.event.data).collect();
        let terminal = events.iter().filter(|e| e.is_terminal()).count();
        assert_eq!(terminal, 1, "{id}: {events:?}");
        let mut steps = HashSet::new();
        for e in &events {
            if let EventData::ModelCompleted { step, .. } = e {
                assert!(steps.insert(*step), "{id}: step {step} completed twice");
            }
        }
        let outcomes = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    EventData::ToolCompleted { .. } | EventData::ToolFailed { .. }
                )
            })
            .count();
        let started_calls = events
            .iter()
            .filter(|e| matches!(e, EventData::ToolStarted { .. }))
            .count();
        assert_eq!(started_calls, 1, "{id}: one tool call: {events:?}");
        assert_eq!(outcomes, 1, "{id}: one outcome: {events:?}");
        for e in &events {
            if let EventData::ToolFailed { error, .. } = e {
                assert!(
                    ["tool_timeout", "tool_unavailable"].contains(&error.code.as_str()),
                    "{id}: {events:?}"
                );
                tool_timeouts += 1;
            }
        }
        if matches!(events.last(), Some(EventData::RunCompleted { .. })) {
            completed += 1;
        }
    }
    eprintln!(
        "chaos: {n} runs under {kills} kill -9s ({killed:?}) in {:.1} s: every run ended once, \
         {completed} completed, {} failed; {tool_timeouts} tool calls timed out over a kill",
        elapsed.as_secs_f64(),
        n - completed
    );
    assert_eq!(completed, n, "every run completes");
}
