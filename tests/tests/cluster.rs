//! A 3-node NATS cluster, every stream and bucket at R3, under a load of runs: `kill -9` of one
//! node (the leader of the journal stream), then a rolling restart (`kill -9` and start again)
//! of all three. Every run completes exactly once: no run lost, none duplicated (one
//! `run.completed`, one tool call, no step twice in its journal), and runs keep completing
//! while a node is down. 200 runs per phase; 1,000 with `AGENTOS_LONG_TESTS=1`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentos_bus::id::{RunId, Tenant};
use agentos_bus::provision::{STREAM_EVENTS, STREAM_RUNS};
use agentos_e2e::{Options, Platform, eventually};
use serde_json::{Value, json};

const CONCURRENCY: usize = 16;

fn runs_per_phase() -> usize {
    if std::env::var_os("AGENTOS_LONG_TESTS").is_some() {
        1_000
    } else {
        200
    }
}

/// Submits `n` runs (keys `{phase}-{i}`), `CONCURRENCY` at a time; each submission is retried
/// with its `Idempotency-Key` until accepted, so a failover costs time, never a run or a twin.
/// `submitted` counts accepted runs; returns the ids in order and the errors seen while retrying.
fn submit_load(
    p: &Platform,
    phase: &'static str,
    n: usize,
    submitted: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    let (http, url, token) = (
        p.http.clone(),
        format!("{}/v1/runs", p.edge_url),
        p.token.clone(),
    );
    tokio::spawn(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..CONCURRENCY {
            let (http, url, token, next, submitted) = (
                http.clone(),
                url.clone(),
                token.clone(),
                next.clone(),
                submitted.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return (ids, errors);
                    }
                    let body = json!({"agent_id": "adder", "input": format!("{phase} {i}")});
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        let sent = http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("Idempotency-Key", format!("{phase}-{i}"))
                            .timeout(Duration::from_secs(30))
                            .json(&body)
                            .send()
                            .await;
                        let outcome = match sent {
                            Ok(r) if r.status().is_success() => {
                                let v: Value = r.json().await.unwrap_or_default();
                                v["id"]
                                    .as_str()
                                    .map(|id| (i, id.to_owned()))
                                    .ok_or(v.to_string())
                            }
                            Ok(r) => Err(format!(
                                "{} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            )),
                            Err(e) => Err(e.to_string()),
                        };
                        match outcome {
                            Ok(pair) => {
                                ids.push(pair);
                                submitted.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Err(e) => {
                                assert!(
                                    Instant::now() < deadline,
                                    "run {phase}-{i} never accepted: {e}"
                                );
                                errors.push(e);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            }));
        }
        let mut all = Vec::new();
        let mut errors = Vec::new();
        for w in workers {
            let (ids, errs) = w.await.expect("submitter");
            all.extend(ids);
            errors.extend(errs);
        }
        all.sort();
        (all.into_iter().map(|(_, id)| id).collect(), errors)
    })
}

/// Every run completed, exactly once: one `run.completed` and no `run.failed`, one tool call
/// with one outcome, two model steps, in each journal. Returns how many tool calls failed over
/// the node's loss: `tool_unavailable` (no tool worker subscribed for 2 s while its connection
/// moved) or `tool_timeout` (the request or its reply went through the dead node). The run goes
/// on and the model sees the error; nothing is run twice. Any other tool error fails the test.
async fn check_exactly_once(p: &Platform, ids: &[String], n: usize) -> usize {
    assert_eq!(ids.len(), n, "every submission accepted once");
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), n, "no run id twice");
    let tenant = Tenant::parse("acme").expect("tenant");
    let mut unavailable = 0;
    for id in ids {
        let done = p
            .wait_terminal(id, Duration::from_secs(120))
            .await
            .expect("terminal");
        assert_eq!(done["status"], "completed", "{done}");
        let run = RunId::parse(id).expect("run id");
        // Read until the terminal event shows: a read served right after a failover can end
        // early (see docs/operations.md, "Cluster").
        let journal = eventually("the whole journal", Duration::from_secs(30), || async {
            let journal = p.bus.read_journal(&tenant, &run).await.ok()?;
            journal
                .iter()
                .any(|s| s.event.data.is_terminal())
                .then_some(journal)
        })
        .await
        .expect("journal");
        let count = |t: &str| journal.iter().filter(|s| s.event.type_name() == t).count();
        let failures: Vec<String> = journal
            .iter()
            .filter(|s| s.event.type_name() == "tool.failed")
            .map(|s| format!("{:?}", s.event.data))
            .collect();
        assert_eq!(
            [
                count("run.completed"),
                count("run.failed"),
                count("tool.started"),
                count("tool.completed") + count("tool.failed"),
                count("step.started"),
                count("model.completed"),
            ],
            [1, 0, 1, 1, 2, 2],
            "run {id}: one completion, one tool call and outcome, two model steps: {:?} {failures:?}",
            journal
                .iter()
                .map(|s| s.event.type_name())
                .collect::<Vec<_>>()
        );
        for f in &failures {
            assert!(
                f.contains("tool_unavailable") || f.contains("tool_timeout"),
                "run {id}: {f}"
            );
            unavailable += 1;
        }
    }
    unavailable
}

