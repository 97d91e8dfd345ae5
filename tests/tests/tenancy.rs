//! Tenancy enforced behind the edge: entitlements (at the edge and again by the orchestrator,
//! which direct NATS publishers reach without the edge), disabled tenants' queued runs, and
//! messages that claim another tenant than their subject's.

use std::time::Duration;

use agentos_bus::envelope::{Envelope, RunRecord, RunRequest, SubmitMessage, now};
use agentos_bus::id::{AgentId, RunId, Tenant};
use agentos_bus::provision::STREAM_DLQ;
use agentos_bus::{Bucket, CallMeta, SubmitMeta};
use agentos_e2e::{Options, Platform, eventually, mint_with_roles};
use bytes::Bytes;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

fn tenant(s: &str) -> Tenant {
    s.parse().expect("tenant")
}

/// A run request published straight onto the bus, as a tenant's own NATS client would.
async fn submit_direct(p: &Platform, agent: &str) -> RunId {
    let req = RunRequest {
        run_id: RunId::new(),
        tenant: tenant("acme"),
        agent_id: AgentId::parse(agent.to_owned()).expect("agent id"),
        agent: None,
        input: "direct".into(),
        thread_id: None,
        multitask_strategy: None,
        metadata: Default::default(),
        submitted_at: now(),
        expires_at: None,
    };
    let id = req.run_id;
    p.bus
        .submit(&SubmitMessage::Run(Box::new(req)), &SubmitMeta::default())
        .await
        .expect("submit");
    id
}

/// The run record as stored, read on the bus (the edge would refuse a disabled tenant).
async fn stored_terminal(p: &Platform, run: &RunId) -> RunRecord {
    let runs = p.bus.kv(Bucket::Runs).await.expect("runs bucket");
    let key = agentos_e2e::key(&format!("acme.{run}"));
    eventually("a terminal run record", LONG, || async {
        let rec = runs.get_as::<RunRecord>(&key).await.ok()??.value;
        rec.status.is_terminal().then_some(rec)
    })
    .await
    .expect("terminal")
}

async fn send(
    p: &Platform,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let body = (!body.is_null()).then_some(body);
    p.send_as(token, method, path, body.as_ref())
        .await
        .expect("send")
}

