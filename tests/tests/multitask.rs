//! Multitask strategies end to end, with two edges and two orchestrators against one
//! nats-server: 20 concurrent submissions on one thread with `reject` (exactly one runs) and
//! `enqueue` (all complete, one after another, in submission order); `interrupt` and `rollback`
//! as the thread's messages show them; an unknown strategy; and `kill -9` of the orchestrator
//! holding a thread, after which the next queued run starts once the lease lapses.

use std::time::Duration;

use agentos_bus::envelope::{Event, EventData};
use agentos_bus::id::{RunId, Tenant};
use agentos_e2e::{Options, Platform, eventually};
use serde_json::{Value, json};

/// The lease the orchestrators run with here.
const LEASE: Duration = Duration::from_secs(3);

struct Edges {
    urls: [String; 2],
}

impl Edges {
    async fn start(p: &mut Platform) -> Self {
        let second = p.spawn_edge().await.expect("second edge");
        Self {
            urls: [p.edge_url.clone(), second],
        }
    }

    /// `POST /v1/runs` through edge `i % 2`: status and body (the SSE text for a stream).
    async fn submit(&self, p: &Platform, i: usize, body: &Value) -> (u16, Value) {
        let r = p
            .http
            .post(format!("{}/v1/runs", self.urls[i % 2]))
            .bearer_auth(&p.token)
            .json(body)
            .send()
            .await
            .expect("post run");
        let status = r.status().as_u16();
        let streamed = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streamed {
            // The stream's first event names the run.
            let text = r.text().await.unwrap_or_default();
            let first = agentos_e2e::parse_sse(&text)
                .into_iter()
                .next()
                .map(|e| e.data)
                .unwrap_or(Value::Null);
            return (status, json!({"id": first["run_id"], "streamed": true}));
        }
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

async fn thread(p: &Platform) -> String {
    let (status, t) = p.post("/v1/threads", &json!({})).await.expect("thread");
    assert_eq!(status, 201, "{t}");
    t["id"].as_str().expect("thread id").to_owned()
}

async fn journal(p: &Platform, run: &str) -> Vec<Event> {
    let tenant = Tenant::parse("acme").expect("tenant");
    let run = RunId::parse(run).expect("run id");
    p.bus
        .read_journal(&tenant, &run)
        .await
        .expect("journal")
        .into_iter()
        .map(|s| s.event)
        .collect()
}

/// When the run held its thread: from `run.started` (or the first event after a resume) to its
/// last event, as one interval per run.
fn active(events: &[Event]) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let start = events
        .iter()
        .find(|e| matches!(e.data, EventData::RunStarted { .. }))
        .map(|e| e.ts)
        .expect("run.started");
    let end = events.last().map(|e| e.ts).expect("events");
    (start, end)
}

async fn messages(p: &Platform, thread: &str) -> Vec<Value> {
    let (status, v) = p
        .get(&format!("/v1/threads/{thread}/messages?limit=100"))
        .await
        .expect("messages");
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

fn sleeper(id: &str, ms: u64) -> Value {
    json!({"id": id, "model": "scripted", "tools": ["sleep"], "model_config": {"script": [
        {"tool_calls": [{"name": "sleep", "arguments": {"ms": ms}}]},
        {"text": "slept"}
    ]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn strategies_hold_across_two_edges_and_two_orchestrators() {
    let mut p = Platform::start(Options {
        orchestrators: 2,
        env: vec![("AGENTOS_THREAD_LEASE".into(), "3s".into())],
        ..Options::default()
    })
    .await
    .expect("platform");
    let edges = Edges::start(&mut p).await;
    p.create_agent(sleeper("quick", 100)).await.expect("agent");
    p.create_agent(sleeper("slow", 4000)).await.expect("agent");

    // An unknown strategy, and a strategy without a thread: 400, nothing created.
    let t = thread(&p).await;
    let (status, v) = edges
        .submit(&p, 0, &json!({"agent_id": "quick", "input": "x", "thread_id": t, "multitask_strategy": "shove"}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_multitask_strategy");
    assert_eq!(v["error"]["param"], "multitask_strategy");
    let (status, v) = edges
        .submit(
            &p,
            1,
            &json!({"agent_id": "quick", "input": "x", "multitask_strategy": "enqueue"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!("invalid_multitask_strategy"))
    );
    let (_, runs) = p.get(&format!("/v1/threads/{t}/runs")).await.expect("runs");
    assert_eq!(runs["data"], json!([]));

    // reject: 20 at once over both edges, half of them streaming: exactly one runs.
    let t = thread(&p).await;
    let results = futures::future::join_all((0..20).map(|i| {
        let body = json!({"agent_id": "quick", "input": format!("r{i}"), "thread_id": t,
            "multitask_strategy": "reject", "stream": i % 4 < 2});
        let edges = &edges;
        let p = &p;
        async move { edges.submit(p, i, &body).await }
    }))
    .await;
    let accepted: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 200 || *s == 201)
        .map(|(_, v)| v)
        .collect();
    let refused = results
        .iter()
        .filter(|(s, v)| *s == 409 && v["error"]["code"] == "thread_busy")
        .count();
    assert_eq!((accepted.len(), refused), (1, 19), "{results:?}");
    let winner = accepted[0]["id"].as_str().expect("run id").to_owned();
    let done = p
        .wait_terminal(&winner, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    let (_, listed) = p.get(&format!("/v1/threads/{t}/runs")).await.expect("runs");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));

    // enqueue: 20 at once over both edges: all complete, one at a time, in submission order.
    let t = thread(&p).await;
    let results = futures::future::join_all((0..20).map(|i| {
        let body = json!({"agent_id": "quick", "input": format!("e{i}"), "thread_id": t,
            "multitask_strategy": "enqueue"});
        let edges = &edges;
        let p = &p;
        async move { edges.submit(p, i, &body).await }
    }))
    .await;
    let mut ids: Vec<String> = results
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 201, "{v}");
            v["id"].as_str().expect("id").to_owned()
        })
        .collect();
    // Submission order is run id order (UUIDv7, minted as each request arrived).
    ids.sort();
    for id in &ids {
        let done = p
            .wait_terminal(id, Duration::from_secs(120))
            .await
            .expect("terminal");
        assert_eq!(done["status"], "completed", "{done}");
    }
    let mut intervals = Vec::new();
    for id in &ids {
        intervals.push(active(&journal(&p, id).await));
    }
    for (i, pair) in intervals.windows(2).enumerate() {
        assert!(
            pair[0].1 <= pair[1].0,
            "run {i} ({:?}) overlaps or follows run {} ({:?})",
            pair[0],
            i + 1,
            pair[1]
        );
    }
    let on_thread = messages(&p, &t).await;
    let inputs: Vec<Value> = on_thread
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].clone())
        .collect();
    let expected: Vec<Value> = ids
        .iter()
        .map(|id| {
            let pos = results
                .iter()
                .position(|(_, v)| v["id"] == id.as_str())
                .expect("submitted");
            json!(format!("e{pos}"))
        })
        .collect();
    assert_eq!(
        inputs, expected,
        "the thread holds the turns in submission order"
    );

    // interrupt: the active run ends cancelled (interrupted), its input stays on the thread,
    // and the new run sees it.
    let t = thread(&p).await;
    let (status, first) = edges
        .submit(
            &p,
            0,
            &json!({"agent_id": "slow", "input": "long job", "thread_id": t}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let first = first["id"].as_str().expect("id").to_owned();
    wait_status(&p, &first, "running").await;
    let (status, second) = edges
        .submit(&p, 1, &json!({"agent_id": "quick", "input": "urgent", "thread_id": t, "multitask_strategy": "interrupt"}))
        .await;
    assert_eq!(status, 201, "{second}");
    let second = second["id"].as_str().expect("id").to_owned();
    let done = p
        .wait_terminal(&first, Duration::from_secs(60))
        .await
        .expect("first");
    assert_eq!(done["status"], "cancelled", "{done}");
    let last = journal(&p, &first).await.pop().expect("events");
    assert_eq!(
        last.data,
        EventData::RunCancelled {
            reason: "interrupted".into()
        }
    );
    let done = p
        .wait_terminal(&second, Duration::from_secs(60))
        .await
        .expect("second");
    assert_eq!(done["status"], "completed", "{done}");
    let on_thread = messages(&p, &t).await;
    assert_eq!(on_thread[0]["content"], "long job");
    assert_eq!(on_thread[0]["run_id"], first.as_str());
    assert!(on_thread.iter().any(|m| m["content"] == "urgent"));
    let second_events = journal(&p, &second).await;
    let history = second_events
        .iter()
        .find_map(|e| match &e.data {
            EventData::ThreadHistory { messages } => Some(messages.clone()),
            _ => None,
        })
        .expect("thread.history");
    assert_eq!(history[0].content.as_deref(), Some("long job"));
    assert!(active(&journal(&p, &first).await).1 <= active(&second_events).0);

    // rollback: the active run is cancelled and leaves nothing on the thread.
    let t = thread(&p).await;
    let (_, kept) = edges
        .submit(
            &p,
            0,
            &json!({"agent_id": "quick", "input": "kept", "thread_id": t}),
        )
        .await;
    let kept = kept["id"].as_str().expect("id").to_owned();
    p.wait_terminal(&kept, Duration::from_secs(60))
        .await
        .expect("kept");
    let (_, doomed) = edges
        .submit(
            &p,
            1,
            &json!({"agent_id": "slow", "input": "doomed", "thread_id": t}),
        )
        .await;
    let doomed = doomed["id"].as_str().expect("id").to_owned();
    wait_status(&p, &doomed, "running").await;
    let (status, after) = edges
        .submit(&p, 0, &json!({"agent_id": "quick", "input": "instead", "thread_id": t, "multitask_strategy": "rollback"}))
        .await;
    assert_eq!(status, 201, "{after}");
    let after = after["id"].as_str().expect("id").to_owned();
    let done = p
        .wait_terminal(&doomed, Duration::from_secs(60))
        .await
        .expect("doomed");
    assert_eq!(done["status"], "cancelled");
    let last = journal(&p, &doomed).await.pop().expect("events");
    assert_eq!(
        last.data,
        EventData::RunCancelled {
            reason: "rollback".into()
        }
    );
    let done = p
        .wait_terminal(&after, Duration::from_secs(60))
        .await
        .expect("after");
    assert_eq!(done["status"], "completed");
    let contents: Vec<Value> = messages(&p, &t)
        .await
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, vec![json!("kept"), json!("instead")]);

    // And each with 20 at once on a busy thread.
    storm(&p, &edges, "interrupt").await;
    storm(&p, &edges, "rollback").await;
}

/// 20 concurrent `strategy` submissions over both edges on a thread whose run is active: every
/// run ends, completed or cancelled for `strategy`; no two were ever active at once; the thread
/// holds the messages of exactly the runs that should have left theirs, in the order they ran.
async fn storm(p: &Platform, edges: &Edges, strategy: &str) {
    let reason = if strategy == "interrupt" {
        "interrupted"
    } else {
        "rollback"
    };
    let t = thread(p).await;
    let (_, busy) = edges
        .submit(
            p,
            0,
            &json!({"agent_id": "slow", "input": "busy", "thread_id": t}),
        )
        .await;
    let busy = busy["id"].as_str().expect("id").to_owned();
    wait_status(p, &busy, "running").await;
    let results = futures::future::join_all((0..20).map(|i| {
        let body = json!({"agent_id": "quick", "input": format!("{strategy} {i}"), "thread_id": t,
            "multitask_strategy": strategy});
        async move { edges.submit(p, i, &body).await }
    }))
    .await;
    let mut ids = vec![busy.clone()];
    for (status, v) in &results {
        assert_eq!(*status, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    let mut ended = Vec::new();
    let mut intervals = Vec::new();
    let mut completed = 0;
    for id in &ids {
        let done = p
            .wait_terminal(id, Duration::from_secs(180))
            .await
            .expect("terminal");
        let events = journal(p, id).await;
        let last = events.last().expect("events").clone();
        match &last.data {
            EventData::RunCompleted { .. } => completed += 1,
            EventData::RunCancelled { reason: r } => assert_eq!(r, reason, "{id}"),
            other => panic!("{id} ended {other:?}: {done}"),
        }
        if events
            .iter()
            .any(|e| matches!(e.data, EventData::RunStarted { .. }))
        {
            intervals.push(active(&events));
        }
        let input = events
            .iter()
            .find_map(|e| match &e.data {
                EventData::RunCreated { input, .. } => Some(input.clone()),
                _ => None,
            })
            .expect("run.created");
        let leaves_turn =
            matches!(last.data, EventData::RunCompleted { .. }) || strategy == "interrupt";
        if leaves_turn {
            ended.push((last.ts, input));
        }
    }
    let EventData::RunCancelled { .. } = journal(p, &busy).await.pop().expect("busy").data else {
        panic!("the busy run was not cancelled");
    };
    assert!(completed >= 1, "{strategy}: nothing completed");
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "{strategy}: {pair:?} overlap");
    }
    ended.sort();
    let expected: Vec<Value> = ended.into_iter().map(|(_, input)| json!(input)).collect();
    let on_thread: Vec<Value> = messages(p, &t)
        .await
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(on_thread, expected, "{strategy}");
    eprintln!(
        "{strategy}: 21 runs, {completed} completed, {} cancelled ({reason}), {} were active, none at once",
        21 - completed,
        intervals.len()
    );
}

async fn wait_status(p: &Platform, run: &str, status: &str) {
    eventually(
        &format!("run {status}"),
        Duration::from_secs(60),
        || async {
            let (_, v) = p.get(&format!("/v1/runs/{run}")).await.ok()?;
            (v["status"] == status).then_some(())
        },
    )
    .await
    .expect("status");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_holder_lets_the_next_queued_run_start_once_its_lease_lapses() {
    // One orchestrator, driving one run at a time, takes the first run; the second joins
    // before the rest are submitted, so they all go to it.
    let mut p = Platform::start(Options {
        orchestrators: 0,
        ack_wait: "10s",
        env: vec![("AGENTOS_THREAD_LEASE".into(), "3s".into())],
        ..Options::default()
    })
    .await
    .expect("platform");
    p.spawn_with_env(
        "orchestrator",
        &["worker", "orchestrator"],
        &[("AGENTOS_CONCURRENCY", "1")],
    )
    .expect("first orchestrator");
    p.wait_services(1).await.expect("first orchestrator");
    p.create_agent(sleeper("slow", 2000)).await.expect("agent");
    p.create_agent(sleeper("quick", 100)).await.expect("agent");
    let t = thread(&p).await;
    let (status, first) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": "slow", "input": "held", "thread_id": t}),
        )
        .await
        .expect("first");
    assert_eq!(status, 201, "{first}");
    let first = first["id"].as_str().expect("id").to_owned();
    wait_status(&p, &first, "running").await;
    let holder = p
        .procs
        .iter()
        .position(|pr| pr.name == "orchestrator")
        .expect("orchestrator");
    p.spawn_orchestrator().expect("second orchestrator");
    p.wait_services(2).await.expect("two orchestrators");
    // The first orchestrator, busy, may still have pulled one message ahead into its buffer
    // (batch 1): fill that with a decoy run off the thread, so the thread's queued runs all go
    // to the second one. A decoy the second orchestrator takes completes at once; one that does
    // not complete within 3 s sits in the first orchestrator's buffer.
    for i in 0..5 {
        let decoy = p
            .start_run("quick", &format!("decoy {i}"))
            .await
            .expect("decoy");
        let (_, v) = p
            .get(&format!("/v1/runs/{decoy}/wait?timeout_s=3"))
            .await
            .expect("wait");
        if v["status"] != "completed" {
            break;
        }
    }
    let mut queued = Vec::new();
    for i in 0..3 {
        let (status, v) = p
            .post(
                "/v1/runs",
                &json!({"agent_id": "quick", "input": format!("q{i}"), "thread_id": t}),
            )
            .await
            .expect("queued");
        assert_eq!(status, 201, "{v}");
        queued.push(v["id"].as_str().expect("id").to_owned());
    }
    // kill -9 the orchestrator driving the first run, in the middle of its 2 s tool call.
    p.procs[holder].kill();
    let killed_at = time::OffsetDateTime::now_utc();
    for id in queued.iter().chain([&first]) {
        let done = p
            .wait_terminal(id, Duration::from_secs(120))
            .await
            .expect("terminal");
        assert_eq!(done["status"], "completed", "{id}: {done}");
    }
    // The next run started once the lease had lapsed: it was last renewed at most a third of
    // the lease before the kill.
    let started = active(&journal(&p, &queued[0]).await).0;
    let waited = started - killed_at;
    assert!(
        waited >= time::Duration::try_from(LEASE * 2 / 3).expect("duration"),
        "the next run started {waited} after the kill, before the lease could lapse"
    );
    // No two runs were active at once: every event of every run, in time order, falls into one
    // block per run, except the killed run, which resumed (one more block) after its redelivery.
    let mut all = Vec::new();
    for id in queued.iter().chain([&first]) {
        for e in journal(&p, id).await {
            if matches!(e.data, EventData::RunCreated { .. }) {
                continue;
            }
            all.push((e.ts, id.clone()));
        }
    }
    all.sort();
    let mut blocks: Vec<String> = Vec::new();
    for (_, id) in &all {
        if blocks.last() != Some(id) {
            blocks.push(id.clone());
        }
    }
    let first_blocks = blocks.iter().filter(|b| **b == first).count();
    eprintln!(
        "next run started {waited} after the kill; activity blocks in time order: {:?}",
        blocks
            .iter()
            .map(|b| if *b == first { "killed" } else { "queued" })
            .collect::<Vec<_>>()
    );
    assert!(first_blocks <= 2, "{blocks:?}");
    assert_eq!(
        blocks.len(),
        queued.len() + first_blocks,
        "runs interleaved: {blocks:?}"
    );
    for id in &queued {
        assert_eq!(blocks.iter().filter(|b| *b == id).count(), 1, "{blocks:?}");
    }
}