/// Waits until every node is healthy and the run and journal streams have every replica
/// current (the cluster healed).
async fn wait_healed(p: &Platform) {
    p.wait_nats_healthy(Duration::from_secs(60))
        .await
        .expect("every node healthy");
    eventually("every replica current", Duration::from_secs(60), || async {
        for s in [STREAM_RUNS, STREAM_EVENTS] {
            let st = p.bus.stream_status(s).await.ok()?;
            (st.current == st.replicas && st.leader.is_some()).then_some(())?;
        }
        Some(())
    })
    .await
    .expect("cluster healed");
}

/// Events journaled so far: the load's progress.
async fn journaled(p: &Platform) -> u64 {
    p.bus
        .stream_status(STREAM_EVENTS)
        .await
        .map(|s| s.messages)
        .unwrap_or(0)
}

async fn start() -> Platform {
    let p = Platform::start(Options {
        cluster: 3,
        ack_wait: "2s",
        // A model request or reply lost with the dead node is seen only when this runs out (the
        // run then fails `model_timeout`: a known limit, see docs/operations.md): 10 s, not
        // 120 s, so such a failure shows quickly.
        env: vec![("AGENTOS_MODEL_TIMEOUT".into(), "10s".into())],
        ..Options::default()
    })
    .await
    .expect("platform on a 3-node cluster");
    p.create_agent(json!({
        "id": "adder",
        "model": "scripted",
        "tools": ["math.eval"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "math.eval", "arguments": {"expr": "6*7"}}]},
            {"text": "42"}
        ]}
    }))
    .await
    .expect("agent");
    let st = p.bus.stream_status(STREAM_EVENTS).await.expect("status");
    assert_eq!((st.replicas, st.current), (3, 3), "R3 journal: {st:?}");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_a_nats_node_loses_and_duplicates_no_run() {
    let mut p = start().await;
    let n = runs_per_phase();
    let started = Instant::now();
    let submitted = Arc::new(AtomicUsize::new(0));
    let load = submit_load(&p, "kill", n, submitted.clone());

    eventually("a third of the load", Duration::from_secs(120), || async {
        (submitted.load(Ordering::SeqCst) >= n / 3).then_some(())
    })
    .await
    .expect("load");
    // The leader of the journal stream: its loss forces an election where it matters most.
    let leader = p
        .bus
        .stream_status(STREAM_EVENTS)
        .await
        .ok()
        .and_then(|s| s.leader)
        .unwrap_or_else(|| "n0".into());
    let victim = leader
        .strip_prefix('n')
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(0);
    let node = p.nats_node(victim).expect("the victim node");
    let pid = node.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let killed_at = Instant::now();
    let before = (submitted.load(Ordering::SeqCst), journaled(&p).await);

    // The load continues on two nodes: more runs accepted, more events journaled.
    eventually(
        "progress without the node",
        Duration::from_secs(60),
        || async {
            let now = (submitted.load(Ordering::SeqCst), journaled(&p).await);
            (now.0 >= (before.0 + n / 3).min(n) && now.1 > before.1 + 50).then_some(())
        },
    )
    .await
    .expect("the load continues with a node down");
    let progress_after = killed_at.elapsed();
    p.nats_node(victim)
        .expect("victim")
        .restart()
        .await
        .expect("restart the node");

    let (ids, errors) = load.await.expect("load");
    let unavailable = check_exactly_once(&p, &ids, n).await;
    wait_healed(&p).await;
    eprintln!(
        "cluster kill -9 of {leader} (journal leader): {n} runs completed once each in {:.1}s; \
         load progressed {:.1}s after the kill; {unavailable} tool calls failed over; \
         {} submission retries{}",
        started.elapsed().as_secs_f64(),
        progress_after.as_secs_f64(),
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_all_three_nodes_loses_and_duplicates_no_run() {
    let mut p = start().await;
    let n = runs_per_phase();
    let started = Instant::now();
    let submitted = Arc::new(AtomicUsize::new(0));
    let load = submit_load(&p, "roll", n, submitted.clone());
    for node in 0..3 {
        let at = n * (node + 1) / 4;
        eventually(
            "the load reaches the next restart",
            Duration::from_secs(120),
            || async { (submitted.load(Ordering::SeqCst) >= at).then_some(()) },
        )
        .await
        .expect("load");
        p.nats_node(node)
            .expect("node")
            .restart()
            .await
            .expect("kill -9 and start the node");
        // One node at a time: the next goes only once every replica caught up.
        wait_healed(&p).await;
    }
    let (ids, errors) = load.await.expect("load");
    let unavailable = check_exactly_once(&p, &ids, n).await;
    eprintln!(
        "cluster rolling restart (kill -9 + start, n0 n1 n2): {n} runs completed once each in \
         {:.1}s; {unavailable} tool calls failed over; {} submission retries{}",
        started.elapsed().as_secs_f64(),
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

/// `agentos up --cluster 3 --smoke-only` twice from one home: three nodes, R3 streams, the
/// smoke run completes; the second start brings the cluster back from its stores.
#[test]
fn up_cluster_3_runs_the_smoke_run_at_r3_and_restarts_from_its_stores() {
    let home = tempfile::tempdir().expect("home");
    let base = agentos_e2e::cluster_base_port().expect("port");
    for attempt in 1..=2 {
        let out = std::process::Command::new(agentos_e2e::agentos_bin().expect("binary"))
            .args(["up", "--smoke-only", "--cluster", "3", "--home"])
            .arg(home.path())
            .args([
                "--nats-port",
                &base.to_string(),
                "--listen",
                &format!("127.0.0.1:{}", agentos_e2e::free_port().expect("port")),
            ])
            .output()
            .expect("run agentos up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "attempt {attempt}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "cluster: 3 nodes, streams and KV at R3",
            &format!("nats://127.0.0.1:{}", base + 2),
            "completed: \"The answer is 42.\"",
            "stopped.",
        ] {
            assert!(
                stdout.contains(line),
                "attempt {attempt} lacks {line:?}:\n{stdout}"
            );
        }
        for node in ["n0", "n1", "n2"] {
            assert!(
                home.path()
                    .join("nats")
                    .join(format!("{node}.conf"))
                    .is_file()
            );
        }
    }
}

/// `agentos tenant credentials` under `up --cluster 3`: every node takes up the tenant's
/// account (each is reloaded, not only the first), so a tenant's client reaches its runs
/// through any node.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_credentials_work_on_every_node_of_a_cluster() {
    let home = tempfile::tempdir().expect("home");
    let base = agentos_e2e::cluster_base_port().expect("port");
    let agentos = |args: &[&str]| agentos_e2e::agentos_at(home.path(), args).expect("agentos");
    let edge = format!("127.0.0.1:{}", agentos_e2e::free_port().expect("port"));
    agentos(&[
        "up",
        "--detach",
        "--cluster",
        "3",
        "--nats-port",
        &base.to_string(),
        "--listen",
        &edge,
    ]);
    let _down = agentos_e2e::Down(home.path().to_owned());
    let out = agentos(&["tenant", "credentials", "t1", "--json"]);
    let creds: Value = serde_json::from_slice(&out.stdout).expect("credentials json");
    let tenant = Tenant::parse("t1").expect("tenant");
    for node in 0..3u16 {
        let opts = agentos_bus::ConnectOptions {
            user: creds["user"].as_str().map(str::to_owned),
            password: creds["password"].as_str().map(str::to_owned),
            request_timeout: Some(Duration::from_secs(2)),
            ..agentos_bus::ConnectOptions::new(format!("nats://127.0.0.1:{}", base + node))
        };
        let reach = eventually(
            "the tenant's account on the node",
            Duration::from_secs(10),
            || {
                let opts = opts.clone();
                let tenant = tenant.clone();
                async move {
                    let bus = agentos_bus::Bus::connect(&opts).await.ok()?;
                    bus.can_read_run_records(&tenant).await.ok().filter(|r| *r)
                }
            },
        )
        .await;
        assert!(reach.is_ok(), "node n{node} refuses tenant t1: {reach:?}");
    }
}
