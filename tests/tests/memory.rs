//! Memory end to end: the real binary (two edges on one NATS), compare-and-set under
//! contention, TTL, tenancy, and bad input answered with documented 4xx that store nothing.

use std::time::Duration;

use agentos_e2e::{Options, Platform, eventually, free_port, mint};
use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};

/// One increment through `edge`: read, write with `If-Match` (or `If-None-Match: *` when the
/// item does not exist yet), and retry on 412. Returns how many times it had to retry.
async fn increment(http: &reqwest::Client, edge: &str, token: &str, path: &str) -> Result<u32> {
    let url = format!("{edge}{path}");
    for attempt in 0..1000 {
        let r = http.get(&url).bearer_auth(token).send().await?;
        let (current, precondition) = match r.status().as_u16() {
            200 => {
                let etag = r
                    .headers()
                    .get("etag")
                    .context("no ETag")?
                    .to_str()?
                    .to_owned();
                let body: Value = r.json().await?;
                (body["value"].as_i64().context("value")?, ("if-match", etag))
            }
            404 => (0, ("if-none-match", "*".to_owned())),
            s => bail!("GET answered {s}"),
        };
        let w = http
            .put(&url)
            .bearer_auth(token)
            .header(precondition.0, precondition.1)
            .json(&json!({"value": current + 1}))
            .send()
            .await?;
        match w.status().as_u16() {
            200 => return Ok(attempt),
            412 => {
                let body: Value = w.json().await?;
                let code = body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if code != "revision_mismatch" && code != "item_exists" {
                    bail!("412 with code {code}");
                }
            }
            s => bail!("PUT answered {s}: {}", w.text().await?),
        }
    }
    bail!("no increment after 1000 attempts")
}

