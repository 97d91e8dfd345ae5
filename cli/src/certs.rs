//! `agentos certs dev`: a development CA and the certificates a local platform with TLS needs —
//! a server certificate for the edge and NATS (localhost, 127.0.0.1, ::1 by default) and client
//! certificates by name (`agentos` for the platform's own processes, one per tenant or principal
//! asked for; the name is the certificate's subject CN). rcgen, ECDSA P-256, keys mode 0600.
//!
//! Files in the directory: `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
//! `client-<name>.pem`, `client-<name>-key.pem`. The CA is made once and kept; a certificate that
//! exists is kept unless `--force` (a new key and a new serial: a rotation the edge picks up).
//! Every file is written to a temp file and renamed, so a reader never sees half a file.

use std::path::{Path, PathBuf};

use agentos_bus::ConnectOptions;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};

/// The client certificate of the platform's own processes (and of the local operator's CLI).
pub const COMPONENTS: &str = "agentos";
const CA: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a development CA, a server certificate and client certificates.
    Dev(DevArgs),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where to write them (default: <home>/certs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Names the server certificate is for, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    pub hosts: Vec<String>,
    /// Client certificates to write, by name (their subject CN), comma-separated.
    #[arg(long = "client", value_delimiter = ',', default_value = COMPONENTS)]
    pub clients: Vec<String>,
    /// Write the server and client certificates anew (new keys and serials); the CA is kept.
    #[arg(long)]
    pub force: bool,
}

pub fn command(cmd: CertsCommand) -> Result<()> {
    match cmd {
        CertsCommand::Dev(a) => {
            let dir = a
                .dir
                .unwrap_or_else(|| crate::config::default_home().join("certs"));
            let certs = ensure(&dir, &a.hosts, &a.clients, a.force)?;
            println!("CA:      {}", certs.ca().display());
            println!(
                "server:  {} (key {}) for {}",
                certs.server_cert().display(),
                certs.server_key().display(),
                a.hosts.join(", ")
            );
            for name in &a.clients {
                let c = certs.client(name);
                println!(
                    "client:  {} (key {}), CN={name}",
                    c.cert.display(),
                    c.key.display()
                );
            }
            Ok(())
        }
    }
}

/// A directory of development certificates.
#[derive(Clone, Debug)]
pub struct DevCerts {
    pub dir: PathBuf,
}

impl DevCerts {
    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA)
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join(SERVER)
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join(SERVER_KEY)
    }

    /// The files of client `name` (they may not exist yet).
    pub fn client(&self, name: &str) -> ClientTls {
        ClientTls {
            ca: self.ca(),
            cert: self.dir.join(format!("client-{name}.pem")),
            key: self.dir.join(format!("client-{name}-key.pem")),
        }
    }

    /// Client `name`'s files, its certificate issued by the CA when missing.
    pub fn ensure_client(&self, name: &str) -> Result<ClientTls> {
        let files = self.client(name);
        if !files.cert.is_file() || !files.key.is_file() {
            let ca = load_ca(&self.dir)?;
            issue(&self.dir, &ca, &Leaf::Client(name))?;
        }
        Ok(files)
    }
}

/// What a client needs to connect with TLS and a client certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientTls {
    /// `opts` over TLS, verifying the server against the CA and presenting the certificate.
    pub fn nats(&self, opts: ConnectOptions) -> ConnectOptions {
        ConnectOptions {
            tls_ca: Some(self.ca.clone()),
            tls_cert: Some(self.cert.clone()),
            tls_key: Some(self.key.clone()),
            require_tls: true,
            ..opts
        }
    }

    /// The `[nats]` TLS settings as environment for a component.
    pub fn nats_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AGENTOS_NATS_TLS_CA", self.ca.display().to_string()),
            ("AGENTOS_NATS_TLS_CERT", self.cert.display().to_string()),
            ("AGENTOS_NATS_TLS_KEY", self.key.display().to_string()),
        ]
    }

    /// An HTTPS client trusting the CA and presenting the certificate.
    pub fn http(&self) -> Result<reqwest::Client> {
        let ca = std::fs::read(&self.ca).with_context(|| format!("{}", self.ca.display()))?;
        let mut identity =
            std::fs::read(&self.cert).with_context(|| format!("{}", self.cert.display()))?;
        identity.extend(crate::secret::read(&self.key)?.as_bytes());
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .identity(reqwest::Identity::from_pem(&identity)?)
            .build()?)
    }
}

