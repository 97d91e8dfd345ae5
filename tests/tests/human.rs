//! Human in the loop end to end: a run that calls a client tool waits in `requires_action`
//! through the loss of every orchestrator and a nats-server restart, and resumes exactly once
//! when its answer comes (sent twice, through two edges at once); approvals (an approved call
//! runs once, with the approver's arguments; a rejection reaches the model as the tool's error);
//! expiry, cancel, an answer published straight onto the bus, a waiting run holding its thread;
//! and bad answers refused with their documented codes, changing nothing.

use std::time::Duration;

use agentos_bus::envelope::{Continuation, EventData, SubmitMessage, ToolOutput};
use agentos_bus::id::{RunId, Tenant};
use agentos_e2e::{CountingServer, Options, Platform, eventually};
use serde_json::{Value, json};

/// Long-polls until the run has `status`.
async fn wait_for(p: &Platform, run: &str, status: &str) -> Value {
    eventually(status, Duration::from_secs(60), || async {
        let (_, v) = p
            .get(&format!("/v1/runs/{run}/wait?timeout_s=5"))
            .await
            .ok()?;
        (v["status"] == status).then_some(v)
    })
    .await
    .unwrap_or_else(|e| panic!("run {run} never {status}: {e}"))
}

/// `POST /v1/runs`, expecting `201`: the run's id.
async fn create(p: &Platform, body: Value) -> String {
    let (status, v) = p.post("/v1/runs", &body).await.expect("post run");
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().expect("run id").to_owned()
}

async fn journal(p: &Platform, run: &str) -> Vec<EventData> {
    let run = RunId::parse(run).expect("run id");
    let tenant = Tenant::parse("acme").expect("tenant");
    p.bus
        .read_journal(&tenant, &run)
        .await
        .expect("journal")
        .into_iter()
        .map(|s| s.event.data)
        .collect()
}

fn count(events: &[EventData], kind: &str) -> usize {
    events.iter().filter(|e| e.type_name() == kind).count()
}

