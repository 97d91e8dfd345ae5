//! The edge crate's own errors: callers match variants, never message text.

mod common;

use agentos_edge::{Auth, EdgeOptions, Error, Jwks, JwksSource, JwtRules};
use common::Edge;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_taken_listen_address_is_a_bind_error_not_a_bus_error() {
    let edge = Edge::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let opts = EdgeOptions {
        listen: taken.local_addr().expect("addr"),
        auth: Auth::hs256(common::SECRET).expect("auth"),
        body_limit: agentos_edge::DEFAULT_BODY_LIMIT,
        admission: agentos_bus::Admission::Implicit,
        memory: Default::default(),
        limits: Default::default(),
        header_read_timeout: agentos_edge::DEFAULT_HEADER_READ_TIMEOUT,
        metrics: None,
        prices: Default::default(),
        hold_lease: std::time::Duration::from_secs(600),
        tls: None,
        federation: None,
    };
    let err = agentos_edge::serve(edge.bus.clone(), opts, CancellationToken::new())
        .await
        .expect_err("the port is taken");
    assert!(matches!(err, Error::Bind { .. }), "{err:?}");
}

#[tokio::test]
async fn jwks_failures_say_what_failed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.json");
    let err = Jwks::load(JwksSource::File(missing), JwtRules::default())
        .await
        .expect_err("no file");
    assert!(matches!(err, Error::JwksFile { .. }), "{err:?}");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").expect("write");
    let err = Jwks::load(JwksSource::File(garbage), JwtRules::default())
        .await
        .expect_err("not a JWKS");
    assert!(matches!(err, Error::JwksParse { .. }), "{err:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/jwks", closed.local_addr().expect("addr"));
    drop(closed);
    let err = Jwks::load(JwksSource::Url(url), JwtRules::default())
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, Error::JwksFetch { .. }), "{err:?}");
}
