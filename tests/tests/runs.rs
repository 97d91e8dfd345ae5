//! Runs end to end: real nats-server, the real `agentos` binary (edge, orchestrator, model and
//! tool workers as separate processes), driven over HTTP.

use std::time::Duration;

use agentos_bus::provision::STREAM_DLQ;
use agentos_e2e::{CountingServer, Options, Platform, eventually};
use bytes::Bytes;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn types(events: &[agentos_e2e::SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

#[tokio::test]
async fn a_run_with_two_tool_calls_completes_and_its_events_resume_exactly() {
    let p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(json!({
        "id": "calc", "model": "scripted", "tools": ["math.eval", "echo"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "math.eval", "arguments": {"expr": "6*7"}}]},
            {"tool_calls": [{"name": "echo", "arguments": {"said": "hello"}}]},
            {"text": "The answer is 42."}
        ]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("calc", "what is 6*7?").await.expect("run");
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "The answer is 42.");
    assert_eq!(done["steps"], 3);

    let all = p.events(&run, None).await.expect("events");
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "ids are 1..n in order"
    );
    let t = types(&all);
    assert_eq!(t.first(), Some(&"run.created"));
    assert_eq!(t.last(), Some(&"run.completed"));
    assert_eq!(t.iter().filter(|t| **t == "tool.completed").count(), 2);
    assert_eq!(t.iter().filter(|t| **t == "step.started").count(), 3);
    let math = all
        .iter()
        .find(|e| e.event == "tool.completed")
        .expect("tool.completed");
    assert_eq!(math.data["data"]["output"]["value"], 42.0);
    let text: String = all
        .iter()
        .filter(|e| e.event == "model.delta")
        .map(|e| e.data["data"]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(text, "The answer is 42.");

    // Reconnect in the middle: exactly the remaining events.
    let mid = all[all.len() / 2].id;
    let rest = p.events(&run, Some(mid)).await.expect("resume");
    assert_eq!(rest, all[all.len() / 2 + 1..].to_vec());
    // After the end: nothing, and the stream closes.
    assert!(
        p.events(&run, Some(all.len() as u64))
            .await
            .expect("after end")
            .is_empty()
    );
    let (status, v) = p
        .get(&format!("/v1/runs/{run}/events?after=2"))
        .await
        .map(|(s, _)| (s, Value::Null))
        .expect("after");
    assert_eq!((status, v), (200, Value::Null));
}

#[tokio::test]
async fn kill_9_of_the_orchestrator_mid_run_resumes_without_repeating_work() {
    let side_effect = CountingServer::start().await.expect("http server");
    let mut p = Platform::start(Options {
        ack_wait: "2s",
        http_allow: vec![side_effect.addr.to_string()],
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(json!({
        "id": "fragile", "model": "scripted", "tools": ["http.get", "sleep"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "http.get", "arguments": {"url": format!("http://{}/effect", side_effect.addr)}}]},
            {"tool_calls": [{"name": "sleep", "arguments": {"ms": 1500}}]},
            {"text": "done"}
        ]}
    }))
    .await
    .expect("agent");
    let run = p.start_run("fragile", "go").await.expect("run");
    // Wait until the side effect happened and the run is inside the second tool call.
    eventually("the sleep tool to start", LONG, || async {
        let (_, v) = p.get(&format!("/v1/runs/{run}")).await.ok()?;
        let _ = v;
        let journal = p
            .bus
            .read_journal(&"acme".parse().ok()?, &run.parse().ok()?)
            .await
            .ok()?;
        journal
            .iter()
            .any(|s| {
                s.event.type_name() == "tool.started"
                    && format!("{:?}", s.event.data).contains("sleep")
            })
            .then_some(())
    })
    .await
    .expect("sleep started");
    assert_eq!(side_effect.hits(), 1);
    let first = p
        .procs
        .iter_mut()
        .find(|p| p.name == "orchestrator")
        .expect("orchestrator");
    first.kill();
    p.spawn_orchestrator().expect("second orchestrator");

    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(side_effect.hits(), 1, "the side effect happened once");
    assert_eq!(
        side_effect.keys(),
        1,
        "http.get sent the call's idempotency key as Idempotency-Key"
    );
    let journal = p
        .bus
        .read_journal(&"acme".parse().expect("t"), &run.parse().expect("r"))
        .await
        .expect("journal");
    let mut steps: Vec<String> = journal
        .iter()
        .filter(|s| {
            matches!(
                s.event.type_name(),
                "step.started" | "tool.completed" | "model.completed"
            )
        })
        .map(|s| format!("{:?}", s.event.data))
        .collect();
    let n = steps.len();
    steps.sort();
    steps.dedup();
    assert_eq!(
        steps.len(),
        n,
        "no step, model call or tool result is journaled twice"
    );
    let seqs: Vec<u64> = journal.iter().map(|s| s.event.seq).collect();
    assert_eq!(seqs, (1..=journal.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn cancelling_a_running_and_a_queued_run_ends_both_cancelled() {
    let mut p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(json!({
        "id": "sleepy", "model": "scripted", "tools": ["sleep"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "sleep", "arguments": {"ms": 600000}}]},
            {"text": "never"}
        ]}
    }))
    .await
    .expect("agent");
    let running = p.start_run("sleepy", "zz").await.expect("run");
    eventually("the run to block in sleep", LONG, || async {
        let j = p
            .bus
            .read_journal(&"acme".parse().ok()?, &running.parse().ok()?)
            .await
            .ok()?;
        j.iter()
            .any(|s| s.event.type_name() == "tool.started")
            .then_some(())
    })
    .await
    .expect("blocked");
    let (status, v) = p
        .post(&format!("/v1/runs/{running}/cancel"), &json!({}))
        .await
        .expect("cancel");
    assert_eq!(status, 202, "{v}");
    let done = p
        .wait_terminal(&running, Duration::from_secs(10))
        .await
        .expect("cancelled promptly");
    assert_eq!(done["status"], "cancelled");

    // A queued run: no orchestrator is pulling.
    for proc in p.procs.iter_mut().filter(|p| p.name == "orchestrator") {
        proc.kill();
    }
    p.wait_services(0).await.expect("orchestrator gone");
    let queued = p.start_run("sleepy", "zz").await.expect("queued run");
    let (status, v) = p
        .post(&format!("/v1/runs/{queued}/cancel"), &json!({}))
        .await
        .expect("cancel");
    assert_eq!(
        (status, v["status"].as_str()),
        (202, Some("cancelled")),
        "{v}"
    );
    // An orchestrator that picks it up later does not run it.
    p.spawn_orchestrator().expect("orchestrator");
    p.wait_services(1).await.expect("orchestrator back");
    let events = p.events(&queued, None).await.expect("events");
    assert_eq!(types(&events), vec!["run.cancelled"]);
    let (status, v) = p
        .post(&format!("/v1/runs/{queued}/cancel"), &json!({}))
        .await
        .expect("cancel again");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("run_already_finished"))
    );
}

