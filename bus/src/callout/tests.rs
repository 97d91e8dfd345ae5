use super::*;

fn server_request(server: &KeyPair, token: &str, exp: u64) -> String {
    let claims = Claims {
        jti: "r".into(),
        iat: now(),
        iss: server.public_key(),
        sub: "AISSUER".into(),
        aud: REQUEST_AUDIENCE.into(),
        exp: Some(exp),
        name: None,
        nats: serde_json::json!({
            "server_id": {"id": server.public_key(), "name": "n1", "host": "127.0.0.1"},
            "user_nkey": "UMINTED",
            "client_info": {"id": 7, "host": "127.0.0.1", "name": "py"},
            "connect_opts": {"auth_token": token, "protocol": 1},
            "type": "authorization_request",
            "version": 2
        }),
    };
    jwt::encode(&claims, server).expect("encode")
}

#[test]
fn a_request_decodes_and_the_answer_fences_the_user_to_its_tenant() {
    let server = KeyPair::new_server();
    let (issuer, seed) = Issuer::generate().expect("issuer");
    assert_eq!(
        Issuer::from_seed(&seed).expect("seed").public_key(),
        issuer.public_key()
    );
    let req =
        AuthRequest::decode(server_request(&server, "tok", now() + 5).as_bytes()).expect("decode");
    assert_eq!(req.token.as_deref(), Some("tok"));
    assert!(
        !format!("{req:?}").contains("tok\""),
        "the token never prints"
    );
    assert_eq!(
        (req.client_id, req.server_id.as_str()),
        (7, &*server.public_key())
    );

    let tenant: Tenant = "acme".parse().expect("tenant");
    let grant = Grant {
        tenant: tenant.clone(),
        name: "alice".into(),
        permissions: Permissions::tenant(&tenant),
        expires_at: now() + 60,
    };
    let response: Claims<serde_json::Value> =
        jwt::decode(&req.respond(&issuer, Ok(grant.clone())).expect("respond")).expect("jwt");
    assert_eq!(response.iss, issuer.public_key());
    assert_eq!(response.sub, "UMINTED");
    assert_eq!(response.aud, server.public_key());
    assert_eq!(response.nats["type"], "authorization_response");
    let user: Claims<UserBody> =
        jwt::decode(response.nats["jwt"].as_str().expect("user jwt")).expect("user");
    assert_eq!(
        (user.iss.as_str(), user.sub.as_str(), user.aud.as_str()),
        (&*issuer.public_key(), "UMINTED", "acme")
    );
    assert_eq!(user.exp, Some(grant.expires_at));
    assert_eq!(
        user.nats.subscribe.allow,
        ["agentos.events.acme.>", "_INBOX.>"]
    );
    assert_eq!(
        user.nats.publish.allow,
        [
            "agentos.runs.acme.submit",
            "$JS.API.DIRECT.GET.KV_agentos-runs.$KV.agentos-runs.acme.>",
            "$JS.API.DIRECT.GET.AGENTOS_EVENTS.agentos.events.acme.>"
        ]
    );
}

#[test]
fn refusals_and_grants_already_expired_answer_with_an_error() {
    let server = KeyPair::new_server();
    let (issuer, _) = Issuer::generate().expect("issuer");
    let req =
        AuthRequest::decode(server_request(&server, "tok", now() + 5).as_bytes()).expect("decode");
    let refused: Claims<serde_json::Value> = jwt::decode(
        &req.respond(&issuer, Err("token_revoked".into()))
            .expect("respond"),
    )
    .expect("jwt");
    assert_eq!(refused.nats["error"], "token_revoked");
    assert!(refused.nats.get("jwt").is_none());

    let tenant: Tenant = "acme".parse().expect("tenant");
    let stale = Grant {
        tenant: tenant.clone(),
        name: "alice".into(),
        permissions: Permissions::tenant(&tenant),
        expires_at: now() - 1,
    };
    let refused: Claims<serde_json::Value> =
        jwt::decode(&req.respond(&issuer, Ok(stale)).expect("respond")).expect("jwt");
    assert!(refused.nats["error"].is_string());
}

#[test]
fn requests_not_from_a_server_or_expired_are_refused() {
    let server = KeyPair::new_server();
    assert!(AuthRequest::decode(server_request(&server, "t", now() - 10).as_bytes()).is_err());
    let account = KeyPair::new_account();
    assert!(AuthRequest::decode(server_request(&account, "t", now() + 5).as_bytes()).is_err());
    assert!(Issuer::from_seed(&KeyPair::new_user().seed().expect("seed")).is_err());
}
