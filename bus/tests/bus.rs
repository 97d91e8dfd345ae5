//! The bus against a real nats-server: provisioning, KV primitives, dedup, the journal guard,
//! dead letters and request errors.

use std::time::Duration;

use agentos_bus::envelope::{Envelope, Event, EventData, RunRequest, SubmitMessage, now};
use agentos_bus::id::{AgentId, RunId, Tenant};
use agentos_bus::provision::{
    EVENTS_MAX_CONSUMERS, Outcome, STREAM_DLQ, STREAM_EVENTS, STREAM_RUNS,
};
use agentos_bus::server::NatsServer;
use agentos_bus::subject::DlqKind;
use agentos_bus::{Bucket, Bus, CallMeta, ConnectOptions, Error, Settings};
use bytes::Bytes;

mod common;

use common::setup;

fn tenant() -> Tenant {
    Tenant::parse("acme").expect("tenant")
}

#[tokio::test]
async fn provisioning_twice_is_a_no_op() {
    let server = NatsServer::ephemeral().await.expect("nats-server");
    let bus = Bus::connect(&ConnectOptions::new(server.url()))
        .await
        .expect("connect");
    let check = bus.check(&Settings::default()).await.expect("check");
    assert!(check.items.iter().all(|i| i.outcome == Outcome::Missing));
    let first = bus
        .provision(&Settings::default())
        .await
        .expect("provision");
    assert!(
        first.items.iter().all(|i| i.outcome == Outcome::Created),
        "{first:?}"
    );
    assert_eq!(first.items.len(), 15, "5 streams and 10 buckets");
    let second = bus
        .provision(&Settings::default())
        .await
        .expect("provision again");
    assert!(
        second.items.iter().all(|i| i.outcome == Outcome::Unchanged),
        "{second:?}"
    );
    assert!(second.is_clean());
}

#[tokio::test]
async fn a_changed_setting_is_reported_as_drift_and_left_alone() {
    let (_server, bus) = setup().await;
    let changed = Settings {
        events_max_age: Duration::from_secs(3600),
        ..Settings::default()
    };
    let report = bus.provision(&changed).await.expect("provision");
    let drifted: Vec<_> = report.drifted().collect();
    assert_eq!(drifted.len(), 1, "{report:?}");
    assert_eq!(drifted[0].name, STREAM_EVENTS);
    let Outcome::Drift { differences } = &drifted[0].outcome else {
        panic!("expected drift, got {:?}", drifted[0].outcome)
    };
    assert!(differences[0].starts_with("max_age"), "{differences:?}");
    // Never rewritten: the original settings still match.
    assert!(
        bus.check(&Settings::default())
            .await
            .expect("check")
            .is_clean()
    );
}