#[tokio::test]
async fn entitlements_are_enforced_by_the_edge_and_again_by_the_orchestrator() {
    let p = Platform::start(Options {
        config: Some("[model.routes.other]\nbackend = \"scripted\"\n".into()),
        ..Options::default()
    })
    .await
    .expect("platform");
    let model_ids = || async {
        let (_, list) = p.get("/v1/models").await.expect("models");
        let mut ids: Vec<String> = list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(model_ids().await, vec!["other", "scripted"]);
    let admin = mint_with_roles("ops", "admin").expect("admin token");
    p.create_agent(json!({"id": "ok", "model": "scripted", "tools": ["echo"]}))
        .await
        .expect("agent ok");
    p.create_agent(json!({"id": "web", "model": "scripted", "tools": ["http.get"]}))
        .await
        .expect("agent web");

    // A typo in an entitlement list is refused, not stored.
    let (status, body) = send(
        &p,
        &admin,
        reqwest::Method::POST,
        "/v1/admin/tenants",
        json!({"id": "acme", "entitlements": {"model": ["scripted"]}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(
        &p,
        &admin,
        reqwest::Method::POST,
        "/v1/admin/tenants",
        json!({"id": "acme", "entitlements": {"tools": ["Not A Tool"]}}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_entitlements")),
        "{body}"
    );
    let (status, body) = send(
        &p,
        &admin,
        reqwest::Method::POST,
        "/v1/admin/tenants",
        json!({"id": "acme", "entitlements": {"models": ["scripted"], "tools": ["echo"]}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // /v1/models lists only the entitled models.
    assert_eq!(model_ids().await, vec!["scripted"]);

    // At the edge: the agent's tool is not covered → 403, nothing queued.
    let (status, body) = send(
        &p,
        &p.token,
        reqwest::Method::POST,
        "/v1/runs",
        json!({"agent_id": "web", "input": "x"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "not_entitled");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("http.get"),
        "{body}"
    );
    let (status, body) = send(
        &p,
        &p.token,
        reqwest::Method::POST,
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("not_entitled")),
        "{body}"
    );
    let (_, list) = p.get("/v1/runs").await.expect("list");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");

    // An entitled agent runs.
    let run = p.start_run("ok", "fine").await.expect("run");
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["created_by"], "developer", "the token's sub");
    let stored = stored_terminal(&p, &run.parse().expect("run id")).await;
    assert_eq!(stored.created_by_roles, vec!["member".to_owned()]);

    // Straight onto the bus, past the edge: the orchestrator refuses it, and audits it.
    let direct = submit_direct(&p, "web").await;
    let rec = stored_terminal(&p, &direct).await;
    assert_eq!(rec.status.as_str(), "failed");
    assert_eq!(
        rec.error.as_ref().map(|e| e.code.as_str()),
        Some("not_entitled")
    );
    assert_eq!(rec.created_by.as_deref(), Some("nats:acme"));
    let journal = p
        .bus
        .read_journal(&tenant("acme"), &direct)
        .await
        .expect("journal");
    let types: Vec<&str> = journal.iter().map(|s| s.event.data.type_name()).collect();
    assert_eq!(types, vec!["run.created", "run.failed"], "it never started");
    let (_, log) = send(
        &p,
        &admin,
        reqwest::Method::GET,
        "/v1/admin/audit?tenant=acme&action=run.create",
        Value::Null,
    )
    .await;
    let direct_entry = log["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["record"])
        .find(|r| r["target"] == direct.to_string().as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the direct submission is audited: {log}"));
    assert_eq!(direct_entry["actor"], "nats:acme", "{direct_entry}");
    assert_eq!(direct_entry["details"]["via"], "nats", "{direct_entry}");

    // Lifting the restriction (PATCH) lets the same agent run, within the cache's TTL.
    let (status, _) = send(
        &p,
        &admin,
        reqwest::Method::PATCH,
        "/v1/admin/tenants/acme",
        json!({"entitlements": {"models": [], "tools": [], "agents": []}}),
    )
    .await;
    assert_eq!(status, 200);
    let run = p.start_run("web", "now allowed").await.expect("run");
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test]
async fn a_disabled_tenants_queued_runs_do_not_start() {
    let mut p = Platform::start(Options {
        orchestrators: 0,
        ..Options::default()
    })
    .await
    .expect("platform");
    let admin = mint_with_roles("ops", "admin").expect("admin token");
    p.create_agent(json!({"id": "a", "model": "scripted"}))
        .await
        .expect("agent");
    let run: RunId = p
        .start_run("a", "waiting")
        .await
        .expect("queued run")
        .parse()
        .expect("run id");
    let (status, _) = send(
        &p,
        &admin,
        reqwest::Method::POST,
        "/v1/admin/tenants",
        json!({"id": "acme", "enabled": false}),
    )
    .await;
    assert_eq!(status, 201);

    p.spawn_orchestrator().expect("orchestrator");
    p.wait_services(1).await.expect("orchestrator up");
    let rec = stored_terminal(&p, &run).await;
    assert_eq!(rec.status.as_str(), "failed");
    assert_eq!(
        rec.error.as_ref().map(|e| e.code.as_str()),
        Some("tenant_disabled")
    );
    assert!(rec.started_at.is_none(), "it never started: {rec:?}");
    let journal = p
        .bus
        .read_journal(&tenant("acme"), &run)
        .await
        .expect("journal");
    assert!(
        journal
            .iter()
            .all(|s| s.event.data.type_name() != "run.started"),
        "{journal:?}"
    );
}

#[tokio::test]
async fn messages_claiming_another_tenant_than_their_subject_are_refused() {
    let p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(json!({"id": "a", "model": "scripted"}))
        .await
        .expect("agent");

    // A submission on acme's subject whose body claims globex: dead-lettered, never run.
    let run = RunId::new();
    let spoof = SubmitMessage::Run(Box::new(RunRequest {
        run_id: run,
        tenant: tenant("globex"),
        agent_id: AgentId::parse("a".to_owned()).expect("agent id"),
        agent: None,
        input: "spoofed".into(),
        thread_id: None,
        multitask_strategy: None,
        metadata: Default::default(),
        submitted_at: now(),
        expires_at: None,
    }));
    p.bus
        .publish_raw(
            &agentos_e2e::subject("agentos.runs.acme.submit"),
            spoof.encode(),
        )
        .await
        .expect("publish");

    // Model and tool calls whose AgentOS-Tenant header disagrees with the subject.
    let globex = CallMeta::new(tenant("globex"));
    for (subject, body) in [
        (
            "agentos.model.acme.scripted",
            json!({"step": 0, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "agentos.tool.acme.echo",
            json!({"tool": "echo", "arguments": {"text": "hi"}, "step": 0, "timeout_ms": 1000}),
        ),
    ] {
        let mut replies = p
            .bus
            .call(
                agentos_e2e::subject(subject),
                &globex,
                Bytes::from(body.to_string()),
            )
            .await
            .expect("call");
        let reply = replies.next(LONG).await.expect("an error reply");
        let v: Value = serde_json::from_slice(&reply.payload).expect("json reply");
        assert_eq!(v["error"]["code"], "tenant_mismatch", "{subject}: {v}");
    }
    eventually("three dead letters", LONG, || async {
        let s = p.bus.stream_status(STREAM_DLQ).await.ok()?;
        (s.messages == 3).then_some(())
    })
    .await
    .expect("dead-lettered");
    let runs = p.bus.kv(Bucket::Runs).await.expect("runs bucket");
    for key in [format!("acme.{run}"), format!("globex.{run}")] {
        assert!(
            runs.get(&agentos_e2e::key(&key))
                .await
                .expect("get")
                .is_none(),
            "{key}"
        );
    }
    assert!(
        p.bus
            .read_journal(&tenant("globex"), &run)
            .await
            .expect("journal")
            .is_empty()
    );
}

#[tokio::test]
async fn with_registered_admission_only_tenants_an_admin_created_get_in() {
    let p = Platform::start(Options {
        env: vec![("AGENTOS_TENANTS".into(), "registered".into())],
        ..Options::default()
    })
    .await
    .expect("platform");
    let admin = mint_with_roles("ops", "admin").expect("admin token");

    // acme has no record yet: refused at the edge, and a run published on the bus never starts.
    let (status, body) = send(
        &p,
        &p.token,
        reqwest::Method::GET,
        "/v1/agents",
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("tenant_not_registered")),
        "{body}"
    );
    let direct = submit_direct(&p, "a").await;
    let rec = stored_terminal(&p, &direct).await;
    assert_eq!(
        rec.error.as_ref().map(|e| e.code.as_str()),
        Some("tenant_not_registered")
    );

    // Registered by an admin (whose own tenant needs no record): in.
    let (status, _) = send(
        &p,
        &admin,
        reqwest::Method::POST,
        "/v1/admin/tenants",
        json!({"id": "acme"}),
    )
    .await;
    assert_eq!(status, 201);
    p.create_agent(json!({"id": "a", "model": "scripted"}))
        .await
        .expect("agent");
    let run = p.start_run("a", "registered").await.expect("run");
    let done = p.wait_terminal(&run, LONG).await.expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
}

/// A run published straight onto NATS carries no agent snapshot; it must still run the agent as
/// it was when the run started, whatever edits happen meanwhile.
#[tokio::test]
async fn a_run_published_on_nats_keeps_the_agent_it_started_with() {
    let p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(json!({
        "id": "pinned", "model": "scripted", "tools": ["sleep"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "sleep", "arguments": {"ms": 1500}}]},
            {"text": "as first defined"}
        ]}
    }))
    .await
    .expect("agent");
    let run = submit_direct(&p, "pinned").await;
    let acme = tenant("acme");
    eventually("the run's tool call", LONG, || async {
        let journal = p.bus.read_journal(&acme, &run).await.ok()?;
        journal
            .iter()
            .any(|s| s.event.type_name() == "tool.started")
            .then_some(())
    })
    .await
    .expect("tool.started");
    let (status, body) = p
        .send_as(
            &p.token,
            reqwest::Method::PATCH,
            "/v1/agents/pinned",
            Some(&json!({"model_config": {"script": [{"text": "edited mid-run"}]}})),
        )
        .await
        .expect("patch");
    assert_eq!(status, 200, "{body}");
    let done = stored_terminal(&p, &run).await;
    assert_eq!(
        (done.output.as_deref(), done.steps),
        (Some("as first defined"), 2),
        "{done:?}"
    );
}
