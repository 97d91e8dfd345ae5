//! Bearer tokens, really signed: HS256 with a secret, RS256 and ES256 against a JWKS served by a
//! test HTTP server (and through OIDC discovery); every failure has its own code; key rotation
//! is picked up without a restart.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_edge::{Auth, Jwks, JwksSource, JwtRules};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "alice", "tenant": "acme", "roles": ["member"], "exp": now() + 600,
        "iss": "https://issuer.test", "aud": "agentos"});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, key_file: &str, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture(key_file)),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture(key_file)),
        _ => EncodingKey::from_secret(key_file.as_bytes()),
    }
    .expect("key");
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

/// A JWKS (and OIDC discovery) server whose key set can be swapped.
async fn jwks_server(initial: &str) -> (String, Arc<RwLock<String>>) {
    let body = Arc::new(RwLock::new(
        String::from_utf8(fixture(initial)).expect("utf8"),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (keys, jwks_uri) = (body.clone(), format!("{base}/jwks.json"));
    let app = axum::Router::new()
        .route(
            "/jwks.json",
            axum::routing::get(move || {
                let keys = keys.clone();
                async move { keys.read().expect("lock").clone() }
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let uri = jwks_uri.clone();
                async move { axum::Json(json!({"issuer": "https://issuer.test", "jwks_uri": uri})) }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, body)
}

fn rules() -> JwtRules {
    JwtRules {
        issuer: Some("https://issuer.test".into()),
        audience: Some("agentos".into()),
        ..JwtRules::default()
    }
}

#[tokio::test]
async fn tokens_valid_for_longer_than_the_maximum_lifetime_are_refused() {
    let (base, _) = jwks_server("jwks-a.json").await;
    let jwks = Jwks::load(
        JwksSource::Url(format!("{base}/jwks.json")),
        JwtRules {
            max_lifetime_secs: Some(3600),
            ..rules()
        },
    )
    .await
    .expect("jwks");
    let auth = Auth::Jwks(Arc::new(jwks));
    let rs = |c: &Value| sign(Algorithm::RS256, Some("rsa-a"), "rsa-a.pem", c);
    let t = now();
    assert_eq!(
        code(
            &auth,
            Some(&rs(&claims(json!({"iat": t, "exp": t + 3600}))))
        )
        .await,
        "ok:acme"
    );
    // A year-long token is refused even in its last minutes.
    assert_eq!(
        code(
            &auth,
            Some(&rs(&claims(
                json!({"iat": t - 365 * 86_400, "exp": t + 60})
            )))
        )
        .await,
        "token_lifetime_too_long"
    );
    assert_eq!(
        code(&auth, Some(&rs(&claims(json!({}))))).await,
        "missing_iat"
    );
}

async fn code(auth: &Auth, token: Option<&str>) -> String {
    match auth.authenticate(token).await {
        Ok(ctx) => format!("ok:{}", ctx.tenant),
        Err(e) => {
            assert_eq!(e.status, 401, "{e:?}");
            e.code.to_owned()
        }
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_each_failure_with_its_own_code() {
    let (base, _) = jwks_server("jwks-a.json").await;
    let jwks = Jwks::load(JwksSource::Url(format!("{base}/jwks.json")), rules())
        .await
        .expect("jwks");
    let auth = Auth::Jwks(Arc::new(jwks));
    let rs = |c: &Value| sign(Algorithm::RS256, Some("rsa-a"), "rsa-a.pem", c);

    assert_eq!(code(&auth, Some(&rs(&claims(json!({}))))).await, "ok:acme");
    assert_eq!(
        code(
            &auth,
            Some(&sign(
                Algorithm::ES256,
                Some("ec-a"),
                "ec-a.pk8.pem",
                &claims(json!({}))
            ))
        )
        .await,
        "ok:acme"
    );
    let ctx = auth
        .authenticate(Some(&rs(&claims(json!({"roles": ["admin", "member"]})))))
        .await
        .expect("ok");
    assert_eq!((ctx.subject.as_str(), ctx.roles.len()), ("alice", 2));

    assert_eq!(code(&auth, None).await, "missing_token");
    assert_eq!(
        code(&auth, Some(&rs(&claims(json!({"exp": now() - 3600}))))).await,
        "token_expired"
    );
    assert_eq!(
        code(&auth, Some(&rs(&claims(json!({"nbf": now() + 3600}))))).await,
        "token_not_yet_valid"
    );
    assert_eq!(
        code(&auth, Some(&rs(&claims(json!({"aud": "someone-else"}))))).await,
        "invalid_audience"
    );
    assert_eq!(
        code(
            &auth,
            Some(&rs(&claims(json!({"iss": "https://evil.test"}))))
        )
        .await,
        "invalid_issuer"
    );
    // Signed by key b but claiming key a.
    let forged = sign(
        Algorithm::RS256,
        Some("rsa-a"),
        "rsa-b.pem",
        &claims(json!({})),
    );
    assert_eq!(code(&auth, Some(&forged)).await, "invalid_signature");
    // alg: none — an unsigned token.
    let body = rs(&claims(json!({})));
    let payload = body.split('.').nth(1).expect("payload");
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(code(&auth, Some(&none)).await, "invalid_algorithm");
    // A shared-secret token where public keys are required.
    assert_eq!(
        code(
            &auth,
            Some(&sign(
                Algorithm::HS256,
                Some("rsa-a"),
                "secret",
                &claims(json!({}))
            ))
        )
        .await,
        "invalid_algorithm"
    );
    assert_eq!(
        code(
            &auth,
            Some(&sign(
                Algorithm::RS256,
                Some("nope"),
                "rsa-a.pem",
                &claims(json!({}))
            ))
        )
        .await,
        "unknown_key"
    );
    assert_eq!(code(&auth, Some("garbage")).await, "invalid_token");
    assert_eq!(
        code(&auth, Some(&rs(&claims(json!({"tenant": "Not.A.Tenant"}))))).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_without_a_restart_through_oidc_discovery() {
    let (base, keys) = jwks_server("jwks-a.json").await;
    let jwks = Jwks::load(JwksSource::Oidc(base), rules())
        .await
        .expect("discovery");
    let auth = Auth::Jwks(Arc::new(jwks));
    let token_b = sign(
        Algorithm::RS256,
        Some("rsa-b"),
        "rsa-b.pem",
        &claims(json!({})),
    );
    assert_eq!(code(&auth, Some(&token_b)).await, "unknown_key");
    *keys.write().expect("lock") = String::from_utf8(fixture("jwks-ab.json")).expect("utf8");
    // Unknown kids refetch the key set at most once a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = code(&auth, Some(&token_b)).await;
        if got == "ok:acme" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation not picked up: {got}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn hs256_development_tokens() {
    let auth = Auth::hs256(b"dev-secret").expect("hs256");
    let ok = sign(Algorithm::HS256, None, "dev-secret", &claims(json!({})));
    assert_eq!(code(&auth, Some(&ok)).await, "ok:acme");
    assert_eq!(
        code(
            &auth,
            Some(&sign(Algorithm::HS256, None, "other", &claims(json!({}))))
        )
        .await,
        "invalid_signature"
    );
    assert_eq!(
        code(
            &auth,
            Some(&sign(
                Algorithm::HS256,
                None,
                "dev-secret",
                &claims(json!({"exp": now() - 3600}))
            ))
        )
        .await,
        "token_expired"
    );
    assert_eq!(code(&auth, None).await, "missing_token");
}