#[tokio::test]
async fn memory_compare_and_set_through_two_edges_ttl_and_tenancy() -> Result<()> {
    let mut p = Platform::start(Options::default()).await?;
    let port = free_port()?;
    let edge2 = format!("http://127.0.0.1:{port}");
    p.spawn("edge2", &["edge", "--listen", &format!("127.0.0.1:{port}")])?;
    let ready = format!("{edge2}/readyz");
    eventually("second edge", Duration::from_secs(60), || async {
        let r = p.http.get(&ready).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;

    // 50 concurrent read / If-Match write / retry loops, alternating between the two edges.
    let path = "/v1/memory/counters.shared/hits";
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = p.http.clone();
        let edge = if i % 2 == 0 {
            p.edge_url.clone()
        } else {
            edge2.clone()
        };
        let token = p.token.clone();
        tasks.push(tokio::spawn(async move {
            increment(&http, &edge, &token, path).await
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await??;
    }
    let (status, item) = p.get(path).await?;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["value"], json!(50), "{item}");
    assert!(retries > 0, "50 concurrent writers never collided");
    eprintln!(
        "50 increments through two edges: {retries} retries after 412, {:?}",
        started.elapsed()
    );

    // A stale If-Match answers 412 and changes nothing.
    let rev = item["revision"].as_u64().context("revision")?;
    let stale = p
        .req(Method::PUT, path)
        .header("if-match", format!("\"{}\"", rev - 1))
        .json(&json!({"value": 0}))
        .send()
        .await?;
    assert_eq!(stale.status().as_u16(), 412);
    let body: Value = stale.json().await?;
    assert_eq!(body["error"]["code"], "revision_mismatch", "{body}");
    let stale_delete = p
        .req(Method::DELETE, path)
        .header("if-match", (rev - 1).to_string())
        .send()
        .await?;
    assert_eq!(stale_delete.status().as_u16(), 412);
    assert_eq!(p.get(path).await?.1["value"], json!(50));

    // Another tenant sees none of it.
    let other = mint("umbrella")?;
    for (method, body) in [
        (Method::GET, None),
        (Method::DELETE, None),
        (Method::PUT, Some(json!({"value": 1}))),
    ] {
        let mut req = p
            .http
            .request(method.clone(), p.url(path))
            .bearer_auth(&other)
            .header("if-match", rev.to_string());
        if let Some(b) = &body {
            req = req.json(b);
        }
        let status = req.send().await?.status().as_u16();
        // Its own (absent) item: not found, or stale for a conditional write.
        assert!(status == 404 || status == 412, "{method} {status}");
    }
    let (status, list) = p
        .send_as(&other, Method::GET, "/v1/memory/counters.shared", None)
        .await?;
    assert_eq!((status, list["data"].clone()), (200, json!([])));
    assert_eq!(p.get(path).await?.1["value"], json!(50), "untouched");

    // A TTL'd item disappears.
    let brief = "/v1/memory/counters.shared/brief";
    let (status, v) = p
        .send_as(
            &p.token,
            Method::PUT,
            brief,
            Some(&json!({"value": "soon gone", "ttl_s": 1})),
        )
        .await?;
    assert_eq!(status, 200, "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    eventually(
        "the TTL'd item to expire",
        Duration::from_secs(20),
        || async { (p.get(brief).await.ok()?.0 == 404).then_some(()) },
    )
    .await?;

    // Listing: a page, a cursor, a prefix.
    for k in ["a1", "a2", "b1"] {
        let (s, _) = p
            .send_as(
                &p.token,
                Method::PUT,
                &format!("/v1/memory/lists.demo/{k}"),
                Some(&json!({"value": k})),
            )
            .await?;
        assert_eq!(s, 200);
    }
    let (_, page) = p.get("/v1/memory/lists.demo?limit=2").await?;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["has_more"], json!(true));
    let (_, rest) = p
        .get(&format!(
            "/v1/memory/lists.demo?limit=2&after={}",
            page["next_cursor"].as_str().context("cursor")?
        ))
        .await?;
    assert_eq!(rest["data"][0]["key"], "b1", "{rest}");
    assert_eq!(rest["has_more"], json!(false));
    let (_, prefixed) = p.get("/v1/memory/lists.demo?prefix=a").await?;
    assert_eq!(prefixed["data"].as_array().map(Vec::len), Some(2));
    let d = p
        .req(Method::DELETE, "/v1/memory/lists.demo/a1")
        .send()
        .await?;
    assert_eq!(d.status().as_u16(), 204);
    assert_eq!(p.get("/v1/memory/lists.demo/a1").await?.0, 404);
    Ok(())
}

#[tokio::test]
async fn bad_memory_input_is_a_documented_4xx_and_stores_nothing() -> Result<()> {
    let p = Platform::start(Options::default()).await?;
    let put = |path: &str, body: Value, header: Option<(&str, &str)>| {
        let mut req = p.req(Method::PUT, path).json(&body);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        req.send()
    };
    let big = "x".repeat(64 * 1024);
    type Case<'a> = (&'a str, Value, Option<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/v1/memory/Bad.NS/k",
            json!({"value": 1}),
            None,
            400,
            "invalid_namespace",
        ),
        (
            "/v1/memory/a..b/k",
            json!({"value": 1}),
            None,
            400,
            "invalid_namespace",
        ),
        (
            "/v1/memory/ok.ns/bad.key",
            json!({"value": 1}),
            None,
            400,
            "invalid_key",
        ),
        (
            "/v1/memory/ok.ns/k",
            json!({"value": big}),
            None,
            413,
            "value_too_large",
        ),
        (
            "/v1/memory/ok.ns/k",
            json!({"value": 1}),
            Some(("if-match", "W/\"3\"")),
            400,
            "invalid_if_match",
        ),
        (
            "/v1/memory/ok.ns/k",
            json!({"value": 1}),
            Some(("if-match", "abc")),
            400,
            "invalid_if_match",
        ),
        (
            "/v1/memory/ok.ns/k",
            json!({"value": 1}),
            Some(("if-none-match", "\"3\"")),
            400,
            "invalid_if_none_match",
        ),
        (
            "/v1/memory/ok.ns/k",
            json!({"value": 1, "ttl_s": 0}),
            None,
            400,
            "invalid_ttl",
        ),
        (
            "/v1/memory/ok.ns/k",
            json!({"value": 1, "extra": true}),
            None,
            400,
            "invalid_body",
        ),
        (
            "/v1/memory/ok.ns/k",
            json!({"ttl_s": 5}),
            None,
            400,
            "invalid_body",
        ),
    ];
    for (path, body, header, status, code) in cases {
        let r = put(path, body, header).await?;
        assert_eq!(r.status().as_u16(), status, "{path} {header:?}");
        let v: Value = r.json().await?;
        assert_eq!(v["error"]["code"], code, "{path} {header:?}: {v}");
    }
    assert_eq!(p.get("/v1/memory/ok.ns/k").await?.0, 404, "nothing stored");
    let (_, list) = p.get("/v1/memory/ok.ns").await?;
    assert_eq!(list["data"], json!([]));
    for (method, header, code) in [
        (Method::DELETE, ("if-match", "abc"), "invalid_if_match"),
        (
            Method::DELETE,
            ("if-none-match", "*"),
            "invalid_if_none_match",
        ),
    ] {
        let r = p
            .req(method.clone(), "/v1/memory/ok.ns/k")
            .header(header.0, header.1)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 400, "{method} {header:?}");
        let v: Value = r.json().await?;
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let both = p
        .req(Method::PUT, "/v1/memory/ok.ns/k")
        .header("if-match", "1")
        .header("if-none-match", "*")
        .json(&json!({"value": 1}))
        .send()
        .await?;
    assert_eq!(both.status().as_u16(), 400);
    assert_eq!(
        p.get("/v1/memory/ok.ns/k").await?.0,
        404,
        "still nothing stored"
    );
    for (path, code) in [
        ("/v1/memory/ok.ns/bad.key", "invalid_key"),
        ("/v1/memory/ok.ns?limit=0", "invalid_limit"),
        ("/v1/memory/ok.ns?bogus=1", "invalid_query"),
        ("/v1/memory/NS", "invalid_namespace"),
    ] {
        let (status, v) = p.get(path).await?;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{path}"
        );
    }
    Ok(())
}

