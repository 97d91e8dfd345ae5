//! The runs API in-process: `Router::oneshot` against a real nats-server, no binary.

mod common;

use axum::http::{Method, StatusCode};
use common::Edge;

#[tokio::test]
async fn wait_on_a_missing_or_foreign_run_leaves_no_waiter_behind() {
    let edge = Edge::start().await;
    edge.create_agent("acme", "a1").await;
    let foreign = edge.create_run("acme", "a1", "hi").await;
    for _ in 0..5 {
        let id = uuid::Uuid::now_v7();
        let (status, body) = edge
            .call(
                Method::GET,
                &format!("/v1/runs/{id}/wait?timeout_s=1"),
                "acme",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    let (status, _) = edge
        .call(
            Method::GET,
            &format!("/v1/runs/{foreign}/wait?timeout_s=1"),
            "other",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(edge.state.waiting_runs(), 0, "404s left waiters registered");
}

#[tokio::test]
async fn a_submitted_run_answers_201_even_when_the_audit_write_fails() {
    let edge = Edge::start().await;
    edge.create_agent("acme", "a1").await;
    assert!(
        edge.bus
            .delete_stream(agentos_bus::provision::STREAM_AUDIT)
            .await
            .expect("delete audit stream")
    );
    let (status, body) = edge
        .call(
            Method::POST,
            "/v1/runs",
            "acme",
            Some(serde_json::json!({"agent_id": "a1", "input": "hi"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("id");
    let (status, run) = edge
        .call(Method::GET, &format!("/v1/runs/{id}"), "acme", None)
        .await;
    assert_eq!(
        (status, run["status"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
    let (_, list) = edge.call(Method::GET, "/v1/runs", "acme", None).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id], "the run exists exactly once");
    // A cancel is committed before its audit write too.
    let (status, body) = edge
        .call(Method::POST, &format!("/v1/runs/{id}/cancel"), "acme", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled");
}

/// Appends `n` events to `run`'s journal (the last one terminal), interleaved with another
/// run's events so stream and event sequences differ.
async fn journal(edge: &Edge, tenant: &str, run: &str, other: &str, n: u64) {
    use agentos_bus::envelope::{Event, EventData, Usage, now};
    let tenant: agentos_bus::id::Tenant = tenant.parse().expect("tenant");
    let mut last = [0_u64; 2];
    for seq in 1..=n {
        for (i, id) in [run, other].into_iter().enumerate() {
            let data = if seq == n && i == 0 {
                EventData::RunCompleted {
                    output: "done".into(),
                    usage: Usage::default(),
                }
            } else {
                EventData::ModelDelta {
                    step: 1,
                    text: format!("d{seq}"),
                }
            };
            let event = Event {
                seq,
                run_id: agentos_bus::id::RunId::parse(id).expect("run id"),
                tenant: tenant.clone(),
                ts: now(),
                trace_id: None,
                data,
            };
            last[i] = edge.bus.append(&event, last[i]).await.expect("append");
        }
    }
}

#[tokio::test]
async fn sse_resume_starts_the_bus_read_at_the_requested_event() {
    let edge = Edge::start().await;
    edge.create_agent("acme", "a1").await;
    let run = edge.create_run("acme", "a1", "hi").await;
    let other = edge.create_run("acme", "a1", "noise").await;
    journal(&edge, "acme", &run, &other, 12).await;
    let tenant: agentos_bus::id::Tenant = "acme".parse().expect("tenant");
    let run_id = agentos_bus::id::RunId::parse(&run).expect("run id");
    let stored = edge
        .bus
        .read_journal(&tenant, &run_id)
        .await
        .expect("journal");
    for k in [0_u64, 1, 4, 7, 11, 12] {
        let start = edge
            .bus
            .journal_start(&tenant, &run_id, k)
            .await
            .expect("journal start");
        let want = match k {
            0 => 0, // from the first event
            _ => stored
                .get(usize::try_from(k).expect("k"))
                .map_or(stored[11].stream_seq + 1, |s| s.stream_seq),
        };
        assert_eq!(
            start,
            want,
            "the read after event {k} starts at event {}",
            k + 1
        );
        if k > 0 {
            assert!(start > stored[usize::try_from(k - 1).expect("k")].stream_seq);
        }
        let resp = edge
            .send_with(
                Method::GET,
                &format!("/v1/runs/{run}/events"),
                "acme",
                None,
                &[("last-event-id", &k.to_string())],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let text = common::text_of(resp).await;
        let ids: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
            .map(|v| v.trim().parse().expect("id"))
            .collect();
        assert_eq!(ids, ((k + 1)..=12).collect::<Vec<_>>(), "resume after {k}");
    }
    // ?after= does the same.
    let resp = edge
        .send(
            Method::GET,
            &format!("/v1/runs/{run}/events?after=9"),
            "acme",
            None,
        )
        .await;
    let text = common::text_of(resp).await;
    assert_eq!(
        text.matches("\nid:").count() + usize::from(text.starts_with("id:")),
        3,
        "{text}"
    );
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn runs_are_created_read_listed_cancelled_and_waited_for() {
    let edge = Edge::start().await;
    edge.create_agent("acme", "a1").await;
    edge.create_agent("acme", "a2").await;
    let mut created = Vec::new();
    for i in 0..7 {
        let agent = if i % 2 == 0 { "a1" } else { "a2" };
        created.push(edge.create_run("acme", agent, &format!("r{i}")).await);
    }
    created.reverse(); // newest first
    // Read.
    let (status, run) = edge
        .call(
            Method::GET,
            &format!("/v1/runs/{}", created[0]),
            "acme",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (run["status"].as_str(), run["input"].as_str()),
        (Some("queued"), Some("r6"))
    );
    let (status, _) = edge
        .call(
            Method::GET,
            &format!("/v1/runs/{}", created[0]),
            "globex",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's run is 404");
    // List: pages of 3 walk every run once, newest first.
    let mut listed = Vec::new();
    let mut path = "/v1/runs?limit=3".to_owned();
    loop {
        let (status, page) = edge.call(Method::GET, &path, "acme", None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        listed.extend(ids(&page));
        if page["has_more"] == false {
            assert!(page["next_cursor"].is_null());
            break;
        }
        let cursor = page["next_cursor"].as_str().expect("cursor");
        assert_eq!(Some(cursor), listed.last().map(String::as_str));
        path = format!("/v1/runs?limit=3&after={cursor}");
    }
    assert_eq!(listed, created);
    let (_, a2) = edge
        .call(Method::GET, "/v1/runs?agent_id=a2", "acme", None)
        .await;
    assert_eq!(
        ids(&a2),
        [created[1].clone(), created[3].clone(), created[5].clone()]
    );
    let (_, none) = edge.call(Method::GET, "/v1/runs", "globex", None).await;
    assert!(ids(&none).is_empty());
    // Cancel: a queued run is cancelled at once; again is 409.
    let (status, body) = edge
        .call(
            Method::POST,
            &format!("/v1/runs/{}/cancel", created[3]),
            "acme",
            None,
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::ACCEPTED, Some("cancelled"))
    );
    let (status, _) = edge
        .call(
            Method::POST,
            &format!("/v1/runs/{}/cancel", created[3]),
            "acme",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, cancelled) = edge
        .call(Method::GET, "/v1/runs?status=cancelled", "acme", None)
        .await;
    assert_eq!(ids(&cancelled), [created[3].clone()]);
    assert_eq!(cancelled["has_more"], false);
    let (_, queued) = edge
        .call(Method::GET, "/v1/runs?status=queued&limit=2", "acme", None)
        .await;
    assert_eq!(ids(&queued), [created[0].clone(), created[1].clone()]);
    assert_eq!(queued["has_more"], true);
    // Wait: a terminal run answers at once, a queued one after the timeout as it is...
    let (status, body) = edge
        .call(
            Method::GET,
            &format!("/v1/runs/{}/wait", created[3]),
            "acme",
            None,
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, body) = edge
        .call(
            Method::GET,
            &format!("/v1/runs/{}/wait?timeout_s=0", created[0]),
            "acme",
            None,
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
    // ...and one that ends while waited for answers when it ends.
    let wait_path = format!("/v1/runs/{}/wait?timeout_s=60", created[1]);
    let waiting = edge.call(Method::GET, &wait_path, "acme", None);
    let cancel = async {
        // Cancel once the waiter is registered.
        while edge.state.waiting_runs() == 0 {
            tokio::task::yield_now().await;
        }
        edge.call(
            Method::POST,
            &format!("/v1/runs/{}/cancel", created[1]),
            "acme",
            None,
        )
        .await
    };
    let ((status, body), (cancel_status, _)) = tokio::join!(waiting, cancel);
    assert_eq!(cancel_status, StatusCode::ACCEPTED);
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(edge.state.waiting_runs(), 0);
}

#[tokio::test]
async fn an_idempotent_replay_is_listed_once() {
    let edge = Edge::start().await;
    edge.create_agent("acme", "a1").await;
    let body = serde_json::json!({"agent_id": "a1", "input": "once"});
    let mut seen = Vec::new();
    for expected in [StatusCode::CREATED, StatusCode::OK, StatusCode::OK] {
        let (status, run) = common::json_of(
            edge.send_with(
                Method::POST,
                "/v1/runs",
                "acme",
                Some(body.clone()),
                &[("idempotency-key", "k1")],
            )
            .await,
        )
        .await;
        assert_eq!(status, expected, "{run}");
        seen.push(run["id"].as_str().expect("id").to_owned());
    }
    seen.dedup();
    let (_, list) = edge.call(Method::GET, "/v1/runs", "acme", None).await;
    assert_eq!(ids(&list), seen);
}