/// The certificates in `dir`: the CA (made if missing), the server certificate for `hosts` and
/// the `clients`' certificates, each written when missing or when `force`.
pub fn ensure(dir: &Path, hosts: &[String], clients: &[String], force: bool) -> Result<DevCerts> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let certs = DevCerts {
        dir: dir.to_owned(),
    };
    let ca = load_ca(dir)?;
    if force || !certs.server_cert().is_file() || !certs.server_key().is_file() {
        issue(dir, &ca, &Leaf::Server(hosts))?;
    }
    for name in clients {
        let files = certs.client(name);
        if force || !files.cert.is_file() || !files.key.is_file() {
            issue(dir, &ca, &Leaf::Client(name))?;
        }
    }
    Ok(certs)
}

enum Leaf<'a> {
    Server(&'a [String]),
    Client(&'a str),
}

/// The CA of `dir`, made on first use.
fn load_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let (cert_path, key_path) = (dir.join(CA), dir.join(CA_KEY));
    if cert_path.is_file() && key_path.is_file() {
        let key = KeyPair::from_pem(&crate::secret::read(&key_path)?)
            .with_context(|| format!("{}", key_path.display()))?;
        let pem = std::fs::read_to_string(&cert_path)?;
        return Issuer::from_ca_cert_pem(&pem, key)
            .with_context(|| format!("{}", cert_path.display()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "AgentOS development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    crate::secret::write(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    Ok(Issuer::new(params, key))
}

/// Writes a new key and certificate for `leaf`, signed by `ca`.
fn issue(dir: &Path, ca: &Issuer<'_, KeyPair>, leaf: &Leaf<'_>) -> Result<()> {
    let key = KeyPair::generate()?;
    let (mut params, cert_path, key_path) = match leaf {
        Leaf::Server(hosts) => {
            let mut p = CertificateParams::new(hosts.to_vec())
                .with_context(|| format!("server names {hosts:?}"))?;
            p.distinguished_name = rcgen::DistinguishedName::new();
            let cn = hosts.first().map_or("localhost", String::as_str);
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            (p, dir.join(SERVER), dir.join(SERVER_KEY))
        }
        Leaf::Client(name) => {
            check_name(name)?;
            let mut p = CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, *name);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            (
                p,
                dir.join(format!("client-{name}.pem")),
                dir.join(format!("client-{name}-key.pem")),
            )
        }
    };
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    validity(&mut params, 365);
    let cert = params.signed_by(&key, ca)?;
    // The key first: a reader that sees the new certificate finds its key already there.
    crate::secret::write(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())
}

/// A client name is a file name part and a CN: `[a-z0-9][a-z0-9._-]{0,62}`.
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !ok {
        bail!("client name {name:?}: use lowercase letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// 16 random bytes, positive.
fn serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Valid from a minute ago (clock skew) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(days);
}

/// A public file (a certificate), replaced atomically.
fn write_public(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("pem-tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn dev_certs_chain_to_the_ca_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("temp");
        let hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certs = ensure(
            dir.path(),
            &hosts,
            &["agentos".into(), "acme".into()],
            false,
        )
        .expect("certs");
        for key in [
            dir.path().join(CA_KEY),
            certs.server_key(),
            certs.client("acme").key,
        ] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        let before = std::fs::read(certs.server_cert()).expect("server");
        let ca_before = std::fs::read(certs.ca()).expect("ca");
        ensure(dir.path(), &hosts, &[], false).expect("again");
        assert_eq!(std::fs::read(certs.server_cert()).expect("server"), before);
        ensure(dir.path(), &hosts, &[], true).expect("forced");
        assert_ne!(std::fs::read(certs.server_cert()).expect("server"), before);
        assert_eq!(std::fs::read(certs.ca()).expect("ca"), ca_before, "CA kept");
        certs.ensure_client("globex").expect("on demand");
        assert!(certs.client("globex").cert.is_file());
        assert!(ensure(dir.path(), &hosts, &["../x".into()], false).is_err());
    }
}
