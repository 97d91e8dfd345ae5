//! Human in the loop across a federation link: a run forwarded to B that waits for its caller
//! is answered (or approved) at A, once, whoever answers; a waiting forwarded run expires.

use agentos_bus::federation::InboundEntry;
use agentos_bus::id::{RunId, Tenant};
use agentos_bus::provision::Bucket;
use agentos_e2e::federation::{
    Clusters, FedOptions, LONG, asker_agent, check_journal, count, count_events, wait_agent_at_b,
    waiting_at_a,
};
use anyhow::Result;
use serde_json::json;

/// Human in the loop across the link: a run forwarded to B parks in `requires_action` on B
/// (its agent calls a client tool); A's SSE and `/wait` show it; four identical answers at A at
/// once resume B's run once; a different answer afterwards is refused.
#[tokio::test]
async fn an_answer_at_a_resumes_the_waiting_run_on_b_once() -> Result<()> {
    let c = Clusters::start(FedOptions::default()).await?;
    c.b.create_agent(asker_agent()).await?;
    wait_agent_at_b(&c, "asker").await?;
    let run = c.a.start_run("asker", "ask the caller").await?;
    // A's SSE emits the wait (and stays open: the run is not over).
    c.a.sse_until(&run, "run.requires_action", LONG).await?;
    // `/wait` at A returns at requires_action, naming the pending call.
    let (status, waiting) =
        c.a.get(&format!("/v1/runs/{run}/wait?timeout_s=30"))
            .await?;
    assert_eq!(status, 200, "{waiting}");
    assert_eq!(waiting["status"], "requires_action", "{waiting}");
    assert_eq!(waiting["node"], "b", "{waiting}");
    let calls = waiting["required_action"]["tool_calls"]
        .as_array()
        .expect("pending calls");
    assert_eq!(calls.len(), 1, "{waiting}");
    assert_eq!(calls[0]["name"], "lookup");
    let call_id = calls[0]["call_id"].as_str().expect("call id").to_owned();
    // Checked at A against the wait A sees: a wrong answer never leaves A.
    let path = format!("/v1/runs/{run}/tool_outputs");
    let (status, v) =
        c.a.post(
            &path,
            &json!({"tool_outputs": [{"call_id": "call_nope", "output": "x"}]}),
        )
        .await?;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("unknown_call_id")),
        "{v}"
    );
    // Four identical answers at once: each accepted.
    let answer = json!({"tool_outputs": [{"call_id": call_id, "output": "forty-two"}]});
    let sends = (0..4).map(|_| c.a.post(&path, &answer));
    for r in futures::future::join_all(sends).await {
        let (status, v) = r?;
        assert_eq!(status, 202, "{v}");
    }
    let done = c.a.wait_terminal(&run, LONG).await?;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "the caller said forty-two", "{done}");
    assert!(done.get("required_action").is_none(), "{done}");
    // Resumed once, at B and in A's copy of the journal.
    let run_id = RunId::parse(&run)?;
    let names = check_journal(&c.a.bus, &run).await?;
    assert_eq!(count(&names, "run.action_answered"), 1, "{names:?}");
    assert_eq!(count_events(&c.a.bus, &run_id, "model.completed").await?, 2);
    let inbound =
        c.b.bus
            .kv(Bucket::Fwd)
            .await?
            .get_as::<InboundEntry>(&agentos_bus::key::fwd_in(&Tenant::parse("acme")?, &run_id))
            .await?
            .expect("inbound entry at B");
    let local = inbound.value.local_run;
    assert_eq!(
        count_events(&c.b.bus, &local, "run.action_answered").await?,
        1
    );
    assert_eq!(count_events(&c.b.bus, &local, "run.completed").await?, 1);
    // The same answer again (a late retry) is accepted again and changes nothing; a different
    // one is refused.
    let (status, v) = c.a.post(&path, &answer).await?;
    assert_eq!(status, 202, "{v}");
    let other = json!({"tool_outputs": [{"call_id": call_id, "output": "other"}]});
    let (status, v) = c.a.post(&path, &other).await?;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "run_not_waiting", "{v}");
    assert_eq!(
        count_events(&c.b.bus, &local, "run.action_answered").await?,
        1
    );
    Ok(())
}

