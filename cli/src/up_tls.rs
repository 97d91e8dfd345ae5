//! `agentos up --tls`: the local platform with TLS and mTLS on both front doors. Development
//! certificates under `<home>/certs` (made when missing, kept otherwise); nats-server gets a
//! `tls {}` block with `verify: true`, so every NATS client (components, CLI, tenants) presents a
//! certificate of the dev CA besides its user and password; the edge serves HTTPS and requires
//! a client certificate, and maps the `dev` client certificate to principal `dev` of tenant
//! `dev` (so it needs no token).

use std::path::{Path, PathBuf};

use agentos_bus::ConnectOptions;
use agentos_bus::server::ServerTls;
use anyhow::{Context, Result};

use crate::certs::{COMPONENTS, ClientTls, DevCerts};

/// The client certificate `up --tls` maps to a principal at the edge.
pub const DEV_CLIENT: &str = "dev";
/// ... as tenant `dev`, subject `dev`, role `member`.
const DEV_PRINCIPAL: &str = "dev=dev:dev:member";

/// The certificates of a platform started with `--tls`.
pub struct UpTls {
    pub certs: DevCerts,
    /// The platform's own processes (and the local operator's CLI).
    pub components: ClientTls,
    /// A tenant `dev` client, mapped to a principal at the edge.
    pub dev: ClientTls,
}

impl UpTls {
    /// The home's development certificates, made when missing.
    pub fn prepare(home: &Path) -> Result<Self> {
        let hosts = ["localhost", "127.0.0.1", "::1"].map(String::from);
        let clients = [COMPONENTS, DEV_CLIENT].map(String::from);
        let certs = crate::certs::ensure(&home.join("certs"), &hosts, &clients, false)
            .context("making development certificates (hint: delete <home>/certs to start over)")?;
        Ok(Self {
            components: certs.client(COMPONENTS),
            dev: certs.client(DEV_CLIENT),
            certs,
        })
    }

    /// The edge's TLS flags.
    pub fn edge_args(&self) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--tls-cert".into(),
            path(self.certs.server_cert()),
            "--tls-key".into(),
            path(self.certs.server_key()),
            "--tls-client-ca".into(),
            path(self.certs.ca()),
            "--tls-client-auth".into(),
            "require".into(),
            "--tls-principal".into(),
            DEV_PRINCIPAL.into(),
        ]
    }

    /// How clients connect, printed once the platform is up.
    pub fn print_howto(&self, edge_url: &str, nats_url: &str) {
        let (ca, cert, key) = (
            self.dev.ca.display(),
            self.dev.cert.display(),
            self.dev.key.display(),
        );
        println!("  tls:    CA {ca}; every client presents a certificate of this CA");
        println!(
            "          client certificate {cert} (key {key}) = tenant dev, principal dev, no token needed"
        );
        println!("  curl:   curl --cacert {ca} --cert {cert} --key {key} {edge_url}/v1/models");
        println!(
            "  openai: ctx = ssl.create_default_context(cafile=\"{ca}\"); ctx.load_cert_chain(\"{cert}\", \"{key}\")"
        );
        println!(
            "          OpenAI(base_url=\"{edge_url}/v1\", api_key=\"unused\", http_client=openai.DefaultHttpxClient(verify=ctx)), and per call extra_headers={{\"Authorization\": openai.Omit()}} (the certificate is the credential; or api_key=<token>)"
        );
        println!(
            "  nats:   ctx = ssl.create_default_context(cafile=\"{ca}\"); ctx.load_cert_chain(<client cert>, <key>); await nats.connect(\"{nats_url}\", tls=ctx, user=…, password=…)   # agentos tenant credentials <tenant> prints all of it"
        );
    }
}

/// The configuration file nats-server is started with: the accounts file as it is, or, with
/// TLS, `nats/server-tls.conf`, which includes it and adds the `tls {}` block.
pub fn nats_config(home: &Path, tls: Option<&UpTls>) -> Result<PathBuf> {
    let accounts = crate::accounts::config_path(home);
    let Some(tls) = tls else {
        return Ok(accounts);
    };
    let block = ServerTls {
        cert: tls.certs.server_cert(),
        key: tls.certs.server_key(),
        ca: Some(tls.certs.ca()),
        verify: true,
    }
    .config_block();
    let path = home.join("nats").join("server-tls.conf");
    let text = format!(
        "# Written by `agentos up --tls`; edits are overwritten.\ninclude \"accounts.conf\"\n{block}"
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `opts` with the platform's client certificate, when TLS is on.
pub fn nats(tls: Option<&UpTls>, opts: ConnectOptions) -> ConnectOptions {
    match tls {
        Some(t) => t.components.nats(opts),
        None => opts,
    }
}
