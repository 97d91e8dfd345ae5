//! Threads end to end: a thread of three runs on an OpenAI-compatible upstream (started here,
//! recording every request), the third run's model request holding the first two runs'
//! messages; the history bound and its event; messages and runs pages; copy, patch and delete;
//! another tenant's 404.

use std::time::Duration;

use agentos_e2e::upstream::start_upstream;
use agentos_e2e::{Options, Platform, mint};
use serde_json::{Value, json};

fn route(addr: std::net::SocketAddr, key_file: &std::path::Path) -> String {
    format!(
        "[model.routes.up-model]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"model\"\napi-key-file = \"{}\"\n",
        key_file.display()
    )
}

async fn run_on(p: &Platform, agent: &str, thread: &str, input: &str) -> Value {
    let (status, v) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": agent, "input": input, "thread_id": thread}),
        )
        .await
        .expect("post run");
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["thread_id"], thread);
    let id = v["id"].as_str().expect("run id").to_owned();
    let done = p
        .wait_terminal(&id, Duration::from_secs(60))
        .await
        .expect("terminal");
    assert_eq!(done["status"], "completed", "{done}");
    done
}

/// The first model request whose last message is the user's `input`.
fn first_request_for(requests: &[Value], input: &str) -> Vec<Value> {
    requests
        .iter()
        .find(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["role"] == "user" && m["content"] == input)
        })
        .and_then(|r| r["messages"].as_array().cloned())
        .unwrap_or_else(|| panic!("no model request for {input:?}"))
}