/// A different answer to a wait another answer claimed at A is refused (`409
/// already_answered`) before the run moves on, and never reaches B.
#[tokio::test]
async fn a_second_different_answer_at_a_is_refused_while_the_first_travels() -> Result<()> {
    let c = Clusters::start(FedOptions::default()).await?;
    c.b.create_agent(asker_agent()).await?;
    wait_agent_at_b(&c, "asker").await?;
    let run = c.a.start_run("asker", "ask").await?;
    let waiting = waiting_at_a(&c, &run).await?;
    let call_id = waiting["required_action"]["tool_calls"][0]["call_id"]
        .as_str()
        .expect("call id")
        .to_owned();
    let path = format!("/v1/runs/{run}/tool_outputs");
    let answers: Vec<_> = ["one", "two"]
        .iter()
        .map(|o| json!({"tool_outputs": [{"call_id": call_id, "output": o}]}))
        .collect();
    let (first, second) = tokio::join!(c.a.post(&path, &answers[0]), c.a.post(&path, &answers[1]));
    let mut codes = vec![first?, second?];
    codes.sort_by_key(|(s, _)| *s);
    assert_eq!(codes[0].0, 202, "{codes:?}");
    assert_eq!(codes[1].0, 409, "{codes:?}");
    assert!(
        matches!(
            codes[1].1["error"]["code"].as_str(),
            Some("already_answered" | "run_not_waiting")
        ),
        "{codes:?}"
    );
    let won = codes[0].1.clone();
    let done = c.a.wait_terminal(&run, LONG).await?;
    assert_eq!(done["status"], "completed", "{done}");
    let said = done["output"].as_str().unwrap_or_default().to_owned();
    assert!(
        said == "the caller said one" || said == "the caller said two",
        "{done} {won}"
    );
    let names = check_journal(&c.a.bus, &run).await?;
    assert_eq!(count(&names, "run.action_answered"), 1, "{names:?}");
    Ok(())
}

/// Approvals cross too: a call on B that requires approval is approved at A with edited
/// arguments, and B runs it once with the approver's arguments.
#[tokio::test]
async fn an_approval_at_a_runs_the_call_on_b_with_the_approvers_arguments() -> Result<()> {
    let c = Clusters::start(FedOptions::default()).await?;
    c.b.create_agent(json!({
        "id": "careful", "model": "scripted", "tools": ["echo"], "requires_approval": ["echo"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "echo", "arguments": {"text": "as the model said"}}]},
            {"text": "echoed {last_tool_output}"}
        ]}
    }))
    .await?;
    wait_agent_at_b(&c, "careful").await?;
    let run = c.a.start_run("careful", "echo it").await?;
    let waiting = waiting_at_a(&c, &run).await?;
    let call = &waiting["required_action"]["tool_calls"][0];
    assert_eq!(call["kind"], "approval", "{waiting}");
    let path = format!("/v1/runs/{run}/tool_outputs");
    // The wrong kind of answer is refused at A.
    let (status, v) =
        c.a.post(
            &path,
            &json!({"tool_outputs": [{"call_id": call["call_id"], "output": "x"}]}),
        )
        .await?;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("wrong_answer_kind")),
        "{v}"
    );
    let approve = json!({"approvals": [{"call_id": call["call_id"], "approve": true, "arguments": {"text": "as the approver said"}}]});
    let (status, v) = c.a.post(&path, &approve).await?;
    assert_eq!(status, 202, "{v}");
    let done = c.a.wait_terminal(&run, LONG).await?;
    assert_eq!(done["status"], "completed", "{done}");
    let output = done["output"].as_str().unwrap_or_default();
    assert!(output.contains("as the approver said"), "{done}");
    let names = check_journal(&c.a.bus, &run).await?;
    assert_eq!(count(&names, "tool.started"), 1, "{names:?}");
    assert_eq!(count(&names, "run.action_answered"), 1, "{names:?}");
    Ok(())
}

/// `expires_at` travels with the forward: a run waiting on B past it ends `expired` there, and
/// A's record follows.
#[tokio::test]
async fn a_forwarded_waiting_run_expires_at_a() -> Result<()> {
    let c = Clusters::start(FedOptions::default()).await?;
    c.b.create_agent(asker_agent()).await?;
    wait_agent_at_b(&c, "asker").await?;
    let at = agentos_bus::envelope::now() + time::Duration::seconds(4);
    let at = at.format(&time::format_description::well_known::Rfc3339)?;
    let (status, v) =
        c.a.post(
            "/v1/runs",
            &json!({"agent_id": "asker", "input": "ask", "expires_at": at}),
        )
        .await?;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["node"], "b", "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    let run = v["id"].as_str().expect("id").to_owned();
    let done = c.a.wait_terminal(&run, LONG).await?;
    assert_eq!(done["status"], "expired", "{done}");
    let names = check_journal(&c.a.bus, &run).await?;
    assert!(
        names.contains(&"run.requires_action".to_owned()),
        "{names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("run.expired"),
        "{names:?}"
    );
    // An answer after the end is refused at A.
    let (status, v) =
        c.a.post(
            &format!("/v1/runs/{run}/tool_outputs"),
            &json!({"tool_outputs": [{"call_id": "call_x", "output": "late"}]}),
        )
        .await?;
    assert_eq!(status, 409, "{v}");
    // Threads still stay in one cluster.
    let (status, v) =
        c.a.post(
            "/v1/runs",
            &json!({"agent_id": "asker", "input": "x", "thread_id": "thread_1", "placement": {"node": "b"}}),
        )
        .await?;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "federation_unsupported", "{v}");
    Ok(())
}