const SEMANTIC: &str = r#"
[model.routes.local-embed]
backend = "hash"

[memory.namespaces."notes"]
embedding-model = "local-embed"
"#;

#[tokio::test]
async fn semantic_search_and_filters_over_an_embedded_namespace() -> Result<()> {
    let p = Platform::start(Options {
        config: Some(SEMANTIC.into()),
        ..Options::default()
    })
    .await?;
    let items = [
        (
            "color",
            json!({"text": "my favorite color is teal", "kind": "fact"}),
        ),
        (
            "train",
            json!({"text": "the train leaves at noon", "kind": "fact"}),
        ),
        (
            "todo",
            json!({"text": "buy milk and bread", "kind": "todo"}),
        ),
    ];
    for (k, v) in &items {
        let (s, body) = p
            .send_as(
                &p.token,
                Method::PUT,
                &format!("/v1/memory/notes.alice/{k}"),
                Some(&json!({"value": v})),
            )
            .await?;
        assert_eq!(s, 200, "{body}");
    }
    let (s, hits) = p
        .post(
            "/v1/memory/notes.alice/search",
            &json!({"query": "what is my favorite color?", "limit": 2}),
        )
        .await?;
    assert_eq!(s, 200, "{hits}");
    assert_eq!(hits["data"][0]["key"], "color", "{hits}");
    assert_eq!(hits["data"].as_array().map(Vec::len), Some(2));
    let (s0, s1) = (
        hits["data"][0]["score"].as_f64().context("score")?,
        hits["data"][1]["score"].as_f64().context("score")?,
    );
    assert!(s0 > s1, "{hits}");

    let (_, todos) = p
        .post(
            "/v1/memory/notes.alice/search",
            &json!({"filter": {"kind": "todo"}}),
        )
        .await?;
    assert_eq!(todos["data"].as_array().map(Vec::len), Some(1), "{todos}");
    assert_eq!(todos["data"][0]["key"], "todo");
    let (_, both) = p
        .post(
            "/v1/memory/notes.alice/search",
            &json!({"query": "leaves noon", "filter": {"kind": "fact"}, "limit": 1}),
        )
        .await?;
    assert_eq!(both["data"][0]["key"], "train", "{both}");

    // Another tenant searches its own (empty) namespace.
    let other = mint("umbrella")?;
    let (_, theirs) = p
        .send_as(
            &other,
            Method::POST,
            "/v1/memory/notes.alice/search",
            Some(&json!({"query": "favorite color"})),
        )
        .await?;
    assert_eq!(theirs["data"], json!([]), "{theirs}");

    // Bad input: documented 4xx.
    for (path, body, code) in [
        (
            "/v1/memory/notes.alice/search",
            json!({"filter": ["kind"]}),
            "invalid_filter",
        ),
        (
            "/v1/memory/notes.alice/search",
            json!({"filter": "kind"}),
            "invalid_filter",
        ),
        (
            "/v1/memory/notes.alice/search",
            json!({"limit": 0}),
            "invalid_limit",
        ),
        (
            "/v1/memory/notes.alice/search",
            json!({"bogus": 1}),
            "invalid_body",
        ),
        ("/v1/memory/Notes/search", json!({}), "invalid_namespace"),
    ] {
        let (s, v) = p.post(path, &body).await?;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{path} {body}: {v}"
        );
    }
    // Well formed, but the namespace's configuration cannot serve it.
    let (s, v) = p
        .post("/v1/memory/plain.ns/search", &json!({"query": "x"}))
        .await?;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("semantic_search_unavailable")),
        "{v}"
    );
    let (s, v) = p
        .send_as(
            &p.token,
            Method::PUT,
            "/v1/memory/notes.alice/search",
            Some(&json!({"value": 1})),
        )
        .await?;
    assert_eq!(s, 405, "search is not a key: {v}");

    // The official openai SDK against POST /v1/embeddings.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/embeddings_sdk.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("AGENTOS_BASE_URL", p.url("/v1"))
        .env("AGENTOS_TOKEN", &p.token)
        .output()
        .await
        .context("python3 with the openai package (tests/requirements.txt)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("all openai SDK embeddings checks passed"),
        "{text}"
    );
    for (body, code) in [
        (
            json!({"model": "local-embed", "input": ""}),
            "invalid_input",
        ),
        (
            json!({"model": "local-embed", "input": []}),
            "invalid_input",
        ),
        (
            json!({"model": "local-embed", "input": "x", "encoding_format": "hex"}),
            "invalid_encoding_format",
        ),
        (json!({"model": "Bad Model", "input": "x"}), "invalid_id"),
        (json!({"model": "local-embed"}), "invalid_body"),
    ] {
        let (s, v) = p.post("/v1/embeddings", &body).await?;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    Ok(())
}