async fn post_at(p: &Platform, base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = p
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(&p.token)
        .json(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn lookup_agent() -> Value {
    json!({
        "id": "asker",
        "model": "scripted",
        "client_tools": [{
            "name": "lookup",
            "description": "looks a thing up on the caller's side",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
        }],
        "model_config": {"script": [
            {"tool_calls": [{"name": "lookup", "arguments": {"q": "the answer"}}]},
            {"text": "the caller said {last_tool_output}"}
        ]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_run_survives_every_orchestrator_and_nats_and_resumes_once() {
    let mut p = Platform::start(Options {
        orchestrators: 2,
        ..Options::default()
    })
    .await
    .expect("platform");
    let edge2 = p.spawn_edge().await.expect("another edge");
    p.create_agent(lookup_agent()).await.expect("agent");
    let run = p.start_run("asker", "ask the caller").await.expect("run");

    // `/wait` returns at requires_action, naming the pending call.
    let waiting = wait_for(&p, &run, "requires_action").await;
    let calls = waiting["required_action"]["tool_calls"]
        .as_array()
        .expect("pending calls");
    assert_eq!(calls.len(), 1, "{waiting}");
    assert_eq!(calls[0]["name"], "lookup");
    assert_eq!(calls[0]["kind"], "client_tool");
    assert_eq!(calls[0]["arguments"], json!({"q": "the answer"}));
    let call_id = calls[0]["call_id"].as_str().expect("call id").to_owned();
    let events = journal(&p, &run).await;
    assert_eq!(count(&events, "run.requires_action"), 1);
    // The SSE stream emits it (and stays open: the run is not over).
    p.sse_until(&run, "run.requires_action", Duration::from_secs(30))
        .await
        .expect("the wait on the stream");
    // It holds no message: nothing pending or unacked on the orchestrators' consumer.
    let queue = eventually("an empty run queue", Duration::from_secs(10), || async {
        let c = p
            .bus
            .consumer_status(
                agentos_bus::provision::STREAM_RUNS,
                agentos_bus::ORCHESTRATOR_DURABLE,
            )
            .await
            .ok()?;
        (c.pending == 0 && c.ack_pending == 0).then_some(c)
    })
    .await;
    assert!(queue.is_ok(), "the waiting run holds a message: {queue:?}");

    // Every orchestrator dies, and nats-server restarts, while the run waits.
    for proc in p.procs.iter_mut().filter(|p| p.name == "orchestrator") {
        proc.kill();
    }
    p.nats.restart().await.expect("nats restart");
    p.spawn_orchestrator().expect("new orchestrator");
    p.wait_ready(1).await.expect("platform back");
    let (_, still) = p.get(&format!("/v1/runs/{run}")).await.expect("read");
    assert_eq!(still["status"], "requires_action", "{still}");

    // Bad answers: refused, and the run is unchanged.
    let path = format!("/v1/runs/{run}/tool_outputs");
    let bad = [
        (
            json!({"tool_outputs": [{"call_id": "call_nope", "output": "x"}]}),
            400,
            "unknown_call_id",
        ),
        (json!({"tool_outputs": []}), 400, "missing_tool_outputs"),
        (
            json!({"tool_outputs": [{"call_id": 7, "output": "x"}]}),
            400,
            "invalid_body",
        ),
        (
            json!({"tool_outputs": [{"call_id": call_id}]}),
            400,
            "invalid_body",
        ),
        (
            json!({"approvals": [{"call_id": call_id, "approve": true}]}),
            400,
            "wrong_answer_kind",
        ),
        (
            json!({"tool_outputs": [{"call_id": call_id, "output": "a"}, {"call_id": call_id, "output": "b"}]}),
            400,
            "duplicate_call_id",
        ),
    ];
    for (body, status, code) in bad {
        let (got, v) = p.post(&path, &body).await.expect("post");
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} → {v}"
        );
    }
    let (_, unchanged) = p.get(&format!("/v1/runs/{run}")).await.expect("read");
    assert_eq!(unchanged["status"], "requires_action");
    assert_eq!(unchanged["required_action"], waiting["required_action"]);

    // The same answer twice through each of two edges at once: accepted, and the run resumes
    // once.
    let answer = json!({"tool_outputs": [{"call_id": call_id, "output": "forty-two"}]});
    let sends = (0..4).map(|i| {
        let base = if i % 2 == 0 {
            p.edge_url.clone()
        } else {
            edge2.clone()
        };
        let (p, path, answer) = (&p, path.clone(), answer.clone());
        async move { post_at(p, &base, &path, &answer).await }
    });
    for (status, v) in futures::future::join_all(sends).await {
        assert_eq!(status, 202, "{v}");
    }
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    // The output reached the model's next request (the scripted model quotes it).
    assert_eq!(done["output"], "the caller said forty-two");
    let events = journal(&p, &run).await;
    assert_eq!(count(&events, "run.action_answered"), 1, "{events:?}");
    assert_eq!(count(&events, "model.completed"), 2);
    assert_eq!(count(&events, "run.completed"), 1);

    // The same answer once more (a late retry): accepted, nothing changes.
    let (status, v) = p.post(&path, &answer).await.expect("retry");
    assert_eq!(status, 202, "{v}");
    assert_eq!(count(&journal(&p, &run).await, "run.action_answered"), 1);
    // A different answer afterwards, and any answer to a run that does not wait: 409.
    let other = json!({"tool_outputs": [{"call_id": call_id, "output": "other"}]});
    let (status, v) = p.post(&path, &other).await.expect("post");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("run_not_waiting")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_run_an_approved_call_once_and_tell_the_model_of_a_rejection() {
    let counter = CountingServer::start().await.expect("counting server");
    let url = format!("http://{}/thing", counter.addr);
    let p = Platform::start(Options {
        http_allow: vec![counter.addr.to_string()],
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(json!({
        "id": "careful",
        "model": "scripted",
        "tools": ["http.get", "echo"],
        "requires_approval": ["http.get", "echo"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "http.get", "arguments": {"url": "http://example.invalid/"}}]},
            {"tool_calls": [{"name": "echo", "arguments": {"text": "rm -rf"}}]},
            {"text": "finally: {last_tool_output}"}
        ]}
    }))
    .await
    .expect("agent");
    // An approval for a tool that is not the agent's can never apply: stored, with a warning.
    let (status, v) = p
        .post(
            "/v1/agents",
            &json!({"id": "odd", "model": "scripted", "tools": ["echo"], "requires_approval": ["http.get"]}),
        )
        .await
        .expect("post");
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["warnings"][0]["code"], "approval_tool_not_listed", "{v}");
    assert_eq!(v["warnings"][0]["tool"], "http.get", "{v}");
    // A client tool named like a server tool clashes with it.
    let (status, v) = p
        .post(
            "/v1/agents",
            &json!({"id": "bad", "model": "scripted", "tools": ["echo"], "client_tools": [{"name": "echo"}]}),
        )
        .await
        .expect("post");
    assert_eq!(
        (
            status,
            v["error"]["code"].as_str(),
            v["error"]["param"].as_str()
        ),
        (
            409,
            Some("tool_name_conflict"),
            Some("client_tools[0].name")
        ),
        "{v}"
    );

    let run = p.start_run("careful", "fetch it").await.expect("run");
    let first = wait_for(&p, &run, "requires_action").await;
    let call = &first["required_action"]["tool_calls"][0];
    assert_eq!(call["kind"], "approval");
    assert_eq!(call["name"], "http.get");
    // Approved with edited arguments: the tool runs once, on the approver's URL.
    let approve = json!({"approvals": [{"call_id": call["call_id"], "approve": true, "arguments": {"url": url}}]});
    let path = format!("/v1/runs/{run}/tool_outputs");
    let (status, v) = p.post(&path, &approve).await.expect("approve");
    assert_eq!(status, 202, "{v}");

    let second = eventually("the second wait", Duration::from_secs(60), || async {
        let (_, v) = p
            .get(&format!("/v1/runs/{run}/wait?timeout_s=5"))
            .await
            .ok()?;
        (v["status"] == "requires_action"
            && v["required_action"]["tool_calls"][0]["name"] == "echo")
            .then_some(v)
    })
    .await
    .expect("second wait");
    assert_eq!(counter.hits(), 1, "the approved call ran once");
    // The first approval again: the run no longer waits on that call.
    let (status, v) = p.post(&path, &approve).await.expect("again");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("unknown_call_id")),
        "{v}"
    );
    // Rejected: the model sees the rejection as the tool's error, and the tool never runs.
    let reject = json!({"approvals": [{"call_id": second["required_action"]["tool_calls"][0]["call_id"], "approve": false, "reason": "not on my machine"}]});
    let (status, v) = p.post(&path, &reject).await.expect("reject");
    assert_eq!(status, 202, "{v}");
    let done = p
        .wait_terminal(&run, Duration::from_secs(60))
        .await
        .expect("done");
    assert_eq!(done["status"], "completed", "{done}");
    let output = done["output"].as_str().expect("output");
    assert!(
        output.contains("rejected") && output.contains("not on my machine"),
        "{output}"
    );
    let events = journal(&p, &run).await;
    assert_eq!(
        count(&events, "tool.started"),
        1,
        "only the approved call started"
    );
    assert_eq!(count(&events, "tool.completed"), 1);
    assert_eq!(counter.hits(), 1);
    let started = events
        .iter()
        .find_map(|e| match e {
            EventData::ToolStarted { arguments, .. } => Some(arguments.clone()),
            _ => None,
        })
        .expect("tool.started");
    assert_eq!(started, json!({"url": url}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_expires_a_cancel_ends_it_and_a_bus_answer_resumes_it_holding_its_thread() {
    let p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(lookup_agent()).await.expect("agent");
    p.create_agent(json!({"id": "plain", "model": "scripted"}))
        .await
        .expect("agent");

    // Not a time: refused. A time past or far away is taken (capped at 7 days).
    let (status, v) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": "asker", "input": "x", "expires_at": "yesterday"}),
        )
        .await
        .expect("post");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_expires_at")),
        "{v}"
    );
    let (status, v) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": "asker", "input": "x", "expires_at": "9999-01-01T00:00:00Z"}),
        )
        .await
        .expect("post");
    assert_eq!(status, 201, "{v}");
    let capped = time::OffsetDateTime::parse(
        v["expires_at"].as_str().expect("expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("time");
    assert!(capped <= time::OffsetDateTime::now_utc() + time::Duration::days(7));
    let id = v["id"].as_str().expect("id");
    let (status, v) = p
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await
        .expect("cancel");
    assert!(status < 300, "{v}");

    // Expiry: the timer (a JetStream message schedule) ends the unanswered run.
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let expiring = create(
        &p,
        json!({"agent_id": "asker", "input": "x", "expires_at": at}),
    )
    .await;
    wait_for(&p, &expiring, "requires_action").await;
    let expired = p
        .wait_terminal(&expiring, Duration::from_secs(30))
        .await
        .expect("expired");
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(count(&journal(&p, &expiring).await, "run.expired"), 1);

    // Cancel while it waits.
    let cancelled = p.start_run("asker", "x").await.expect("run");
    wait_for(&p, &cancelled, "requires_action").await;
    let (status, v) = p
        .post(&format!("/v1/runs/{cancelled}/cancel"), &json!({}))
        .await
        .expect("cancel");
    assert_eq!(status, 202, "{v}");
    let done = p
        .wait_terminal(&cancelled, Duration::from_secs(30))
        .await
        .expect("cancelled");
    assert_eq!(done["status"], "cancelled", "{done}");

    // On a thread: the waiting run holds it, so the next run (enqueue) starts only after it.
    let (_, thread) = p.post("/v1/threads", &json!({})).await.expect("thread");
    let thread = thread["id"].as_str().expect("thread id").to_owned();
    let first = create(
        &p,
        json!({"agent_id": "asker", "input": "one", "thread_id": thread}),
    )
    .await;
    let waiting = wait_for(&p, &first, "requires_action").await;
    let second = create(
        &p,
        json!({"agent_id": "plain", "input": "two", "thread_id": thread}),
    )
    .await;
    // Answered straight on the bus, as a NATS client would.
    let call_id = waiting["required_action"]["tool_calls"][0]["call_id"]
        .as_str()
        .expect("call id")
        .parse()
        .expect("call id");
    let answer = SubmitMessage::Continuation(Continuation {
        run_id: RunId::parse(&first).expect("run"),
        tenant: Tenant::parse("acme").expect("tenant"),
        tool_outputs: vec![ToolOutput {
            call_id,
            output: json!("from nats"),
        }],
        approvals: Vec::new(),
    });
    p.bus
        .submit(&answer, &Default::default())
        .await
        .expect("submit");
    let one = p
        .wait_terminal(&first, Duration::from_secs(60))
        .await
        .expect("first done");
    assert_eq!(one["output"], "the caller said from nats", "{one}");
    let two = p
        .wait_terminal(&second, Duration::from_secs(60))
        .await
        .expect("second done");
    assert_eq!(two["status"], "completed", "{two}");
    let ts = |v: &Value, f: &str| {
        time::OffsetDateTime::parse(
            v[f].as_str().expect("time"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("rfc3339")
    };
    assert!(
        ts(&two, "started_at") >= ts(&one, "finished_at"),
        "the second run started while the first waited: {one} {two}"
    );
    // The thread holds both turns in order.
    let (_, msgs) = p
        .get(&format!("/v1/threads/{thread}/messages?limit=100"))
        .await
        .expect("messages");
    let contents: Vec<&str> = msgs["data"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    let pos = |s: &str| contents.iter().position(|c| *c == s);
    assert!(
        pos("one") < pos("two") && pos("one").is_some(),
        "{contents:?}"
    );
}
