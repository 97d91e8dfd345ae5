//! Tenants on NATS: `agentos up` runs nats-server with one account for the platform and one per
//! tenant. With the credentials `agentos tenant credentials` prints, a tenant's own nats-py
//! client submits a run and reads its events and record — and is refused, at once and clearly,
//! for another tenant. Revoking the account closes the door; the platform keeps working.

use std::path::Path;
use std::process::{Command, Output};

use agentos_bus::{Bus, ConnectOptions};
use agentos_e2e::{Down, agentos_bin};
use serde_json::{Value, json};

fn free_port() -> u16 {
    agentos_e2e::free_port().expect("free port")
}

fn agentos(home: &Path, args: &[&str]) -> Output {
    agentos_e2e::agentos_at(home, args).expect("agentos")
}

async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

fn credentials(home: &Path, tenant: &str) -> Value {
    let out = agentos(home, &["tenant", "credentials", tenant, "--json"]);
    serde_json::from_slice(&out.stdout).expect("credentials json")
}

#[tokio::test]
async fn a_tenants_nats_credentials_reach_its_own_runs_only() {
    let dir = tempfile::tempdir().expect("temp");
    let home = dir.path().join("home");
    let edge = format!("127.0.0.1:{}", free_port());
    agentos(
        &home,
        &[
            "up",
            "--detach",
            "--nats-port",
            &free_port().to_string(),
            "--listen",
            &edge,
        ],
    );
    let _down = Down(home.clone());

    // Tenant t1 defines an agent through the edge.
    let secret = std::fs::read_to_string(home.join("jwt-secret")).expect("secret");
    let mint = Command::new(agentos_bin().expect("binary"))
        .args(["token", "mint", "--tenant", "t1", "--secret", secret.trim()])
        .output()
        .expect("mint");
    let token = String::from_utf8(mint.stdout).expect("utf8");
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{edge}/v1/agents"))
        .bearer_auth(token.trim())
        .json(&json!({"id": "helper", "model": "scripted"}))
        .send()
        .await
        .expect("create agent");
    assert_eq!(r.status(), 201);

    let t1 = credentials(&home, "t1");
    let t2 = credentials(&home, "t2");
    assert_eq!(t1["user"], "t1");
    assert_eq!(
        credentials(&home, "t1")["password"],
        t1["password"],
        "asking again returns the same credentials"
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tenant_nats.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(t1.to_string())
        .arg(t2.to_string())
        .arg("helper")
        .output()
        .expect("python3 (see tests/requirements.txt for nats-py)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("summary json");
    assert_eq!(summary["submit_stream"], "AGENTOS_RUNS", "{summary}");
    assert_eq!(
        (summary["status"].as_str(), summary["output"].as_str()),
        (Some("completed"), Some("hello from nats-py")),
        "{summary}"
    );
    assert_eq!(summary["event_subjects_mine"], true, "{summary}");
    assert_eq!(summary["last_event"], "run.completed", "{summary}");
    assert!(
        summary["live_events"]
            .as_array()
            .is_some_and(|e| e.last() == Some(&json!("run.completed"))),
        "{summary}"
    );
    let refusals = &summary["refusals"];
    assert_eq!(refusals["submit"], "NoStreamResponseError", "{summary}");
    assert_eq!(refusals["read_record"], "NoRespondersError", "{summary}");
    assert!(
        refusals["subscribe_events"]
            .as_str()
            .is_some_and(|e| e.contains("permissions violation")),
        "{summary}"
    );

    // The run t1 submitted on the bus is audited as a direct submission.
    let admin = Command::new(agentos_bin().expect("binary"))
        .args(["token", "mint", "--tenant", "ops", "--roles", "admin"])
        .args(["--secret", secret.trim()])
        .output()
        .expect("mint");
    let admin = String::from_utf8(admin.stdout).expect("utf8");
    let audit = get_json(
        &http,
        &format!("http://{edge}/v1/admin/audit?tenant=t1&action=run.create"),
        admin.trim(),
    )
    .await;
    assert_eq!(audit["data"][0]["record"]["actor"], "nats:t1", "{audit}");

    // `agentos env`: the platform's own user, for workers started by hand.
    let env = String::from_utf8(agentos(&home, &["env"]).stdout).expect("utf8");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_owned)
    };
    let platform = Bus::connect(&ConnectOptions {
        user: var("AGENTOS_NATS_USER"),
        password: var("AGENTOS_NATS_PASSWORD"),
        ..ConnectOptions::new(var("AGENTOS_NATS_URL").expect("url"))
    })
    .await
    .expect("platform user connects");
    platform.jetstream_ok().await.expect("with JetStream");

    // Revoked: the account is gone, the platform still serves t2 and the edge.
    agentos(&home, &["tenant", "revoke", "t1"]);
    let connect = |c: &Value| ConnectOptions {
        user: c["user"].as_str().map(str::to_owned),
        password: c["password"].as_str().map(str::to_owned),
        ..ConnectOptions::new(c["url"].as_str().expect("url"))
    };
    assert!(Bus::connect(&connect(&t1)).await.is_err(), "t1 is revoked");
    let audit = get_json(
        &http,
        &format!("http://{edge}/v1/admin/audit?tenant=t1"),
        admin.trim(),
    )
    .await;
    let actions: Vec<(&str, &str)> = audit["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["record"]["action"].as_str()?,
                r["record"]["actor"].as_str()?,
            ))
        })
        .filter(|(action, _)| action.starts_with("tenant."))
        .collect();
    assert_eq!(
        actions.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec!["tenant.nats_credentials", "tenant.nats_revoke"],
        "{audit}"
    );
    assert!(
        actions.iter().all(|(_, actor)| actor.starts_with("cli:")),
        "{audit}"
    );
    let bus = Bus::connect(&connect(&t2))
        .await
        .expect("t2 still connects");
    assert!(
        bus.can_read_run_records(&"t2".parse().expect("tenant"))
            .await
            .expect("probe")
    );
    let run: Value = http
        .post(format!("http://{edge}/v1/runs"))
        .bearer_auth(token.trim())
        .json(&json!({"agent_id": "helper", "input": "still served"}))
        .send()
        .await
        .expect("run through the edge")
        .json()
        .await
        .expect("json");
    let id = run["id"].as_str().expect("run id");
    let done: Value = http
        .get(format!("http://{edge}/v1/runs/{id}/wait?timeout_s=30"))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("wait")
        .json()
        .await
        .expect("json");
    assert_eq!(done["status"], "completed", "{done}");
}
