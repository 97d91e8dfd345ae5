//! Calls that lose a message on the bus get it back. When a NATS node dies, a model request, or
//! the rest of a reply stream, can be lost without the caller's connection changing. A model
//! worker written here (on the platform's NATS) plays that loss, and the run still completes,
//! calling the model exactly twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentos_bus::envelope::EventData;
use agentos_bus::id::{RunId, Tenant};
use agentos_bus::{Incoming, ServiceSpec};
use agentos_e2e::{Options, Platform, subject};
use bytes::Bytes;
use serde_json::{Value, json};

/// How the model worker treats the first request it gets; the second is answered in full.
#[derive(Clone, Copy)]
enum Loss {
    /// The request is lost: no reply at all.
    Request,
    /// The reply stream stops after its first delta.
    StreamCut,
}

fn reply(v: Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// Serves model `lossy` on the platform's NATS; returns the count of requests received.
async fn lossy_model(p: &Platform, loss: Loss) -> Arc<AtomicUsize> {
    let mut service = p
        .bus
        .serve(&ServiceSpec {
            name: "lossy-model".into(),
            version: "0.0.1".into(),
            description: "a model worker whose first reply is lost".into(),
            endpoints: vec![subject("agentos.model.*.lossy").into()],
            metadata: Default::default(),
            tools: Vec::new(),
        })
        .await
        .expect("serve the model");
    let seen = Arc::new(AtomicUsize::new(0));
    let (bus, count) = (p.bus.clone(), seen.clone());
    tokio::spawn(async move {
        // Requests kept, never answered: dropping one must not answer it either.
        let mut lost: Vec<Incoming> = Vec::new();
        while let Some(req) = service.next().await {
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            if !first || matches!(loss, Loss::StreamCut) {
                let delta = json!({"type": "delta", "text": "forty-"});
                req.chunk(&bus, reply(delta)).await.expect("delta");
            }
            if first {
                lost.push(req);
                continue;
            }
            let done = json!({
                "type": "final",
                "message": {"role": "assistant", "content": "forty-two"},
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                "finish_reason": "stop"
            });
            req.respond(reply(done)).await.expect("final");
        }
    });
    seen
}

async fn run_through(loss: Loss) -> (Platform, Value, Arc<AtomicUsize>) {
    let p = Platform::start(Options {
        env: vec![("AGENTOS_MODEL_TIMEOUT".into(), "1s".into())],
        ..Options::default()
    })
    .await
    .expect("platform");
    let seen = lossy_model(&p, loss).await;
    p.create_agent(json!({"id": "asker", "model": "lossy"}))
        .await
        .expect("agent");
    let run = p
        .start_run("asker", "what is six times seven")
        .await
        .expect("run");
    let done = p
        .wait_terminal(&run, Duration::from_secs(30))
        .await
        .expect("terminal");
    (p, done, seen)
}

async fn journal(p: &Platform, run: &Value) -> Vec<EventData> {
    let tenant = Tenant::parse("acme").expect("tenant");
    let run = RunId::parse(run["id"].as_str().expect("id")).expect("run id");
    p.bus
        .read_journal(&tenant, &run)
        .await
        .expect("journal")
        .into_iter()
        .map(|s| s.event.data)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_model_request_is_sent_again_and_the_run_completes() {
    let (p, done, seen) = run_through(Loss::Request).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "forty-two");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "the request, sent twice");
    let events = journal(&p, &done).await;
    let deltas = events
        .iter()
        .filter(|e| matches!(e, EventData::ModelDelta { .. }))
        .count();
    assert_eq!(deltas, 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_reply_stream_calls_the_model_again_and_the_run_completes() {
    let (p, done, seen) = run_through(Loss::StreamCut).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "forty-two");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "called twice, not more");
    let events = journal(&p, &done).await;
    let deltas = events
        .iter()
        .filter(|e| matches!(e, EventData::ModelDelta { .. }))
        .count();
    let completed = events
        .iter()
        .filter(|e| matches!(e, EventData::ModelCompleted { .. }))
        .count();
    // The first attempt's delta stays (deltas are a preview, api.md); one message is final.
    assert_eq!((deltas, completed), (2, 1), "{events:?}");
}
