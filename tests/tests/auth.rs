//! Authentication and tenant isolation through the real edge: RS256 tokens checked against a
//! JWKS file, and one tenant never seeing another's agents or runs (404, never 403).

use std::time::{SystemTime, UNIX_EPOCH};

use agentos_e2e::{Options, Platform, mint};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../edge/tests/fixtures");

#[tokio::test]
async fn the_edge_accepts_rs256_tokens_from_a_jwks_file() {
    let p = Platform::start(Options {
        env: vec![
            (
                "AGENTOS_JWKS_FILE".into(),
                format!("{FIXTURES}/jwks-a.json"),
            ),
            ("AGENTOS_JWT_AUDIENCE".into(), "agentos".into()),
            // Every process under the production profile: this configuration passes it.
            ("AGENTOS_PROFILE".into(), "production".into()),
        ],
        ..Options::default()
    })
    .await
    .expect("platform");
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa-a.pem")).expect("key"))
            .expect("pem");
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "bob", "tenant": "acme", "aud": "agentos", "exp": exp}),
        &key,
    )
    .expect("sign");
    let r = p
        .http
        .get(p.url("/v1/agents"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // The platform's HS256 development token is not accepted once a JWKS is configured.
    let r = p
        .http
        .get(p.url("/v1/agents"))
        .bearer_auth(&p.token)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_algorithm");
}

#[tokio::test]
async fn one_tenant_cannot_see_or_touch_another_tenants_agents_and_runs() {
    let p = Platform::start(Options::default()).await.expect("platform");
    p.create_agent(json!({"id": "private", "model": "scripted"}))
        .await
        .expect("agent");
    let run = p.start_run("private", "secret input").await.expect("run");
    p.wait_terminal(&run, std::time::Duration::from_secs(60))
        .await
        .expect("terminal");

    let other = mint("globex").expect("token");
    let get = |path: String| p.http.get(p.url(&path)).bearer_auth(&other).send();
    for path in [
        format!("/v1/runs/{run}"),
        format!("/v1/runs/{run}/events"),
        format!("/v1/runs/{run}/wait?timeout_s=1"),
        "/v1/agents/private".into(),
    ] {
        let r = get(path.clone()).await.expect("send");
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = p
        .http
        .post(p.url(&format!("/v1/runs/{run}/cancel")))
        .bearer_auth(&other)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    let r = p
        .http
        .post(p.url("/v1/runs"))
        .bearer_auth(&other)
        .json(&json!({"agent_id": "private", "input": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        404,
        "another tenant's agent does not exist for globex"
    );
    let runs: serde_json::Value = get("/v1/runs".into())
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(runs["data"].as_array().map(Vec::len), Some(0));
    let agents: serde_json::Value = get("/v1/agents".into())
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(agents["data"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn admins_manage_tenants_disabled_tenants_are_refused_and_everything_is_audited() {
    use reqwest::Method;
    let p = Platform::start(Options::default()).await.expect("platform");
    let admin = agentos_e2e::mint_with_roles("ops", "admin").expect("admin token");
    let member = mint("globex").expect("member token");
    let call = |token: &str, method: Method, path: &str, body: Option<serde_json::Value>| {
        let (token, path) = (token.to_owned(), path.to_owned());
        let p = &p;
        async move {
            p.send_as(&token, method, &path, body.as_ref())
                .await
                .expect("send")
        }
    };
    let status = |token: &str, method: Method, path: &str, body: Option<serde_json::Value>| {
        let fut = call(token, method, path, body);
        async move { fut.await.0 }
    };

    // Admin routes need the admin role.
    for path in ["/v1/admin/tenants", "/v1/admin/audit"] {
        assert_eq!(
            status(&p.token, Method::GET, path, None).await,
            403,
            "{path}"
        );
    }
    let globex = json!({"id": "globex"});
    assert_eq!(
        status(
            &p.token,
            Method::POST,
            "/v1/admin/tenants",
            Some(globex.clone())
        )
        .await,
        403
    );
    let created = json!({"id": "globex", "name": "Globex", "quotas": {"concurrent_runs": 5}});
    assert_eq!(
        status(&admin, Method::POST, "/v1/admin/tenants", Some(created)).await,
        201
    );
    assert_eq!(
        status(
            &admin,
            Method::POST,
            "/v1/admin/tenants",
            Some(globex.clone())
        )
        .await,
        409
    );
    assert_eq!(status(&member, Method::GET, "/v1/agents", None).await, 200);

    let disable = "/v1/admin/tenants/globex/disable";
    assert_eq!(
        status(&admin, Method::POST, disable, Some(json!({}))).await,
        200
    );
    let (code, body) = call(&member, Method::GET, "/v1/agents", None).await;
    assert_eq!(code, 403);
    assert_eq!(body["error"]["code"], "tenant_disabled");
    let enable = "/v1/admin/tenants/globex/enable";
    assert_eq!(
        status(&admin, Method::POST, enable, Some(json!({}))).await,
        200
    );
    assert_eq!(status(&member, Method::GET, "/v1/agents", None).await, 200);

    p.create_agent(json!({"id": "a", "model": "scripted"}))
        .await
        .expect("agent");
    let run = p.start_run("a", "hi").await.expect("run");

    let (_, log) = call(&admin, Method::GET, "/v1/admin/audit", None).await;
    let actions: Vec<&str> = log["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["record"]["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "tenant.create",
            "tenant.disable",
            "tenant.enable",
            "run.create"
        ],
        "{log}"
    );
    let runs_path = "/v1/admin/audit?tenant=acme&action=run.create";
    let (_, runs) = call(&admin, Method::GET, runs_path, None).await;
    assert_eq!(runs["data"][0]["record"]["target"], run.as_str());
    assert_eq!(runs["data"][0]["record"]["actor_tenant"], "acme");
    let cursor = log["next_cursor"].as_u64().expect("cursor");
    let after = format!("/v1/admin/audit?after={cursor}");
    let (_, rest) = call(&admin, Method::GET, &after, None).await;
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(0));

    // A tenant admin reads its own tenant's record and audit log, and nothing else.
    let globex_admin = agentos_e2e::mint_with_roles("globex", "tenant-admin").expect("token");
    for (token, path, want) in [
        (&globex_admin, "/v1/admin/tenants/globex", 200),
        (&globex_admin, "/v1/admin/tenants/acme", 404),
        (&globex_admin, "/v1/admin/tenants", 403),
        (&globex_admin, "/v1/admin/audit?tenant=acme", 403),
        (&member, "/v1/admin/tenants/globex", 403),
        (&member, "/v1/admin/audit", 403),
    ] {
        assert_eq!(status(token, Method::GET, path, None).await, want, "{path}");
    }
    // Every route that changes a tenant is the platform admin's alone, whatever the body.
    for token in [&member, &globex_admin] {
        for (method, path) in [
            (Method::POST, "/v1/admin/tenants"),
            (Method::PATCH, "/v1/admin/tenants/globex"),
            (Method::DELETE, "/v1/admin/tenants/globex"),
            (Method::POST, enable),
            (Method::POST, disable),
        ] {
            // Not a valid PATCH body: the role is checked before the body.
            let got = status(token, method.clone(), path, Some(globex.clone())).await;
            assert_eq!(got, 403, "{method} {path}");
        }
    }
    let (_, own) = call(&globex_admin, Method::GET, "/v1/admin/audit", None).await;
    let tenants: Vec<&str> = own["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["record"]["tenant"].as_str())
        .collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| *t == "globex"),
        "{own}"
    );
}
