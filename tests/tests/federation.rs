//! Federation over leaf nodes, end to end: two clusters on loopback (real nats-servers, the
//! real `agentos` binary), A the hub and B its leaf.

use std::time::Duration;

use agentos_bus::federation::{ForwardCancel, Topology};
use agentos_bus::id::{NodeId, RunId, Tenant};
use agentos_bus::subject::FedKind;
use agentos_bus::{Bus, ConnectOptions, Settings};
use agentos_e2e::eventually;
use agentos_e2e::federation::{Clusters, FedNats, FedOptions};
use anyhow::Result;
use futures::StreamExt;
use serde_json::json;

/// The link carries sourced federation streams and nothing else: a forward published at A
/// arrives in B's inbox; a run submitted at A never reaches B's runs stream.
#[tokio::test]
async fn the_link_carries_only_federation_streams() -> Result<()> {
    let (a_id, b_id) = (NodeId::parse("a")?, NodeId::parse("b")?);
    let (a_nats, leaf_port) = FedNats::hub(&a_id)?;
    let b_nats = FedNats::leaf(&b_id, leaf_port)?;
    let (na, nb) = (a_nats.start().await?, b_nats.start().await?);
    let a = Bus::connect(&ConnectOptions::new(na.url())).await?;
    let b = Bus::connect(&ConnectOptions::new(nb.url())).await?;
    a.provision(&Settings::default()).await?;
    b.provision(&Settings::default()).await?;
    a.provision_federation(&Topology {
        node: a_id.clone(),
        peers: vec![b_id.clone()],
    })
    .await?;
    b.provision_federation(&Topology {
        node: b_id.clone(),
        peers: vec![a_id.clone()],
    })
    .await?;
    let tenant = Tenant::parse("acme")?;
    let cancel = ForwardCancel {
        origin: a_id.clone(),
        run_id: RunId::new(),
        tenant: tenant.clone(),
    };
    a.fed_publish(&b_id, FedKind::Cancel, &tenant, &cancel, "x1", Some("tok"))
        .await?;
    let mut inbox = b.fed_inbox().await?;
    let got = tokio::time::timeout(Duration::from_secs(30), inbox.next()).await?;
    let d = got.expect("a message")?;
    assert_eq!(d.subject(), "agentos.fed.in.a.cancel.acme");
    assert_eq!(d.auth(), Some("tok"));
    assert_eq!(d.decode::<ForwardCancel>()?, cancel);
    d.ack().await?;
    Ok(())
}

const LONG: Duration = Duration::from_secs(60);

fn calc_agent() -> serde_json::Value {
    json!({
        "id": "calc", "model": "scripted", "tools": ["math.eval", "echo"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "math.eval", "arguments": {"expr": "6*7"}}]},
            {"tool_calls": [{"name": "echo", "arguments": {"said": "hello"}}]},
            {"text": "The answer is 42."}
        ]}
    })
}

/// Waits until A's peers list shows `agent` served by B.
async fn wait_agent_at_b(c: &Clusters, agent: &str) -> Result<()> {
    eventually("B announces the agent", LONG, || async {
        let (_, v) = c.a.get("/v1/federation/peers").await.ok()?;
        v["data"].as_array()?.iter().find(|p| {
            p["node"] == "b"
                && p["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == agent))
        })?;
        Some(())
    })
    .await
}

/// Must-show (a): a run created at A for an agent only B serves completes on B; A's SSE shows
/// every event in order and resumes exactly with Last-Event-ID; A's GET is right.
#[tokio::test]
async fn a_run_for_an_agent_only_b_serves_completes_on_b_and_streams_at_a() -> Result<()> {
    let c = Clusters::start(FedOptions::default()).await?;
    c.b.create_agent(calc_agent()).await?;
    wait_agent_at_b(&c, "calc").await?;
    let (status, created) =
        c.a.post(
            "/v1/runs",
            &json!({"agent_id": "calc", "input": "what is 6*7?"}),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["node"], "b", "{created}");
    let run = created["id"].as_str().expect("id").to_owned();
    let done = c.a.wait_terminal(&run, LONG).await?;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "The answer is 42.", "{done}");
    assert_eq!(done["steps"], 3, "{done}");
    assert_eq!(done["node"], "b", "{done}");
    assert!(done.get("status_reason").is_none(), "{done}");
    let events = c.a.events(&run, None).await?;
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "in order, none missing"
    );
    assert_eq!(
        events.first().map(|e| e.event.as_str()),
        Some("run.created")
    );
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("run.completed")
    );
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "tool.completed").count(),
        2,
        "{names:?}"
    );
    // Resume after event 3: exactly the rest.
    let rest = c.a.events(&run, Some(3)).await?;
    assert_eq!(rest, events[3..].to_vec());
    // The run lives at B under its own id, created by the same caller, with the same events.
    let (_, list) = c.b.get("/v1/runs?agent_id=calc").await?;
    let at_b = list["data"].as_array().expect("runs at B");
    assert_eq!(at_b.len(), 1, "{list}");
    assert_eq!(at_b[0]["status"], "completed");
    assert_eq!(at_b[0]["created_by"], done["created_by"]);
    // Not defined at A: the agent never ran there.
    let (status, _) = c.a.get("/v1/agents/calc").await?;
    assert_eq!(status, 404);
    Ok(())
}