/// The tool.completed / tool.failed events of a run, from its SSE stream.
async fn tool_events(p: &Platform, run: &str) -> Result<Vec<agentos_e2e::SseEvent>> {
    Ok(p.events(run, None)
        .await?
        .into_iter()
        .filter(|e| e.event == "tool.completed" || e.event == "tool.failed")
        .collect())
}

/// A run on a new thread (named in its metadata): runs on different threads share no history.
async fn run_on_thread(p: &Platform, agent: &str, name: &str) -> Result<(String, Value)> {
    let (s, t) = p
        .post("/v1/threads", &json!({"metadata": {"name": name}}))
        .await?;
    if s != 201 {
        bail!("create thread: {s} {t}");
    }
    let thread = t["id"].as_str().context("thread id")?;
    let (s, v) = p
        .post(
            "/v1/runs",
            &json!({"agent_id": agent, "input": "go", "thread_id": thread}),
        )
        .await?;
    if s != 201 {
        bail!("start run: {s} {v}");
    }
    let id = v["id"].as_str().context("run id")?.to_owned();
    let done = p.wait_terminal(&id, Duration::from_secs(60)).await?;
    Ok((id, done))
}

#[tokio::test]
async fn an_agent_remembers_across_threads_and_only_in_granted_namespaces() -> Result<()> {
    let config =
        format!("{SEMANTIC}\n[memory.namespaces.\"users\"]\nembedding-model = \"local-embed\"\n");
    let p = Platform::start(Options {
        config: Some(config),
        ..Options::default()
    })
    .await?;
    let grant = json!({"namespaces": ["users.{principal}"]});
    p.create_agent(json!({
        "id": "rememberer", "model": "scripted", "tools": ["memory.put"], "memory": grant,
        "model_config": {"script": [
            {"tool_calls": [{"name": "memory.put", "arguments": {"key": "color", "value": "my favorite color is teal"}}]},
            {"text": "Noted."}
        ]}
    }))
    .await?;
    p.create_agent(json!({
        "id": "recaller", "model": "scripted", "tools": ["memory.search"], "memory": grant,
        "model_config": {"script": [
            {"tool_calls": [{"name": "memory.search", "arguments": {"query": "what is my favorite color?", "limit": 1}}]},
            {"text": "You told me: {last_tool_output}"}
        ]}
    }))
    .await?;

    // Run 1 stores the fact in the creator's namespace.
    let (run1, done1) = run_on_thread(&p, "rememberer", "thread-1").await?;
    assert_eq!(done1["status"], "completed", "{done1}");
    let put = tool_events(&p, &run1).await?;
    assert_eq!(put.len(), 1);
    assert_eq!(put[0].event, "tool.completed", "{:?}", put[0].data);
    // The token's subject is `developer`: the namespace is users.developer, also over REST.
    assert_eq!(
        put[0].data["data"]["output"]["namespace"], "users.developer",
        "{:?}",
        put[0].data
    );
    let (s, item) = p.get("/v1/memory/users.developer/color").await?;
    assert_eq!(
        (s, item["value"].clone()),
        (200, json!("my favorite color is teal"))
    );

    // Run 2, another thread, finds it by meaning and answers with it.
    let (run2, done2) = run_on_thread(&p, "recaller", "thread-2").await?;
    assert_eq!(done2["status"], "completed", "{done2}");
    let found = tool_events(&p, &run2).await?;
    assert_eq!(found[0].event, "tool.completed", "{:?}", found[0].data);
    let results = &found[0].data["data"]["output"]["results"];
    assert_eq!(results[0]["key"], "color", "{results}");
    assert_eq!(results[0]["value"], "my favorite color is teal");
    let answer = done2["output"].as_str().context("output")?;
    assert!(answer.contains("my favorite color is teal"), "{answer}");

    // An agent granted another namespace, and one granted none, are refused by the tool.
    p.create_agent(json!({
        "id": "stranger", "model": "scripted", "tools": ["memory.search"],
        "memory": {"namespaces": ["scratch.{thread}"]},
        "model_config": {"script": [
            {"tool_calls": [{"name": "memory.search", "arguments": {"namespace": "users.developer", "query": "favorite color"}}]},
            {"text": "done"}
        ]}
    }))
    .await?;
    p.create_agent(json!({
        "id": "ungranted", "model": "scripted", "tools": ["memory.get"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "memory.get", "arguments": {"key": "color"}}]},
            {"text": "done"}
        ]}
    }))
    .await?;
    for agent in ["stranger", "ungranted"] {
        let (run, done) = run_on_thread(&p, agent, "thread-3").await?;
        assert_eq!(done["status"], "completed", "{done}");
        let events = tool_events(&p, &run).await?;
        assert_eq!(
            events[0].event, "tool.failed",
            "{agent}: {:?}",
            events[0].data
        );
        assert_eq!(
            events[0].data["data"]["error"]["code"], "namespace_not_granted",
            "{agent}: {:?}",
            events[0].data
        );
    }

    // Agent definitions with bad templates are refused at create and update.
    for bad in [
        json!(["users-{principal}"]),
        json!(["{user}"]),
        json!(["Users"]),
        json!("users"),
    ] {
        let (s, v) = p
            .post(
                "/v1/agents",
                &json!({"model": "scripted", "memory": {"namespaces": bad}}),
            )
            .await?;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (s, v) = p
        .send_as(
            &p.token,
            Method::PATCH,
            "/v1/agents/recaller",
            Some(&json!({"memory": {"namespaces": ["a..b"]}})),
        )
        .await?;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_memory_namespace")),
        "{v}"
    );
    Ok(())
}

