//! HTTPS at the edge (rustls, the `ring` provider the rest of the workspace uses): the server
//! certificate and key from files, reloaded when they change, and optional client certificates
//! (mTLS) checked against a CA, `require`d (a client without one is refused at the handshake) or
//! `optional`. A verified client certificate may be mapped to a principal ([`CertPrincipal`]),
//! which then authenticates requests that carry no bearer token.
//!
//! Reload: [`Tls::watch`] reads the files every [`RELOAD_POLL`] and, when their bytes changed,
//! builds a new `ServerConfig`; the next handshake uses it, connections already open keep theirs.
//! A set of files that does not load (a half-written swap, a key that does not match its
//! certificate) is logged and the previous configuration kept, so a rotation never takes the
//! listener down.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentos_bus::id::Tenant;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// How often the certificate files are checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate, no connection (refused at the handshake).
    #[default]
    Require,
    /// A certificate is checked when sent; clients without one still connect (and use tokens).
    Optional,
}

impl FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "require" => Ok(Self::Require),
            "optional" => Ok(Self::Optional),
            other => Err(format!(
                "unknown client-certificate mode {other:?} (require or optional)"
            )),
        }
    }
}

/// A client-certificate identity mapped to a principal. `identity` is matched against the
/// certificate's URI, DNS and e-mail subject alternative names, then its subject common name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPrincipal {
    pub identity: String,
    pub tenant: Tenant,
    /// The principal (what a token's `sub` would be).
    pub subject: String,
    /// Roles, as a token's `roles` claim (default `member`).
    #[serde(default = "member")]
    pub roles: Vec<String>,
}

fn member() -> Vec<String> {
    vec![crate::auth::ROLE_MEMBER.to_owned()]
}

impl FromStr for CertPrincipal {
    type Err = String;

    /// `IDENTITY=TENANT:SUBJECT[:ROLE,ROLE…]`, e.g. `ci.acme.example=acme:ci:member`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not IDENTITY=TENANT:SUBJECT[:ROLE,ROLE]");
        let (identity, rest) = s.rsplit_once('=').ok_or_else(bad)?;
        let mut parts = rest.splitn(3, ':');
        let (tenant, subject) = match (parts.next(), parts.next()) {
            (Some(t), Some(s)) if !s.is_empty() => (t, s),
            _ => return Err(bad()),
        };
        let roles = match parts.next() {
            None => member(),
            Some(r) => r
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        if identity.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            identity: identity.to_owned(),
            tenant: tenant.parse().map_err(|e| format!("{s:?}: tenant: {e}"))?,
            subject: subject.to_owned(),
            roles,
        })
    }
}

/// The edge's TLS settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsOptions {
    /// PEM: the server certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the CAs client certificates must chain to; mTLS is off without it.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub principals: Vec<CertPrincipal>,
}

/// The principal a connection's client certificate maps to, put in every request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct CertIdentity(pub Arc<CertPrincipal>);

/// The current acceptor, swapped on reload, and the principal table.
#[derive(Clone)]
pub(crate) struct Tls {
    opts: Arc<TlsOptions>,
    current: Arc<RwLock<TlsAcceptor>>,
    /// The bytes the first configuration was built from.
    loaded: Arc<Snapshot>,
}

/// The bytes the configuration was built from, to notice a change.
type Snapshot = Vec<Vec<u8>>;

impl Tls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(opts: TlsOptions) -> Result<Self, Error> {
        let snapshot = snapshot(&opts)?;
        let config = build(&opts, &snapshot)?;
        Ok(Self {
            opts: Arc::new(opts),
            current: Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(config)))),
            loaded: Arc::new(snapshot),
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads when the files change, until `shutdown`.
    pub async fn watch(self, shutdown: CancellationToken) {
        let mut last = Some(self.loaded.as_ref().clone());
        let mut tick = tokio::time::interval(RELOAD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = match snapshot(&self.opts) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files unreadable; keeping the current certificate");
                    continue;
                }
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            match build(&self.opts, &now) {
                Ok(config) => {
                    let acceptor = TlsAcceptor::from(Arc::new(config));
                    match self.current.write() {
                        Ok(mut a) => *a = acceptor,
                        Err(poisoned) => *poisoned.into_inner() = acceptor,
                    }
                    tracing::info!(cert = %self.opts.cert.display(), "TLS certificate reloaded");
                    last = Some(now);
                }
                // Not remembered: a half-done swap is tried again at the next poll.
                Err(e) => {
                    tracing::warn!(error = %e, "new TLS files do not load; keeping the current certificate");
                }
            }
        }
    }

    /// The principal mapped to the connection's verified client certificate, if any.
    pub fn principal(&self, peer: Option<&[CertificateDer<'_>]>) -> Option<CertIdentity> {
        let leaf = peer?.first()?;
        let names = cert_names(leaf);
        names.iter().find_map(|name| {
            self.opts
                .principals
                .iter()
                .find(|p| &p.identity == name)
                .map(|p| CertIdentity(Arc::new(p.clone())))
        })
    }
}

fn snapshot(opts: &TlsOptions) -> Result<Snapshot, Error> {
    let files = [Some(&opts.cert), Some(&opts.key), opts.client_ca.as_ref()];
    files
        .into_iter()
        .flatten()
        .map(|p| std::fs::read(p).map_err(|e| tls_error(format!("{}: {e}", p.display()))))
        .collect()
}

fn tls_error(reason: String) -> Error {
    Error::Tls { reason }
}

/// A server configuration from the snapshot's bytes (cert, key, then the client CA if any).
fn build(opts: &TlsOptions, files: &Snapshot) -> Result<ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert_pem, key_pem) = match files.as_slice() {
        [c, k, ..] => (c, k),
        _ => return Err(tls_error("certificate and key are required".into())),
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{}: {e}", opts.cert.display())))?;
    if chain.is_empty() {
        return Err(tls_error(format!(
            "{}: no certificate in it",
            opts.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| tls_error(format!("{}: {e}", opts.key.display())))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?;
    let builder = match (&opts.client_ca, files.get(2)) {
        (Some(path), Some(ca_pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert.map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match opts.client_auth {
                ClientAuth::Require => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls_error(format!("{}: {e}", opts.cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The names a certificate can be mapped by, in order: URI, DNS and e-mail subject alternative
/// names, then the subject common name(s).
fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    let mut others = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) | GeneralName::RFC822Name(d) => {
                    others.push((*d).to_owned())
                }
                _ => {}
            }
        }
    }
    let cns = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned));
    uris.into_iter().chain(others).chain(cns).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_from_flags() {
        let p: CertPrincipal = "spiffe://acme/ci=acme:ci:member,tenant-admin"
            .parse()
            .expect("parses");
        assert_eq!(p.identity, "spiffe://acme/ci");
        assert_eq!(p.tenant.as_str(), "acme");
        assert_eq!(p.subject, "ci");
        assert_eq!(p.roles, ["member", "tenant-admin"]);
        let p: CertPrincipal = "dev=dev:dev".parse().expect("parses");
        assert_eq!(p.roles, ["member"]);
        for bad in ["dev", "=dev:dev", "dev=dev", "dev=Bad:x", "dev=dev:"] {
            assert!(bad.parse::<CertPrincipal>().is_err(), "{bad}");
        }
        assert_eq!("optional".parse(), Ok(ClientAuth::Optional));
        assert!("maybe".parse::<ClientAuth>().is_err());
    }
}
