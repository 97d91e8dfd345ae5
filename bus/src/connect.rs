//! Connecting to NATS: URL plus explicit credentials (async-nats ignores `user:pass@` in the URL,
//! so credentials are separate fields), TLS files, and the JetStream context.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// `nats://host:port`, comma-separated for several servers.
    pub url: String,
    /// Connection name shown by `nats server report connections`.
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (user JWT + nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// An nkey seed (`SU…`).
    pub nkey_seed: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    /// Timeout for JetStream API calls and publish acks; default 5 s.
    pub request_timeout: Option<Duration>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectOptions")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("token", &redacted(&self.token))
            .field("credentials_file", &self.credentials_file)
            .field("nkey_seed", &redacted(&self.nkey_seed))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(Duration::from_secs(5))
    }

    pub(crate) async fn connect(&self) -> Result<async_nats::Client> {
        let connect_err = |source: crate::error::Source| Error::Connect {
            url: self.url.clone(),
            source,
        };
        let mut opts = async_nats::ConnectOptions::new()
            .request_timeout(Some(self.timeout()))
            .connection_timeout(self.timeout())
            .max_reconnects(None);
        if let Some(name) = &self.name {
            opts = opts.name(name);
        }
        if let (Some(user), Some(pass)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), pass.clone());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let Some(path) = &self.credentials_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                connect_err(format!("credentials file {}: {e}", path.display()).into())
            })?;
        }
        if let Some(seed) = &self.nkey_seed {
            opts = opts.nkey(seed.clone());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if self.require_tls {
            opts = opts.require_tls(true);
        }
        let client = opts
            .connect(self.servers().map_err(connect_err)?)
            .await
            .map_err(|e| connect_err(e.into()))?;
        Ok(client)
    }

    /// The servers of [`Self::url`]: async-nats parses one URL per address, so a
    /// comma-separated list is split here (it then reconnects to any of them).
    fn servers(&self) -> std::result::Result<Vec<async_nats::ServerAddr>, crate::error::Source> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| format!("{u}: {e}").into())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_names_every_server() {
        let opts = ConnectOptions::new("nats://127.0.0.1:4222, nats://127.0.0.1:4223,");
        let servers = opts.servers().expect("servers");
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].port(), 4223);
        assert!(ConnectOptions::new("nats://127.0.0.1:x").servers().is_err());
    }
}
