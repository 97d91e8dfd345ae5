//! The security profile. `development` (the default) allows what local work needs; `production`
//! refuses, at start and all at once, the settings that only make sense there: no
//! authentication, HS256 shared secrets, tokens without a required audience, a plain-text edge
//! listener off loopback (the edge without `tls-cert`), plain-text NATS off loopback (no
//! `tls-ca` / `tls-cert`, no `tls://`). (World-readable secret files are refused
//! in every profile.) In `development`, plain-text NATS off loopback is a warning.

use std::net::IpAddr;

use anyhow::{Result, bail};

use crate::config;

/// Which rules apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Development,
    Production,
}

/// The edge's settings under `profile`.
pub fn check_edge(profile: Profile, edge: &config::Edge, nats: &config::Nats) -> Result<()> {
    let mut refused = nats_findings(nats);
    if edge.dev_no_auth_tenant().is_some() {
        refused.push("--dev-no-auth-tenant: no authentication".into());
    }
    let jwks =
        edge.jwks_url().is_some() || edge.jwks_file().is_some() || edge.oidc_issuer().is_some();
    if !jwks && (edge.jwt_secret().is_some() || edge.jwt_secret_file().is_some()) {
        refused.push(
            "an HS256 shared secret: use a JWKS (--jwks-url, --jwks-file or --oidc-issuer)".into(),
        );
    }
    if edge.jwt_audience().is_none() {
        refused.push("no required token audience: set --jwt-audience".into());
    }
    let listen = edge.listen();
    if !listen.ip().is_loopback() && edge.tls_cert().is_none() {
        refused.push(format!(
            "a plain-text listener on {listen}: give --tls-cert and --tls-key, or listen on loopback behind a TLS proxy"
        ));
    }
    verdict(profile, refused)
}

/// A worker's NATS connection under `profile`.
pub fn check_worker(profile: Profile, nats: &config::Nats) -> Result<()> {
    verdict(profile, nats_findings(nats))
}

/// Plain-text NATS URLs to hosts other than loopback.
fn nats_findings(nats: &config::Nats) -> Vec<String> {
    if nats.tls_on() {
        return Vec::new();
    }
    nats.url()
        .split(',')
        .map(str::trim)
        .filter(|url| !url.starts_with("tls://") && !loopback(url))
        .map(|url| format!("plain-text NATS to {url}: use tls:// or --nats-tls-ca"))
        .collect()
}

/// Whether a `nats://host:port` URL names this machine.
fn loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host_port.split(':').next().unwrap_or(host_port),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn verdict(profile: Profile, findings: Vec<String>) -> Result<()> {
    match profile {
        Profile::Production if !findings.is_empty() => bail!(
            "the production profile refuses:\n  - {}",
            findings.join("\n  - ")
        ),
        Profile::Production => Ok(()),
        Profile::Development => {
            for f in findings.iter().filter(|f| f.starts_with("plain-text NATS")) {
                tracing::warn!("{f}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_told_apart() {
        for url in [
            "nats://127.0.0.1:4222",
            "nats://localhost:4222",
            "nats://u:p@[::1]:4222",
            "127.0.0.1",
        ] {
            assert!(loopback(url), "{url}");
        }
        for url in [
            "nats://10.0.0.5:4222",
            "nats://nats.example.com",
            "nats://u:p@[2001:db8::1]:4222",
        ] {
            assert!(!loopback(url), "{url}");
        }
    }
}
