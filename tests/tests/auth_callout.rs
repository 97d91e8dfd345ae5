//! One identity on both front doors: `agentos up --auth-callout` runs nats-server with an auth
//! callout answered by `agentos auth-callout`. A tenant's nats-py client logs in with the very
//! bearer token its HTTP client uses (`tests/python/callout_nats.py`): it submits a run on the
//! bus and reads its own tenant's events and record; it is refused for another tenant's subjects
//! (permissions violation); an expired token is refused at connect; a token revoked through the
//! edge's admin route is refused for a new connection within 2 s, and the connection that holds
//! it is closed; a disabled tenant's token stays out. The static per-tenant accounts keep working
//! beside it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use agentos_bus::{Bus, ConnectOptions};
use agentos_e2e::Down;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

fn free_port() -> u16 {
    agentos_e2e::free_port().expect("free port")
}

fn agentos(home: &Path, args: &[&str]) -> Output {
    agentos_e2e::agentos_at(home, args).expect("agentos")
}

/// An HS256 token of the home's secret, as any issuer would mint it: with a `jti`.
fn token(secret: &str, tenant: &str, roles: &[&str], exp_from_now: i64, jti: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": format!("{tenant}-user"), "tenant": tenant, "roles": roles,
                "iat": now, "exp": now + exp_from_now, "jti": jti}),
        &EncodingKey::from_secret(secret.as_bytes()).expect("key"),
    )
    .expect("token")
}

#[tokio::test]
async fn the_edges_bearer_token_logs_a_nats_client_into_its_own_tenant_only() {
    let dir = tempfile::tempdir().expect("temp");
    let home = dir.path().join("home");
    let edge = format!("127.0.0.1:{}", free_port());
    let nats_port = free_port().to_string();
    let up = agentos(
        &home,
        &[
            "up",
            "--detach",
            "--auth-callout",
            "--nats-port",
            &nats_port,
            "--listen",
            &edge,
        ],
    );
    let _down = Down(home.clone());
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("auth-callout"),
        "up runs the callout component"
    );
    // The tenants' accounts: the callout places each connection in its tenant's account.
    let t1 = agentos(&home, &["tenant", "credentials", "t1", "--json"]);
    let t1: Value = serde_json::from_slice(&t1.stdout).expect("credentials");
    agentos(&home, &["tenant", "credentials", "t2", "--json"]);

    let secret = std::fs::read_to_string(home.join("jwt-secret")).expect("secret");
    let secret = secret.trim();
    let jti = "t1-session-1";
    let user = token(secret, "t1", &["member"], 3600, jti);
    let admin = token(secret, "ops", &["admin"], 3600, "ops-1");
    let expired = token(secret, "t1", &["member"], -120, "t1-old");

    // The HTTP client defines the agent with the token…
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{edge}/v1/agents"))
        .bearer_auth(&user)
        .json(&json!({"id": "helper", "model": "scripted"}))
        .send()
        .await
        .expect("create agent");
    assert_eq!(r.status(), 201);

    // …and nats-py logs in with the same token.
    let params = json!({
        "url": format!("nats://127.0.0.1:{nats_port}"), "tenant": "t1", "other": "t2",
        "agent": "helper", "token": user, "expired_token": expired,
        "edge": format!("http://{edge}"), "admin_token": admin, "jti": jti,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/callout_nats.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(params.to_string())
        .output()
        .expect("python3 (see tests/requirements.txt for nats-py)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("summary json");
    eprintln!("{summary}");

    // Its own tenant: submitted, followed live, read back.
    assert_eq!(summary["submit_stream"], "AGENTOS_RUNS", "{summary}");
    assert_eq!(summary["record_status"], "completed", "{summary}");
    assert_eq!(summary["event_subjects_mine"], true, "{summary}");
    assert!(
        summary["live_events"]
            .as_array()
            .is_some_and(|e| e.last() == Some(&json!("run.completed"))),
        "{summary}"
    );
    // The same run through the edge: the token, now revoked, is refused at this door too; a
    // fresh token of the same tenant reads the run nats-py submitted.
    let run_url = format!(
        "http://{edge}/v1/runs/{}",
        summary["run_id"].as_str().expect("run id")
    );
    let get = |token: String| {
        let req = http.get(&run_url).bearer_auth(token);
        async move {
            let r = req.send().await.expect("get run");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = get(user.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    let (status, run) = get(token(secret, "t1", &["member"], 3600, "t1-session-2")).await;
    assert_eq!(
        (status, run["status"].as_str()),
        (200, Some("completed")),
        "{run}"
    );

    // Another tenant's subjects: refused by the server, both ways.
    for door in ["subscribe_events", "publish_submit"] {
        assert!(
            summary["refusals"][door]
                .as_str()
                .is_some_and(|e| e.contains("permissions violation")),
            "{door}: {summary}"
        );
    }
    // An expired token never connects.
    assert!(
        summary["expired"]
            .as_str()
            .is_some_and(|e| e.contains("Authorization Violation")),
        "{summary}"
    );
    // A revoked token: new connections refused within 2 s, the held one closed.
    assert_eq!(summary["revoke_status"], 200, "{summary}");
    assert!(
        summary["revoked"]
            .as_str()
            .is_some_and(|e| e.contains("Authorization Violation")),
        "{summary}"
    );
    let refused_after = summary["revoked_refused_after_s"].as_f64().expect("secs");
    assert!(refused_after < 2.0, "refused after {refused_after} s");
    let closed_after = summary["held_closed_after_s"].as_f64().expect("closed");
    assert!(
        closed_after < 2.0,
        "held connection closed after {closed_after} s"
    );

    // A disabled tenant's token stays out, as at the edge (tenant records are cached 2 s).
    let t2 = ConnectOptions {
        token: Some(token(secret, "t2", &["member"], 3600, "t2-1")),
        ..ConnectOptions::new(format!("nats://127.0.0.1:{nats_port}"))
    };
    let before = Bus::connect(&t2).await;
    assert!(before.is_ok(), "t2 connects: {:?}", before.err());
    let r = http
        .post(format!("http://{edge}/v1/admin/tenants"))
        .bearer_auth(&admin)
        .json(&json!({"id": "t2", "enabled": false}))
        .send()
        .await
        .expect("disable t2");
    assert_eq!(r.status(), 201);
    agentos_e2e::eventually("t2 refused", std::time::Duration::from_secs(10), || {
        let t2 = t2.clone();
        async move {
            match Bus::connect(&t2).await {
                Err(e) if e.to_string().contains("authorization violation") => Some(()),
                _ => None,
            }
        }
    })
    .await
    .expect("a disabled tenant is refused");

    // The static per-tenant account still works beside the callout.
    let static_t1 = Bus::connect(&ConnectOptions {
        user: t1["user"].as_str().map(str::to_owned),
        password: t1["password"].as_str().map(str::to_owned),
        ..ConnectOptions::new(t1["url"].as_str().expect("url"))
    })
    .await;
    assert!(static_t1.is_ok(), "static t1 user: {:?}", static_t1.err());
}
