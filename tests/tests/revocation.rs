//! Token revocation by `jti`, end to end with two edges: an admin revokes a token through one
//! edge and both refuse it (`401 token_revoked`) within moments; other tokens work on; bad input
//! and a non-admin caller are refused; a restarted edge still refuses it (the list is in KV).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentos_e2e::{Options, Platform, SECRET, eventually, mint, mint_with_roles};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

fn token_with_jti(jti: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "mallory", "tenant": "acme", "roles": ["member"], "exp": exp, "jti": jti}),
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("sign")
}

async fn status(p: &Platform, base: &str, token: &str) -> (u16, serde_json::Value) {
    let r = p
        .http
        .get(format!("{base}/v1/agents"))
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_by_every_edge_within_moments() {
    let mut p = Platform::start(Options::default()).await.expect("platform");
    let edge2 = p.spawn_edge().await.expect("another edge");
    let edges = [p.edge_url.clone(), edge2.clone()];
    let stolen = token_with_jti("stolen-1");
    let other = token_with_jti("fine-2");
    for base in &edges {
        assert_eq!(status(&p, base, &stolen).await.0, 200);
    }
    let admin = mint_with_roles("acme", "admin").expect("admin token");
    let member = mint("acme").expect("member token");
    // Refused: a non-admin, an empty jti, an until in the past.
    let revoke = |token: String, body: serde_json::Value| {
        let r = p
            .http
            .post(p.url("/v1/admin/tokens/revoke"))
            .bearer_auth(token)
            .json(&body);
        async move {
            let r = r.send().await.expect("send");
            let s = r.status().as_u16();
            (s, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    assert_eq!(revoke(member, json!({"jti": "stolen-1"})).await.0, 403);
    let (s, v) = revoke(admin.clone(), json!({"jti": ""})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_jti")),
        "{v}"
    );
    let (s, v) = revoke(admin.clone(), json!({"jti": "x", "until": "not a time"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_until")),
        "{v}"
    );
    // A time past revokes nothing still valid; one far away is capped at a year.
    let (s, v) = revoke(
        admin.clone(),
        json!({"jti": "x", "until": "2001-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (s, v["until"].as_str()),
        (200, Some("2001-01-01T00:00:00Z")),
        "{v}"
    );
    let (s, v) = revoke(
        admin.clone(),
        json!({"jti": "y", "until": "9999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["until"].as_str().is_some_and(|u| u < "2030"), "{v}");
    assert_eq!(
        status(&p, &edge2, &stolen).await.0,
        200,
        "nothing revoked yet"
    );

    let t = Instant::now();
    let (s, v) = revoke(admin, json!({"jti": "stolen-1"})).await;
    assert_eq!(s, 200, "{v}");
    for base in &edges {
        let refused = eventually("the token refused", Duration::from_secs(5), || async {
            let (s, v) = status(&p, base, &stolen).await;
            (s == 401).then_some(v)
        })
        .await
        .expect("refused");
        assert_eq!(refused["error"]["code"], "token_revoked", "{refused}");
    }
    eprintln!("revocation honoured by both edges after {:?}", t.elapsed());
    for base in &edges {
        assert_eq!(status(&p, base, &other).await.0, 200, "another token works");
    }
    // A new edge loads the list at start.
    let edge3 = p.spawn_edge().await.expect("another edge");
    assert_eq!(status(&p, &edge3, &stolen).await.0, 401);
    assert_eq!(status(&p, &edge3, &other).await.0, 200);
}