#[tokio::test]
async fn the_openai_backend_passes_embeddings_through_to_the_upstream() -> Result<()> {
    let (addr, up, _server) = agentos_e2e::upstream::start_upstream().await;
    let config = format!(
        "[model.routes.up-embed]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"text-embedding-x\"\n\n[model.routes.up-broken]\nbackend = \"openai\"\nbase-url = \"http://{addr}/v1\"\nupstream-model = \"broken\"\nmax-retries = 0\n"
    );
    let p = Platform::start(Options {
        config: Some(config),
        ..Options::default()
    })
    .await?;
    let (s, v) = p
        .post(
            "/v1/embeddings",
            &json!({"model": "up-embed", "input": ["ab", "cde"], "dimensions": 3, "user": "u1"}),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"][0]["embedding"], json!([0.0, 2.0, 1.0]), "{v}");
    assert_eq!(v["data"][1]["embedding"], json!([1.0, 3.0, 1.0]), "{v}");
    assert_eq!(v["model"], "up-embed");
    assert_eq!(v["usage"]["total_tokens"], 4);
    let sent = up
        .embedding_requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "text-embedding-x");
    assert_eq!(sent[0]["input"], json!(["ab", "cde"]));
    assert_eq!(sent[0]["encoding_format"], "float");
    assert_eq!(
        (sent[0]["dimensions"].clone(), sent[0]["user"].clone()),
        (json!(3), json!("u1"))
    );

    // The upstream's failure is sanitized: a stable code, no traceback.
    let (s, v) = p
        .post(
            "/v1/embeddings",
            &json!({"model": "up-broken", "input": "x"}),
        )
        .await?;
    assert_eq!(s, 502, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("Traceback"), "{v}");
    Ok(())
}