/// A platform provisioned by the previous version (its runs stream without the expiry timers'
/// subject and message schedules) is upgraded in place, keeping what it holds.
#[tokio::test]
async fn an_older_runs_stream_is_upgraded_in_place() {
    use async_nats::jetstream::stream;
    let server = NatsServer::ephemeral().await.expect("nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let old = js
        .create_stream(stream::Config {
            name: STREAM_RUNS.into(),
            subjects: vec!["agentos.runs.*.submit".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("old stream");
    js.publish("agentos.runs.acme.submit", Bytes::from_static(b"{}"))
        .await
        .expect("publish")
        .await
        .expect("stored");
    drop(old);
    // An events stream from before its consumer limit ("none": the server's default, 1,000).
    let old_events = js
        .create_stream(stream::Config {
            name: STREAM_EVENTS.into(),
            subjects: vec!["agentos.events.*.*".into()],
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("old events stream");
    let default_limit = old_events.cached_info().config.max_consumers;
    let bus = Bus::connect(&ConnectOptions::new(server.url()))
        .await
        .expect("connect");
    let report = bus
        .provision(&Settings::default())
        .await
        .expect("provision");
    let runs = report
        .items
        .iter()
        .find(|i| i.name == STREAM_RUNS)
        .expect("runs stream");
    assert!(
        matches!(&runs.outcome, Outcome::Upgraded { changes } if changes.len() == 2),
        "{runs:?}"
    );
    let events = report
        .items
        .iter()
        .find(|i| i.name == STREAM_EVENTS)
        .expect("events stream");
    assert!(
        matches!(&events.outcome, Outcome::Upgraded { changes }
            if changes == &[format!("max consumers {default_limit} → {EVENTS_MAX_CONSUMERS}")]),
        "{events:?}"
    );
    let mut raised = js.get_stream(STREAM_EVENTS).await.expect("events stream");
    assert_eq!(
        raised.info().await.expect("info").config.max_consumers,
        EVENTS_MAX_CONSUMERS
    );
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        bus.stream_status(STREAM_RUNS)
            .await
            .expect("status")
            .messages,
        1,
        "what it held is kept"
    );
}

#[tokio::test]
async fn kv_create_and_update_fail_with_typed_errors() {
    let (_server, bus) = setup().await;
    let kv = bus.kv(Bucket::Runs).await.expect("bucket");
    let rev = kv
        .create(&k("acme.k"), Bytes::from_static(b"1"))
        .await
        .expect("create");
    let err = kv
        .create(&k("acme.k"), Bytes::from_static(b"2"))
        .await
        .expect_err("exists");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let rev2 = kv
        .update(&k("acme.k"), Bytes::from_static(b"2"), rev)
        .await
        .expect("update");
    let err = kv
        .update(&k("acme.k"), Bytes::from_static(b"3"), rev)
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::WrongRevision { .. }), "{err}");
    let got = kv.get(&k("acme.k")).await.expect("get").expect("present");
    assert_eq!((got.value.as_ref(), got.revision), (&b"2"[..], rev2));
    kv.create(&k("acme.j"), Bytes::from_static(b"x"))
        .await
        .expect("create j");
    kv.create(&k("other.k"), Bytes::from_static(b"x"))
        .await
        .expect("create other");
    kv.delete(&k("acme.j")).await.expect("delete");
    assert_eq!(kv.keys(&tenant()).await.expect("keys"), vec![k("acme.k")]);
    assert!(
        kv.keys(&Tenant::parse("nobody").expect("tenant"))
            .await
            .expect("keys")
            .is_empty()
    );
}

#[tokio::test]
async fn two_submits_with_one_msg_id_store_one_message() {
    let (_server, bus) = setup().await;
    let req = SubmitMessage::Run(Box::new(RunRequest {
        run_id: RunId::new(),
        tenant: tenant(),
        agent_id: AgentId::parse("a").expect("agent"),
        agent: None,
        input: "hi".into(),
        thread_id: None,
        multitask_strategy: None,
        metadata: Default::default(),
        submitted_at: now(),
        expires_at: None,
    }));
    assert!(!bus.submit(&req, &Default::default()).await.expect("first"));
    assert!(bus.submit(&req, &Default::default()).await.expect("second"));
    assert_eq!(
        bus.stream_status(STREAM_RUNS)
            .await
            .expect("status")
            .messages,
        1
    );
}

/// A client that retries its answer to `requires_action` must not resume the run twice; a
/// different answer is a different message.
#[tokio::test]
async fn a_retried_continuation_is_deduplicated_and_a_different_one_is_not() {
    let (_server, bus) = setup().await;
    let run_id = RunId::new();
    let answer = |output: serde_json::Value| {
        SubmitMessage::Continuation(agentos_bus::envelope::Continuation {
            run_id,
            tenant: tenant(),
            tool_outputs: vec![agentos_bus::envelope::ToolOutput {
                call_id: "call_1".parse().expect("call id"),
                output,
            }],
            approvals: Vec::new(),
        })
    };
    let meta = Default::default();
    let first = answer(serde_json::json!({"approved": true}));
    assert!(!bus.submit(&first, &meta).await.expect("first"));
    assert!(
        bus.submit(&first, &meta).await.expect("retry"),
        "the same answer again is a duplicate"
    );
    let other = answer(serde_json::json!({"approved": false}));
    assert!(!bus.submit(&other, &meta).await.expect("other"));
    assert_eq!(
        bus.stream_status(STREAM_RUNS)
            .await
            .expect("status")
            .messages,
        2
    );
}

#[tokio::test]
async fn only_one_append_wins_a_journal_position() {
    let (_server, bus) = setup().await;
    let run = RunId::new();
    let ev = |seq| Event {
        seq,
        run_id: run,
        tenant: tenant(),
        ts: now(),
        trace_id: None,
        data: EventData::StepStarted { step: 1 },
    };
    assert!(
        bus.last_event(&tenant(), &run)
            .await
            .expect("last")
            .is_none()
    );
    let s1 = bus.append(&ev(1), 0).await.expect("first append");
    let err = bus
        .append(&ev(1), 0)
        .await
        .expect_err("second writer loses");
    assert!(matches!(err, Error::WrongLastSequence { .. }), "{err}");
    let s2 = bus.append(&ev(2), s1).await.expect("next");
    let journal = bus.read_journal(&tenant(), &run).await.expect("read");
    assert_eq!(
        journal.iter().map(|s| s.event.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        bus.last_event(&tenant(), &run)
            .await
            .expect("last")
            .expect("some")
            .stream_seq,
        s2
    );
    assert!(
        bus.read_journal(&tenant(), &RunId::new())
            .await
            .expect("empty")
            .is_empty()
    );
}

/// A long journal whose events are interleaved with another run's is read whole, in order, each
/// event at its stream sequence.
#[tokio::test]
async fn a_long_interleaved_journal_is_read_whole_in_order() {
    let (_server, bus) = setup().await;
    let (run, other) = (RunId::new(), RunId::new());
    let ev = |run_id, seq| Event {
        seq,
        run_id,
        tenant: tenant(),
        ts: now(),
        trace_id: None,
        data: EventData::StepStarted { step: 1 },
    };
    let (mut last, mut last_other) = (0, 0);
    let mut seqs = Vec::new();
    for seq in 1..=600_u64 {
        last = bus.append(&ev(run, seq), last).await.expect("append");
        seqs.push(last);
        if seq % 3 == 0 {
            last_other = bus
                .append(&ev(other, seq / 3), last_other)
                .await
                .expect("append");
        }
    }
    let journal = bus.read_journal(&tenant(), &run).await.expect("read");
    assert_eq!(
        journal.iter().map(|s| s.event.seq).collect::<Vec<_>>(),
        (1..=600).collect::<Vec<_>>()
    );
    assert_eq!(
        journal.iter().map(|s| s.stream_seq).collect::<Vec<_>>(),
        seqs
    );
    assert_eq!(
        bus.read_journal(&tenant(), &other)
            .await
            .expect("read")
            .len(),
        200
    );
}

#[tokio::test]
async fn dead_letters_keep_the_payload_and_the_reason() {
    let (_server, bus) = setup().await;
    let err = SubmitMessage::decode(None, b"{not json").expect_err("garbage");
    bus.dead_letter(
        Some(&tenant()),
        DlqKind::Runs,
        "agentos.runs.acme.submit",
        &err,
        Bytes::from_static(b"{not json"),
    )
    .await
    .expect("dead-letter");
    assert_eq!(
        bus.stream_status(STREAM_DLQ)
            .await
            .expect("status")
            .messages,
        1
    );
}

#[tokio::test]
async fn a_call_nobody_serves_fails_fast_with_no_responders() {
    let (_server, bus) = setup().await;
    let mut replies = bus
        .call(
            s("agentos.tool.acme.nothing"),
            &CallMeta::new(tenant()),
            Bytes::new(),
        )
        .await
        .expect("call");
    let err = replies
        .next(Duration::from_secs(10))
        .await
        .expect_err("no responders");
    assert!(matches!(err, Error::NoResponders { .. }), "{err}");
}

/// A request (or its reply) lost with a dying NATS node leaves the caller with total silence:
/// it is sent again once, and the call completes; a second silence is a timeout.
#[tokio::test]
async fn a_call_that_hears_nothing_is_sent_again_once() {
    let (_server, bus) = setup().await;
    let mut service = bus
        .serve(&agentos_bus::ServiceSpec {
            name: "lossy".into(),
            version: "0.0.1".into(),
            description: "test".into(),
            endpoints: vec![s("agentos.tool.*.lossy").into()],
            metadata: Default::default(),
            tools: Vec::new(),
        })
        .await
        .expect("serve");
    let meta = CallMeta::new(tenant());
    let wait = Duration::from_millis(300);

    let mut replies = bus
        .call(s("agentos.tool.acme.lossy"), &meta, Bytes::from("one"))
        .await
        .expect("call");
    let answer = tokio::spawn(async move {
        let lost = service.next().await.expect("the first request");
        let again = service.next().await.expect("the same request again");
        assert_eq!(again.payload(), lost.payload());
        again.respond(Bytes::from("done")).await.expect("reply");
        service
    });
    let reply = replies.next(wait).await.expect("answered the second time");
    assert_eq!(reply.payload, Bytes::from("done"));
    let mut service = answer.await.expect("service");

    let mut replies = bus
        .call(s("agentos.tool.acme.lossy"), &meta, Bytes::from("two"))
        .await
        .expect("call");
    let err = replies.next(wait).await.expect_err("silent twice");
    assert!(matches!(err, Error::TimedOut { .. }), "{err}");
    for _ in 0..2 {
        let req = tokio::time::timeout(Duration::from_secs(5), service.next())
            .await
            .expect("sent")
            .expect("a request");
        assert_eq!(req.payload(), &Bytes::from("two"));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), service.next())
            .await
            .is_err(),
        "sent twice, not three times"
    );
}

#[tokio::test]
async fn connecting_to_nothing_is_a_clear_error() {
    let opts = ConnectOptions {
        request_timeout: Some(Duration::from_secs(1)),
        ..ConnectOptions::new("nats://127.0.0.1:1")
    };
    let err = Bus::connect(&opts).await.expect_err("refused");
    assert_eq!(err.code(), "connect_failed");
}

#[tokio::test]
async fn the_auth_context_travels_in_headers_and_a_foreign_tenant_is_refused() {
    let (_server, bus) = setup().await;
    let mut service = bus
        .serve(&agentos_bus::ServiceSpec {
            name: "probe".into(),
            version: "0.0.1".into(),
            description: "test".into(),
            endpoints: vec![s("agentos.tool.*.probe").into()],
            metadata: Default::default(),
            tools: Vec::new(),
        })
        .await
        .expect("serve");
    let meta = CallMeta {
        principal: Some("alice".into()),
        roles: vec![
            "member".into(),
            "tenant-admin".into(),
            "bad role\r\n".into(),
        ],
        request_id: Some("req-1".into()),
        ..CallMeta::new(tenant())
    };
    let _replies = bus
        .call(s("agentos.tool.acme.probe"), &meta, Bytes::new())
        .await
        .expect("call");
    let req = service.next().await.expect("a request");
    assert_eq!(req.tenant().expect("tenant").as_str(), "acme");
    assert_eq!(req.principal(), Some("alice"));
    assert_eq!(
        req.roles(),
        vec!["member", "tenant-admin"],
        "unsafe names are dropped"
    );
    assert_eq!(req.header(agentos_bus::headers::REQUEST_ID), Some("req-1"));

    let globex = CallMeta::new(Tenant::parse("globex").expect("tenant"));
    let _replies = bus
        .call(s("agentos.tool.acme.probe"), &globex, Bytes::new())
        .await
        .expect("call");
    let req = service.next().await.expect("a request");
    let err = req.tenant().expect_err("the header claims another tenant");
    assert_eq!(err.code(), "tenant_mismatch", "{err}");
}

fn k(key: &str) -> agentos_bus::Key {
    agentos_bus::Key::parse(key).expect("key")
}

fn s(subject: &str) -> agentos_bus::subject::Subject {
    agentos_bus::subject::Subject::parse(subject).expect("subject")
}

#[tokio::test]
async fn journal_start_finds_each_event_among_irregularly_interleaved_others() {
    let (_server, bus) = setup().await;
    let t = tenant();
    let (run, others) = (RunId::new(), [RunId::new(), RunId::new(), RunId::new()]);
    let event = |run_id: RunId, seq: u64| Event {
        seq,
        run_id,
        tenant: t.clone(),
        ts: now(),
        trace_id: None,
        data: EventData::StepStarted { step: 1 },
    };
    let (mut last, mut counts) = ([0_u64; 4], [0_u64; 3]);
    // A deterministic but irregular pattern: bursts of 0..=6 other events between ours.
    for seq in 1..=150_u64 {
        last[0] = bus.append(&event(run, seq), last[0]).await.expect("append");
        for i in 0..(seq * 7 % 11 % 7) {
            let o = usize::try_from(i % 3).expect("index");
            counts[o] += 1;
            last[o + 1] = bus
                .append(&event(others[o], counts[o]), last[o + 1])
                .await
                .expect("append");
        }
    }
    let stored = bus.read_journal(&t, &run).await.expect("journal");
    assert_eq!(stored.len(), 150);
    assert_eq!(bus.journal_start(&t, &run, 0).await.expect("start"), 0);
    for k in 1..=150_u64 {
        let start = bus.journal_start(&t, &run, k).await.expect("start");
        let want = stored
            .get(usize::try_from(k).expect("k"))
            .map_or(stored[149].stream_seq + 1, |s| s.stream_seq);
        assert_eq!(start, want, "after event {k}");
    }
    assert_eq!(
        bus.journal_start(&t, &RunId::new(), 3)
            .await
            .expect("start"),
        0,
        "an empty journal reads from the first event"
    );
}

#[tokio::test]
async fn a_served_tool_declares_its_spec_in_endpoint_metadata_and_discovery_finds_it() {
    let (_server, bus) = setup().await;
    let spec = agentos_bus::envelope::ToolSpec {
        name: agentos_bus::id::ToolName::parse("probe.upper").expect("name"),
        description: "upper-cases text".into(),
        parameters: serde_json::json!({"type": "object", "required": ["text"]}),
        idempotent: true,
        timeout_ms: 1500,
    };
    let _service = bus
        .serve(&agentos_bus::ServiceSpec {
            name: "probe-tools".into(),
            version: "0.0.1".into(),
            description: "test".into(),
            endpoints: Vec::new(),
            metadata: Default::default(),
            tools: vec![spec.clone()],
        })
        .await
        .expect("serve");
    let found = bus
        .discover_tools(Duration::from_secs(2), Duration::from_millis(50))
        .await
        .expect("discover");
    assert_eq!(found.into_values().collect::<Vec<_>>(), vec![spec]);
    // The endpoint serves the tool's subject.
    let instances = bus
        .discover_service("probe-tools", Duration::from_secs(2), Duration::ZERO)
        .await
        .expect("instances");
    assert_eq!(instances[0].endpoints, vec!["agentos.tool.*.probe.upper"]);
}
