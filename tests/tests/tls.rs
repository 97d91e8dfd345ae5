//! TLS and mTLS on both front doors, with real parts: `agentos up --tls` (nats-server with a
//! `tls {}` block and `verify: true`, the edge on HTTPS requiring client certificates), the
//! official openai SDK and nats-py with the dev CA and client certificates, refusals of clients
//! without a certificate, the edge's certificate reload (a new connection sees the new serial, an
//! open one keeps working), and `Bus` connections to a TLS nats-server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agentos_bus::server::{NatsServer, ServerTls};
use agentos_bus::{Bus, ConnectOptions};
use agentos_e2e::{Proc, agentos_bin, eventually, free_port};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn agentos(args: &[&str]) -> Output {
    let out = Command::new(agentos_bin().expect("binary"))
        .args(args)
        .env_remove("AGENTOS_NATS_URL")
        .env_remove("AGENTOS_CONFIG")
        .output()
        .expect("run agentos");
    assert!(
        out.status.success(),
        "agentos {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn up_tls_serves_the_openai_sdk_and_nats_py_over_mtls_and_refuses_clients_without_certificates()
 {
    let dir = tempfile::tempdir().expect("temp");
    let home = dir.path().join("home");
    let listen = format!("127.0.0.1:{}", free_port().expect("port"));
    let out = agentos(&[
        "up",
        "--tls",
        "--detach",
        "--home",
        &path(&home),
        "--nats-port",
        &free_port().expect("port").to_string(),
        "--listen",
        &listen,
    ]);
    let _down = agentos_e2e::Down(home.clone());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let edge = format!("https://{listen}");
    for shown in [
        format!("edge:   {edge}"),
        "completed: \"The answer is 42.\"".into(),
        "curl --cacert".into(),
        "DefaultHttpxClient(verify=ctx)".into(),
    ] {
        assert!(stdout.contains(&shown), "no {shown:?} in:\n{stdout}");
    }
    let certs = home.join("certs");
    for key in ["ca-key.pem", "server-key.pem", "client-agentos-key.pem"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(certs.join(key))
                .expect("key")
                .permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // nats-server was given the tls block with verify.
    let conf = std::fs::read_to_string(home.join("nats").join("server-tls.conf")).expect("conf");
    assert!(
        conf.contains("verify: true") && conf.contains("ca_file"),
        "{conf}"
    );

    // The CLI reaches both doors through the state's TLS files.
    let status = agentos(&["status", "--home", &path(&home)]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains(&format!("{edge} ready")), "{status}");

    let runs = agentos(&["run", "list", "--home", &path(&home)]);
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("completed"),
        "the smoke run, listed over HTTPS: {}",
        String::from_utf8_lossy(&runs.stdout)
    );
    // `agentos env` hands workers started by hand the platform's TLS files too.
    let env = String::from_utf8(agentos(&["env", "--home", &path(&home)]).stdout).expect("utf8");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_owned)
    };
    let by_hand = ConnectOptions {
        user: var("AGENTOS_NATS_USER"),
        password: var("AGENTOS_NATS_PASSWORD"),
        tls_ca: var("AGENTOS_NATS_TLS_CA").map(PathBuf::from),
        tls_cert: var("AGENTOS_NATS_TLS_CERT").map(PathBuf::from),
        tls_key: var("AGENTOS_NATS_TLS_KEY").map(PathBuf::from),
        require_tls: true,
        ..ConnectOptions::new(var("AGENTOS_NATS_URL").expect("url"))
    };
    let bus = Bus::connect(&by_hand)
        .await
        .expect("a worker by hand connects");
    bus.jetstream_ok().await.expect("JetStream");
    let no_cert = ConnectOptions {
        tls_cert: None,
        tls_key: None,
        ..by_hand
    };
    assert!(
        Bus::connect(&no_cert).await.is_err(),
        "no client certificate"
    );

    // Tenant dev's NATS credentials carry its own client certificate.
    let creds: Value = serde_json::from_slice(
        &agentos(&[
            "tenant",
            "credentials",
            "dev",
            "--json",
            "--home",
            &path(&home),
        ])
        .stdout,
    )
    .expect("credentials");
    assert_eq!(
        creds["tls"]["cert"],
        json!(path(&certs.join("client-dev.pem")))
    );

    let token = std::fs::read_to_string(home.join("token")).expect("token");
    let settings = json!({
        "base_url": format!("{edge}/v1"),
        "token": token.trim(),
        "ca": path(&certs.join("ca.pem")),
        "mapped": [path(&certs.join("client-dev.pem")), path(&certs.join("client-dev-key.pem"))],
        "unmapped": [path(&certs.join("client-agentos.pem")), path(&certs.join("client-agentos-key.pem"))],
        "nats": creds,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tls_clients.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(settings.to_string())
        .output()
        .await
        .expect("python3 (install tests/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_str(stdout.trim()).expect("summary");
    let http = &s["http"];
    assert_eq!(http["chat_by_certificate"], "hello over mTLS", "{s}");
    assert_eq!(http["chat_by_token_streamed"], "hello over mTLS", "{s}");
    assert_eq!(
        http["run"]["status"], "completed",
        "a run by the certificate's principal: {s}"
    );
    assert_eq!(
        http["unmapped_without_token"],
        json!([401, "missing_token"])
    );
    assert_ne!(http["no_certificate"], "answered", "{s}");
    assert_eq!(http["untrusted_server"], "CERTIFICATE_VERIFY_FAILED", "{s}");
    let nats = &s["nats"];
    assert_eq!(
        nats["record"],
        json!({"status": "completed", "output": "The answer is 42."}),
        "nats-py read the run the certificate's principal made: {s}"
    );
    assert_ne!(nats["no_certificate"], "connected", "{s}");
    assert_ne!(nats["plain_text"], "connected", "{s}");

    // The run was made by the certificate's principal, in tenant dev.
    let run = http["run"]["id"].as_str().expect("run id");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).expect("ca"))
        .expect("ca pem");
    let mut identity = std::fs::read(certs.join("client-dev.pem")).expect("cert");
    identity.extend(std::fs::read(certs.join("client-dev-key.pem")).expect("key"));
    let client = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .build()
        .expect("client");
    let record: Value = client
        .get(format!("{edge}/v1/runs/{run}"))
        .send()
        .await
        .expect("get run")
        .json()
        .await
        .expect("json");
    assert_eq!(record["status"], "completed", "{record}");
    // Rust's TLS client without a certificate is refused too.
    let bare = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    assert!(bare.get(format!("{edge}/healthz")).send().await.is_err());
}

/// A TLS client of the edge trusting `ca`, presenting `identity` ([cert, key]) if given.
fn connector(ca: &Path, identity: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Conn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(c: &tokio_rustls::TlsConnector, port: u16) -> std::io::Result<Conn> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("name");
    c.connect(name, tcp).await
}

/// The serial number of the server certificate a connection was given.
fn peer_serial(conn: &Conn) -> String {
    let der = &conn.get_ref().1.peer_certificates().expect("peer")[0];
    serial_of(der)
}

fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    cert.raw_serial_as_string()
}