#[tokio::test]
async fn bad_input_gets_documented_errors_and_garbage_on_the_bus_is_dead_lettered() {
    let p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(json!({"id": "echo", "model": "scripted"}))
        .await
        .expect("agent");
    let post_raw = |path: &str, body: &'static str| {
        p.req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_owned();

    let r = post_raw("/v1/runs", "{not json").await.expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(code(&v), "invalid_json");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["request_id"].as_str().is_some());

    let (s, v) = p
        .post("/v1/runs", &json!({"agent_id": "nobody", "input": "x"}))
        .await
        .expect("unknown agent");
    assert_eq!((s, code(&v)), (404, "agent_not_found".into()));
    let (s, v) = p
        .post("/v1/runs", &json!({"agent_id": "Bad.Id", "input": "x"}))
        .await
        .expect("bad id");
    assert_eq!((s, code(&v)), (400, "invalid_id".into()));
    let (s, v) = p
        .post("/v1/runs", &json!({"agent_id": "echo", "input": 5}))
        .await
        .expect("wrong type");
    assert_eq!((s, code(&v)), (400, "invalid_body".into()));
    let (s, v) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": "echo", "input": "x", "surprise": 1}),
        )
        .await
        .expect("unknown field");
    assert_eq!((s, code(&v)), (400, "invalid_body".into()));
    let big = json!({"agent_id": "echo", "input": "x".repeat(2 * 1024 * 1024)});
    // The edge answers before reading the whole body and closes the connection: use a client of
    // its own so the shared pool does not reuse that connection.
    let r = reqwest::Client::new()
        .post(p.url("/v1/runs"))
        .bearer_auth(&p.token)
        .json(&big)
        .send()
        .await
        .expect("oversize");
    assert_eq!(r.status(), 413);
    assert_eq!(code(&r.json().await.expect("json")), "payload_too_large");
    let (s, v) = p.get("/v1/runs/not-a-uuid").await.expect("bad run id");
    assert_eq!((s, code(&v)), (400, "invalid_id".into()));
    let (s, v) = p.get("/v1/runs?status=sideways").await.expect("bad filter");
    assert_eq!((s, code(&v)), (400, "invalid_status".into()));
    let (s, v) = p
        .post(
            "/v1/agents",
            &json!({"id": "x", "model": "scripted", "tools": ["no*pe"]}),
        )
        .await
        .expect("bad tool");
    assert_eq!((s, code(&v)), (400, "invalid_id".into()));
    let r = p
        .http
        .get(p.url("/v1/runs"))
        .send()
        .await
        .expect("no token");
    assert_eq!(r.status(), 401);
    let r = p
        .http
        .get(p.url("/v1/runs"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .expect("bad token");
    assert_eq!(r.status(), 401);

    // Garbage straight onto the runs subject: dead-lettered with a reason, workers keep serving.
    p.bus
        .publish_raw(
            &agentos_e2e::subject("agentos.runs.acme.submit"),
            Bytes::from_static(b"\x00garbage"),
        )
        .await
        .expect("publish");
    p.bus
        .publish_raw(
            &agentos_e2e::subject("agentos.runs.acme.submit"),
            Bytes::from_static(br#"{"type":"run","run_id":"x"}"#),
        )
        .await
        .expect("publish");
    // Malformed requests to the model and tool workers: answered with an error and dead-lettered.
    let tenant: agentos_bus::id::Tenant = "acme".parse().expect("tenant");
    for subject in ["agentos.tool.acme.echo", "agentos.model.acme.scripted"] {
        let mut replies = p
            .bus
            .call(
                agentos_e2e::subject(subject),
                &agentos_bus::CallMeta::new(tenant.clone()),
                Bytes::from_static(b"[1,2"),
            )
            .await
            .expect("call");
        let reply = replies.next(LONG).await.expect("an error reply");
        let v: Value = serde_json::from_slice(&reply.payload).expect("json reply");
        assert_eq!(v["error"]["code"], "invalid_request", "{subject}: {v}");
    }
    eventually("four dead letters", LONG, || async {
        let s = p.bus.stream_status(STREAM_DLQ).await.ok()?;
        (s.messages == 4).then_some(())
    })
    .await
    .expect("dead-lettered");
    let run = p.start_run("echo", "still here").await.expect("run");
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(
        (done["status"].as_str(), done["output"].as_str()),
        (Some("completed"), Some("still here"))
    );
}

#[tokio::test]
async fn idempotency_keys_return_the_same_run_and_lists_paginate() {
    let p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(json!({"id": "echo", "model": "scripted"}))
        .await
        .expect("agent");
    let body = json!({"agent_id": "echo", "input": "once"});
    let send = |b: &Value| {
        p.req(reqwest::Method::POST, "/v1/runs")
            .header("Idempotency-Key", "k-1")
            .json(b)
            .send()
    };
    let first = send(&body).await.expect("first");
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("json");
    let again = send(&body).await.expect("again");
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.expect("json");
    assert_eq!(first["id"], again["id"]);
    let other = send(&json!({"agent_id": "echo", "input": "different"}))
        .await
        .expect("reuse");
    assert_eq!(other.status(), 409);

    let mut ids = vec![first["id"].as_str().expect("id").to_owned()];
    for i in 0..4 {
        ids.push(p.start_run("echo", &format!("r{i}")).await.expect("run"));
    }
    for id in &ids {
        p.wait_terminal(id, LONG).await.expect("terminal");
    }
    let (_, page1) = p.get("/v1/runs?limit=3").await.expect("page 1");
    assert_eq!(page1["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(page1["has_more"], true);
    let cursor = page1["next_cursor"].as_str().expect("cursor");
    let (_, page2) = p
        .get(&format!("/v1/runs?limit=3&after={cursor}"))
        .await
        .expect("page 2");
    assert_eq!(page2["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(page2["has_more"], false);
    let mut listed: Vec<String> = page1["data"]
        .as_array()
        .into_iter()
        .chain(page2["data"].as_array())
        .flatten()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(listed[0], ids[4], "newest first");
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    let (_, done) = p
        .get("/v1/runs?status=completed&agent_id=echo")
        .await
        .expect("filter");
    assert_eq!(done["data"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn a_thousand_concurrent_runs_on_two_orchestrators_finish_once_each() {
    let p = Platform::start(Options {
        orchestrators: 2,
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(json!({
        "id": "quick", "model": "scripted", "tools": ["echo"],
        "model_config": {"script": [{"tool_calls": [{"name": "echo", "arguments": {"n": 1}}]}, {"text": "ok"}]}
    }))
    .await
    .expect("agent");
    let ids: Vec<String> = futures::future::try_join_all((0..1000).map(|i| {
        let p = &p;
        async move { p.start_run("quick", &format!("run {i}")).await }
    }))
    .await
    .expect("submitted");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1000);
    let tenant = "acme".parse().expect("tenant");
    for id in &ids {
        let done = p
            .wait_terminal(id, Duration::from_secs(300))
            .await
            .expect("terminal");
        assert_eq!(done["status"], "completed", "{done}");
    }
    for id in &ids {
        let journal = p
            .bus
            .read_journal(&tenant, &id.parse().expect("id"))
            .await
            .expect("journal");
        let started = journal
            .iter()
            .filter(|s| s.event.type_name() == "run.started")
            .count();
        let completed = journal
            .iter()
            .filter(|s| s.event.type_name() == "run.completed")
            .count();
        assert_eq!((started, completed), (1, 1), "run {id} ran once");
    }
}

/// Two requests with one key while the first still runs (a redelivered run whose first driver
/// is alive): the second is told `in_progress`, never runs the call, and once the first is done
/// a third gets its recorded reply.
#[tokio::test]
async fn a_key_whose_call_is_running_answers_in_progress_and_runs_once() {
    use agentos_bus::envelope::{Envelope, ToolRecord, ToolReply, ToolRequest};
    let p = Platform::start(Options::default()).await.expect("platform");
    let run = agentos_bus::id::RunId::new();
    let call: agentos_bus::id::CallId = "call_1".parse().expect("call");
    let tenant: agentos_bus::id::Tenant = "acme".parse().expect("tenant");
    let request = |first_attempt| ToolRequest {
        tool: "sleep".parse().expect("tool"),
        arguments: json!({"ms": 1500}),
        run_id: Some(run),
        step: 1,
        call_id: Some(call.clone()),
        idempotency_key: Some(ToolRequest::key_for(&run, 1, &call)),
        timeout_ms: 10_000,
        first_attempt,
        memory_namespaces: Vec::new(),
    };
    let send = |first_attempt| {
        let (bus, tenant, payload) = (
            p.bus.clone(),
            tenant.clone(),
            request(first_attempt).encode(),
        );
        async move {
            let mut r = bus
                .call(
                    agentos_e2e::subject("agentos.tool.acme.sleep"),
                    &agentos_bus::CallMeta::new(tenant),
                    payload,
                )
                .await
                .expect("call");
            let reply = r.next(LONG).await.expect("reply");
            ToolReply::decode(reply.schema.as_deref(), &reply.payload).expect("tool reply")
        }
    };
    let first = tokio::spawn(send(true));
    let results = p
        .bus
        .kv(agentos_bus::Bucket::ToolResults)
        .await
        .expect("bucket");
    let key = agentos_bus::key::tool_result(&tenant, &run, 1, &call);
    eventually("the first call's claim", LONG, || async {
        match results.get_as::<ToolRecord>(&key).await {
            Ok(Some(v)) if matches!(v.value, ToolRecord::Claimed(_)) => Some(()),
            _ => None,
        }
    })
    .await
    .expect("claimed");
    let second = send(false).await;
    assert!(
        matches!(second, ToolReply::InProgress { retry_after_ms } if retry_after_ms > 0),
        "{second:?}"
    );
    let first = first.await.expect("first call");
    assert!(
        matches!(&first, ToolReply::Ok { output } if output["slept_ms"] == 1500),
        "{first:?}"
    );
    assert_eq!(send(false).await, first, "the recorded reply");
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_recorded_result_without_running_again() {
    use agentos_bus::envelope::{Envelope, ToolReply, ToolRequest};
    let side_effect = CountingServer::start().await.expect("http server");
    let p = Platform::start(Options {
        http_allow: vec![side_effect.addr.to_string()],
        ..Options::default()
    })
    .await
    .expect("platform");
    let run = agentos_bus::id::RunId::new();
    let request = |first_attempt| ToolRequest {
        tool: "http.get".parse().expect("tool"),
        arguments: json!({"url": format!("http://{}/once", side_effect.addr)}),
        run_id: Some(run),
        step: 1,
        call_id: Some("call_1".parse().expect("call")),
        idempotency_key: Some(format!("{run}:1:call_1")),
        timeout_ms: 10_000,
        first_attempt,
        memory_namespaces: Vec::new(),
    };
    let tenant: agentos_bus::id::Tenant = "acme".parse().expect("tenant");
    let mut replies = Vec::new();
    for first_attempt in [true, false, false] {
        let mut r = p
            .bus
            .call(
                agentos_e2e::subject("agentos.tool.acme.http.get"),
                &agentos_bus::CallMeta::new(tenant.clone()),
                request(first_attempt).encode(),
            )
            .await
            .expect("call");
        let reply = r.next(LONG).await.expect("reply");
        replies
            .push(ToolReply::decode(reply.schema.as_deref(), &reply.payload).expect("tool reply"));
    }
    assert!(
        matches!(&replies[0], ToolReply::Ok { output } if output["body"] == "hit 1"),
        "{:?}",
        replies[0]
    );
    assert_eq!(replies[1], replies[0]);
    assert_eq!(replies[2], replies[0]);
    assert_eq!(side_effect.hits(), 1, "the tool ran once");
}
