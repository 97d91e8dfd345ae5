//! Takeover: `kill -9` of the orchestrator driving runs; another orchestrator resumes every one
//! of them once the ack wait (2 s by default) runs out, not after the old 30 s, and each run's
//! tool call is neither lost nor run twice. Prints how long each run waited (the figure is
//! measured in `examples/takeover.rs`; here it only has to be far below the old bound).

use std::time::Duration;

use agentos_bus::id::{RunId, Tenant};
use agentos_e2e::{Options, Platform, percentile};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_orchestrators_runs_are_taken_over_within_the_ack_wait() {
    let mut p = Platform::start(Options {
        ack_wait: "2s",
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(json!({
        "id": "napper",
        "model": "scripted",
        "tools": ["sleep"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "sleep", "arguments": {"ms": 1000}}]},
            {"text": "rested"}
        ]}
    }))
    .await
    .expect("agent");
    let mut runs = Vec::new();
    for i in 0..10 {
        runs.push(
            p.start_run("napper", &format!("nap {i}"))
                .await
                .expect("run"),
        );
    }
    let tenant = Tenant::parse("acme").expect("tenant");
    let ids: Vec<RunId> = runs.iter().map(|r| RunId::parse(r).expect("id")).collect();
    // Every run is inside its tool call on the only orchestrator.
    p.wait_tool_started(&tenant, &ids).await.expect("started");
    p.spawn_orchestrator().expect("second orchestrator");
    p.wait_services(2).await.expect("second orchestrator up");
    let victim = p
        .procs
        .iter_mut()
        .find(|proc| proc.name == "orchestrator")
        .expect("the first orchestrator");
    victim.kill();
    let killed = time::OffsetDateTime::now_utc();

    let mut waited = Vec::new();
    for (run, id) in runs.iter().zip(&ids) {
        let done = p
            .wait_terminal(run, Duration::from_secs(60))
            .await
            .expect("terminal");
        assert_eq!(done["status"], "completed", "{done}");
        let journal = p.bus.read_journal(&tenant, id).await.expect("journal");
        let count = |t: &str| journal.iter().filter(|s| s.event.type_name() == t).count();
        assert_eq!(
            (count("tool.started"), count("tool.completed")),
            (1, 1),
            "one call, one result"
        );
        // The first event another orchestrator wrote after the kill.
        let resumed = journal
            .iter()
            .find(|s| s.event.ts > killed)
            .expect("an event after the kill");
        waited.push(Duration::try_from(resumed.event.ts - killed).unwrap_or_default());
    }
    waited.sort();
    eprintln!(
        "takeover after kill -9 (10 runs): p50 {:?}, max {:?}",
        percentile(&waited, 0.5),
        waited.last()
    );
    let slowest = waited.last().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(15),
        "a run waited {slowest:?} for another orchestrator"
    );
}