fn file_serial(pem: &Path) -> String {
    let der = CertificateDer::from_pem_file(pem).expect("pem");
    serial_of(&der)
}

/// One HTTP/1.1 request on an open connection; the status line.
async fn get(conn: &mut Conn, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn the_edge_reloads_a_rotated_certificate_for_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().expect("temp");
    let certs = dir.path().join("certs");
    agentos(&[
        "certs",
        "dev",
        "--dir",
        &path(&certs),
        "--client",
        "acme-ci,stranger",
    ]);
    let nats = NatsServer::ephemeral().await.expect("nats");
    let port = free_port().expect("port");
    let log = dir.path().join("edge.log");
    let child = Command::new(agentos_bin().expect("binary"))
        .args(["edge", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", &path(&certs.join("server.pem"))])
        .args(["--tls-key", &path(&certs.join("server-key.pem"))])
        .args(["--tls-client-ca", &path(&certs.join("ca.pem"))])
        .args(["--tls-client-auth", "optional"])
        .args(["--tls-principal", "acme-ci=acme:ci:member"])
        .env("AGENTOS_NATS_URL", nats.url())
        .env("AGENTOS_JWT_SECRET", agentos_e2e::SECRET)
        .env_remove("AGENTOS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("edge");
    let _edge = Proc::new("edge", child);

    let anonymous = connector(&certs.join("ca.pem"), None);
    let mut open = eventually("the edge on HTTPS", Duration::from_secs(30), || async {
        connect(&anonymous, port).await.ok()
    })
    .await
    .expect("edge");
    let first = peer_serial(&open);
    assert_eq!(first, file_serial(&certs.join("server.pem")));
    assert_eq!(get(&mut open, "/healthz").await, "HTTP/1.1 200 OK");

    // `optional`: no certificate still connects (and needs a token); a mapped certificate is a
    // principal without a token; a certificate of the CA that maps to nothing is not.
    let mapped = connector(
        &certs.join("ca.pem"),
        Some((
            &certs.join("client-acme-ci.pem"),
            &certs.join("client-acme-ci-key.pem"),
        )),
    );
    let mut conn = connect(&mapped, port).await.expect("mapped client");
    assert_eq!(get(&mut conn, "/v1/agents").await, "HTTP/1.1 200 OK");
    let stranger = connector(
        &certs.join("ca.pem"),
        Some((
            &certs.join("client-stranger.pem"),
            &certs.join("client-stranger-key.pem"),
        )),
    );
    let mut conn = connect(&stranger, port).await.expect("unmapped client");
    assert_eq!(
        get(&mut conn, "/v1/agents").await,
        "HTTP/1.1 401 Unauthorized"
    );
    let mut conn = connect(&anonymous, port).await.expect("anonymous client");
    assert_eq!(
        get(&mut conn, "/v1/agents").await,
        "HTTP/1.1 401 Unauthorized"
    );

    // Rotate: new key, new serial, same CA.
    agentos(&["certs", "dev", "--dir", &path(&certs), "--force"]);
    let rotated = file_serial(&certs.join("server.pem"));
    assert_ne!(rotated, first);
    let seen = eventually(
        "a new connection with the new certificate",
        Duration::from_secs(10),
        || async {
            let conn = connect(&anonymous, port).await.ok()?;
            let serial = peer_serial(&conn);
            (serial != first).then_some(serial)
        },
    )
    .await
    .expect("reloaded");
    assert_eq!(seen, rotated);
    // The connection opened before the rotation still serves requests.
    assert_eq!(get(&mut open, "/healthz").await, "HTTP/1.1 200 OK");
    assert_eq!(peer_serial(&open), first);

    // A broken file (a key that is not the certificate's) is not taken up; the edge keeps serving.
    std::fs::copy(
        certs.join("client-stranger-key.pem"),
        certs.join("server-key.pem"),
    )
    .expect("swap in a wrong key");
    eventually(
        "the refused reload logged",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("new TLS files do not load").then_some(())
        },
    )
    .await
    .expect("logged");
    let conn = connect(&anonymous, port).await.expect("still serving");
    assert_eq!(peer_serial(&conn), rotated);
}

#[tokio::test]
async fn bus_connections_to_a_verifying_nats_server_need_the_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().expect("temp");
    let certs = dir.path().join("certs");
    agentos(&["certs", "dev", "--dir", &path(&certs)]);
    let nats = NatsServer::ephemeral_tls(&ServerTls {
        cert: certs.join("server.pem"),
        key: certs.join("server-key.pem"),
        ca: Some(certs.join("ca.pem")),
        verify: true,
    })
    .await
    .expect("nats with tls");
    let with = |ca: bool, cert: bool| ConnectOptions {
        tls_ca: ca.then(|| certs.join("ca.pem")),
        tls_cert: cert.then(|| certs.join("client-agentos.pem")),
        tls_key: cert.then(|| certs.join("client-agentos-key.pem")),
        require_tls: ca || cert,
        request_timeout: Some(Duration::from_secs(2)),
        ..ConnectOptions::new(nats.url())
    };
    let bus = Bus::connect(&with(true, true))
        .await
        .expect("mTLS connects");
    bus.jetstream_ok().await.expect("JetStream over TLS");
    assert!(
        Bus::connect(&with(true, false)).await.is_err(),
        "no client certificate"
    );
    assert!(
        Bus::connect(&with(false, true)).await.is_err(),
        "server not trusted"
    );
    assert!(
        Bus::connect(&with(false, false)).await.is_err(),
        "plain text"
    );
}

#[test]
fn plain_text_nats_off_loopback_warns_and_a_tls_edge_may_listen_off_loopback_in_production() {
    let dir = tempfile::tempdir().expect("temp");
    let certs = dir.path().join("certs");
    agentos(&["certs", "dev", "--dir", &path(&certs)]);
    // Production: the TLS edge off loopback is not refused (other dev settings still are).
    let out = Command::new(agentos_bin().expect("binary"))
        .args(["--profile", "production", "edge", "--listen", "0.0.0.0:0"])
        .args(["--tls-cert", &path(&certs.join("server.pem"))])
        .args(["--tls-key", &path(&certs.join("server-key.pem"))])
        .env("AGENTOS_JWT_SECRET", "a-development-secret-of-32-bytes!")
        .env_remove("AGENTOS_CONFIG")
        .output()
        .expect("edge");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HS256"), "{err}");
    assert!(!err.contains("plain-text listener"), "{err}");
    // Development: plain-text NATS to another host is one warning line at start.
    let out = Command::new(agentos_bin().expect("binary"))
        .args(["worker", "tool", "--nats-url", "nats://192.0.2.1:4222"])
        .env_remove("AGENTOS_CONFIG")
        .output()
        .expect("worker");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<_> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("plain-text NATS to nats://192.0.2.1:4222"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
}

#[tokio::test]
async fn a_client_that_stalls_the_tls_handshake_or_sends_nothing_is_cut_off_after_the_header_read_timeout()
 {
    let dir = tempfile::tempdir().expect("temp");
    let certs = dir.path().join("certs");
    agentos(&["certs", "dev", "--dir", &path(&certs)]);
    let nats = NatsServer::ephemeral().await.expect("nats");
    let port = free_port().expect("port");
    let child = Command::new(agentos_bin().expect("binary"))
        .args(["edge", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", &path(&certs.join("server.pem"))])
        .args(["--tls-key", &path(&certs.join("server-key.pem"))])
        .args(["--header-read-timeout", "1s"])
        .env("AGENTOS_NATS_URL", nats.url())
        .env("AGENTOS_JWT_SECRET", agentos_e2e::SECRET)
        .env_remove("AGENTOS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("edge");
    let _edge = Proc::new("edge", child);
    let client = connector(&certs.join("ca.pem"), None);
    eventually("the edge on HTTPS", Duration::from_secs(30), || async {
        connect(&client, port).await.ok()
    })
    .await
    .expect("edge");
    // TCP open, not one byte of the handshake: closed after about a second.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut [0u8; 64]))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The handshake done, then no request: closed by the same timeout.
    let mut idle = connect(&client, port).await.expect("handshake");
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut [0u8; 64]))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Meanwhile a real client is served.
    let mut conn = connect(&client, port).await.expect("client");
    assert_eq!(get(&mut conn, "/healthz").await, "HTTP/1.1 200 OK");
}
