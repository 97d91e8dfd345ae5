//! The auth callout against a real nats-server: only an answer signed by the issuer the server
//! names lets a client in. A responder with another key (a spoofed callout) gets every client
//! refused, whatever it grants; the real one places the client in its tenant's account, fenced
//! to that tenant's subjects.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_bus::callout::{Grant, Issuer, Permissions};
use agentos_bus::id::Tenant;
use agentos_bus::server::{NatsServer, locate};
use agentos_bus::{Bus, ConnectOptions};

fn config(issuer: &Issuer) -> String {
    format!(
        r#"accounts {{
  AUTH {{ users: [ {{ user: "auth", password: "pw" }} ] }}
  acme {{ }}
}}
authorization {{
  auth_callout {{
    issuer: "{}"
    account: AUTH
    auth_users: [ "auth" ]
    allowed_accounts: [ AUTH ]
  }}
}}
"#,
        issuer.public_key()
    )
}

/// Runs a callout answering every request with a grant for tenant acme, signed by `signer`,
/// until the returned sender is dropped.
async fn responder(url: &str, signer: Issuer) -> tokio::sync::oneshot::Sender<()> {
    let bus = Bus::connect(&ConnectOptions {
        user: Some("auth".into()),
        password: Some("pw".into()),
        ..ConnectOptions::new(url)
    })
    .await
    .expect("callout user connects");
    let requests = bus.subscribe_auth_callout().await.expect("subscribe");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let acme: Tenant = "acme".parse().expect("tenant");
        let grant = move |req: agentos_bus::callout::AuthRequest| {
            let acme = acme.clone();
            async move {
                if req.token.as_deref() != Some("let-me-in") {
                    return Err("invalid_token".to_owned());
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock")
                    .as_secs();
                Ok(Grant {
                    permissions: Permissions::tenant(&acme),
                    tenant: acme,
                    name: "alice".into(),
                    expires_at: now + 60,
                })
            }
        };
        let _ = requests
            .serve(&signer, grant, async {
                let _ = stopped.await;
            })
            .await;
        drop(bus);
    });
    stop
}

fn client(url: &str, token: &str) -> ConnectOptions {
    ConnectOptions {
        token: Some(token.into()),
        request_timeout: Some(Duration::from_secs(3)),
        ..ConnectOptions::new(url)
    }
}

#[tokio::test]
async fn only_the_configured_issuer_lets_clients_in() {
    let dir = tempfile::tempdir().expect("temp");
    let (issuer, _) = Issuer::generate().expect("issuer");
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, config(&issuer)).expect("config");
    let binary = locate(&[]).expect("nats-server");
    let server = NatsServer::spawn(
        &binary,
        dir.path(),
        None,
        &["-c".into(), conf.display().to_string()],
    )
    .await
    .expect("nats-server");

    // A spoofed callout: it answers, grants, but signs with a key the server does not trust.
    let (rogue, _) = Issuer::generate().expect("rogue");
    let stop = responder(server.url(), rogue).await;
    let Err(refused) = Bus::connect(&client(server.url(), "let-me-in")).await else {
        panic!("a spoofed grant let the client in");
    };
    assert!(
        refused.to_string().contains("authorization violation"),
        "{refused}"
    );
    drop(stop);

    // The real one: the same token gets in, fenced to tenant acme.
    let _stop = responder(server.url(), issuer).await;
    let bus = agentos_bus_connect_eventually(server.url()).await;
    assert!(bus.is_connected());
    assert!(
        Bus::connect(&client(server.url(), "wrong")).await.is_err(),
        "a refused token"
    );
}

/// A valid response replayed for another connection: signed by the right issuer, but for the
/// user nkey the server minted for the first connection, so the second is refused.
#[tokio::test]
async fn a_response_replayed_for_another_connection_is_refused() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("temp");
    let (issuer, _) = Issuer::generate().expect("issuer");
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, config(&issuer)).expect("config");
    let binary = locate(&[]).expect("nats-server");
    let server = NatsServer::spawn(
        &binary,
        dir.path(),
        None,
        &["-c".into(), conf.display().to_string()],
    )
    .await
    .expect("nats-server");
    let raw = async_nats::ConnectOptions::with_user_and_password("auth".into(), "pw".into())
        .connect(server.url())
        .await
        .expect("callout user");
    let mut requests = raw
        .subscribe("$SYS.REQ.USER.AUTH")
        .await
        .expect("subscribe");
    raw.flush().await.expect("flush");
    let responder = tokio::spawn(async move {
        let acme: Tenant = "acme".parse().expect("tenant");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let grant = Grant {
            permissions: Permissions::tenant(&acme),
            tenant: acme,
            name: "alice".into(),
            expires_at: now + 60,
        };
        let mut first = None;
        while let Some(msg) = requests.next().await {
            let req = agentos_bus::callout::AuthRequest::decode(&msg.payload).expect("request");
            // Always the first connection's answer.
            let original = first.get_or_insert(req);
            let answer = original.respond(&issuer, Ok(grant.clone())).expect("sign");
            if let Some(reply) = msg.reply {
                raw.publish(reply, answer.into()).await.expect("reply");
            }
        }
    });
    let first = Bus::connect(&client(server.url(), "let-me-in")).await;
    assert!(first.is_ok(), "the first connection: {:?}", first.err());
    let Err(replayed) = Bus::connect(&client(server.url(), "let-me-in")).await else {
        panic!("a replayed response let a second connection in");
    };
    assert!(
        replayed.to_string().contains("authorization violation"),
        "{replayed}"
    );
    responder.abort();
}

/// The first responder's subscription may linger for a moment after it stopped: retry briefly.
async fn agentos_bus_connect_eventually(url: &str) -> Bus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Bus::connect(&client(url, "let-me-in")).await {
            Ok(bus) => return bus,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the real issuer's grant: {e}"),
        }
    }
}