fn roles(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["role"].as_str().unwrap_or("?"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thread_carries_its_messages_into_later_runs_within_its_bound_and_tenant() {
    let (addr, up, _server) = start_upstream().await;
    let key = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(key.path(), "sk-test-key\n").expect("write key");
    let p = Platform::start(Options {
        config: Some(route(addr, key.path())),
        ..Options::default()
    })
    .await
    .expect("platform");
    p.create_agent(
        json!({"id": "chat", "model": "up-model", "tools": ["echo"], "instructions": "be brief"}),
    )
    .await
    .expect("agent");
    p.create_agent(json!({"id": "short", "model": "up-model", "tools": ["echo"], "history": {"max_messages": 4}}))
        .await
        .expect("agent");

    let (status, thread) = p
        .post("/v1/threads", &json!({"metadata": {"topic": "trip"}}))
        .await
        .expect("create thread");
    assert_eq!(status, 201, "{thread}");
    assert_eq!(thread["object"], "thread");
    assert_eq!(thread["metadata"]["topic"], "trip");
    let tid = thread["id"].as_str().expect("thread id").to_owned();

    // Three runs, one after another. Each asks for the echo tool, then answers with its result.
    let mut runs = Vec::new();
    for input in ["first question", "second question", "third question"] {
        runs.push(run_on(&p, "chat", &tid, input).await["id"].clone());
    }
    let requests = up.requests();
    let third = first_request_for(&requests, "third question");
    assert_eq!(
        roles(&third),
        vec![
            "system",
            "user",
            "assistant",
            "tool",
            "assistant", // run 1
            "user",
            "assistant",
            "tool",
            "assistant", // run 2
            "user"
        ],
        "{third:#?}"
    );
    assert_eq!(third[0]["content"], "be brief");
    assert_eq!(third[1]["content"], "first question");
    assert_eq!(third[2]["tool_calls"][0]["function"]["name"], "echo");
    assert_eq!(
        third[3]["tool_call_id"], third[2]["tool_calls"][0]["id"],
        "a tool result follows its call"
    );
    assert!(
        third[4]["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("The tool said")),
        "{}",
        third[4]
    );
    assert_eq!(third[5]["content"], "second question");
    // The first run's request had no history at all.
    assert_eq!(
        roles(&first_request_for(&requests, "first question")),
        vec!["system", "user"]
    );

    // The thread's messages: twelve, oldest first by default, pages by cursor.
    let (status, page) = p
        .get(&format!("/v1/threads/{tid}/messages?limit=5"))
        .await
        .expect("messages");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"].as_array().map(Vec::len), Some(5));
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["content"], "first question");
    assert_eq!(page["data"][0]["object"], "thread.message");
    assert_eq!(page["data"][0]["run_id"], runs[0]);
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, rest) = p
        .get(&format!(
            "/v1/threads/{tid}/messages?limit=100&after={cursor}"
        ))
        .await
        .expect("messages");
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(7));
    assert_eq!(rest["has_more"], false);
    assert_eq!(page["data"][4]["content"], "second question");
    assert_eq!(rest["data"][0]["role"], "assistant");
    assert_eq!(rest["data"][0]["run_id"], runs[1]);
    let (_, newest) = p
        .get(&format!("/v1/threads/{tid}/messages?order=desc&limit=1"))
        .await
        .expect("messages");
    assert_eq!(newest["data"][0]["role"], "assistant");
    assert_eq!(newest["data"][0]["run_id"], runs[2]);
    let (status, bad) = p
        .get(&format!("/v1/threads/{tid}/messages?order=sideways"))
        .await
        .expect("messages");
    assert_eq!(
        (status, bad["error"]["code"].clone()),
        (400, json!("invalid_order"))
    );

    // The thread's runs, newest first.
    let (status, listed) = p
        .get(&format!("/v1/threads/{tid}/runs"))
        .await
        .expect("runs");
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<Value> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, vec![runs[2].clone(), runs[1].clone(), runs[0].clone()]);

    // The bound: an agent that takes 4 messages of history sends the last run's 4 and says
    // what it left out.
    let short = run_on(&p, "short", &tid, "fourth question").await;
    let fourth = first_request_for(&up.requests(), "fourth question");
    assert_eq!(
        roles(&fourth),
        vec!["user", "assistant", "tool", "assistant", "user"],
        "{fourth:#?}"
    );
    assert_eq!(fourth[0]["content"], "third question");
    let events = p
        .events(short["id"].as_str().expect("id"), None)
        .await
        .expect("events");
    let truncated = events
        .iter()
        .find(|e| e.event == "thread.history_truncated")
        .expect("a thread.history_truncated event");
    assert_eq!(truncated.data["data"]["omitted"], 8, "{:?}", truncated.data);
    assert_eq!(truncated.data["data"]["kept"], 4);
    assert_eq!(truncated.data["data"]["limit"]["max_messages"], 4);
    let loaded = events
        .iter()
        .find(|e| e.event == "thread.history")
        .expect("a thread.history event");
    assert_eq!(
        loaded.data["data"]["messages"].as_array().map(Vec::len),
        Some(4)
    );

    // A copy holds the same sixteen messages and goes its own way.
    let (status, copy) = p
        .post(&format!("/v1/threads/{tid}/copy"), &json!({}))
        .await
        .expect("copy");
    assert_eq!(status, 201, "{copy}");
    let cid = copy["id"].as_str().expect("copy id").to_owned();
    assert_ne!(cid, tid);
    assert_eq!(copy["metadata"]["topic"], "trip");
    let (_, original) = p
        .get(&format!("/v1/threads/{tid}/messages?limit=100"))
        .await
        .expect("messages");
    let (_, copied) = p
        .get(&format!("/v1/threads/{cid}/messages?limit=100"))
        .await
        .expect("messages");
    let contents = |v: &Value| -> Vec<Value> {
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| json!([m["role"], m["content"]]))
            .collect()
    };
    assert_eq!(contents(&original).len(), 16);
    assert_eq!(contents(&original), contents(&copied));
    run_on(&p, "chat", &cid, "fifth question").await;
    let (_, original_after) = p
        .get(&format!("/v1/threads/{tid}/messages?limit=100"))
        .await
        .expect("messages");
    assert_eq!(
        contents(&original_after).len(),
        16,
        "the fork left the original alone"
    );

    // Another tenant sees none of it.
    let other = mint("other").expect("token");
    let as_other = |method: reqwest::Method, path: String, body: Option<Value>| {
        let other = other.clone();
        let p = &p;
        async move {
            p.send_as(&other, method, &path, body.as_ref())
                .await
                .expect("request")
        }
    };
    let (status, _) = as_other(
        reqwest::Method::POST,
        "/v1/agents".into(),
        Some(json!({"id": "chat", "model": "up-model"})),
    )
    .await;
    assert_eq!(status, 201);
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/threads/{tid}")),
        (reqwest::Method::GET, format!("/v1/threads/{tid}/messages")),
        (reqwest::Method::GET, format!("/v1/threads/{tid}/runs")),
        (reqwest::Method::DELETE, format!("/v1/threads/{tid}")),
        (reqwest::Method::POST, format!("/v1/threads/{tid}/copy")),
    ] {
        let (status, v) = as_other(method.clone(), path.clone(), None).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "thread_not_found");
    }
    let (status, v) = as_other(
        reqwest::Method::POST,
        "/v1/runs".into(),
        Some(json!({"agent_id": "chat", "input": "peek", "thread_id": tid})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("thread_not_found"))
    );
    let (_, theirs) = as_other(reqwest::Method::GET, "/v1/threads".into(), None).await;
    assert_eq!(theirs["data"], json!([]));

    // List, patch, delete.
    let (_, mine) = p.get("/v1/threads").await.expect("list");
    let listed: Vec<Value> = mine["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(listed, vec![json!(cid), json!(tid)], "newest first");
    let (status, patched) = p
        .send_as(
            &p.token,
            reqwest::Method::PATCH,
            &format!("/v1/threads/{tid}"),
            Some(&json!({"metadata": {"topic": "holiday"}})),
        )
        .await
        .expect("patch");
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["metadata"], json!({"topic": "holiday"}));
    let (status, _) = p
        .send_as(
            &p.token,
            reqwest::Method::DELETE,
            &format!("/v1/threads/{tid}"),
            None,
        )
        .await
        .expect("delete");
    assert_eq!(status, 200);
    let (status, _) = p.get(&format!("/v1/threads/{tid}")).await.expect("get");
    assert_eq!(status, 404);
    let (status, v) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": "chat", "input": "x", "thread_id": tid}),
        )
        .await
        .expect("post");
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("thread_not_found"))
    );
    let (status, v) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": "chat", "input": "x", "thread_id": "Not A Thread"}),
        )
        .await
        .expect("post");
    assert_eq!(
        (status, v["error"]["param"].clone()),
        (400, json!("thread_id"))
    );
}
