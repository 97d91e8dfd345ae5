//! NATS accounts for the local platform: one account for AgentOS itself and one per tenant, so a
//! tenant's own NATS client can submit runs and read its events — and nothing of any other
//! tenant. `<home>/nats/auth.json` (mode 0600) holds the passwords; `<home>/nats/accounts.conf`
//! is rendered from it and given to nats-server.
//!
//! The platform account exports the run-submit service, the event stream and direct gets of run
//! records and events, each with `account_token_position` on the tenant token: nats-server
//! itself refuses an import of another tenant's subjects, so a tenant account sees exactly its
//! own. See docs/operations.md, "Tenants on NATS".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentos_bus::ConnectOptions;
use agentos_bus::id::Tenant;
use agentos_bus::subject::tenant_exports::{self, Export, Kind};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The platform's NATS account and user.
pub const PLATFORM_ACCOUNT: &str = "AGENTOS";
const PLATFORM_USER: &str = "agentos";

#[derive(Clone, Serialize, Deserialize)]
pub struct NatsAuth {
    pub platform_password: String,
    /// Tenant id → its NATS password (the user name is the tenant id).
    #[serde(default)]
    pub tenants: BTreeMap<Tenant, String>,
    /// The auth callout, when `up --auth-callout` runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callout: Option<crate::accounts_callout::CalloutAuth>,
}

pub(crate) fn password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn auth_path(home: &Path) -> PathBuf {
    home.join("nats").join("auth.json")
}

/// The accounts file nats-server reads (`-c`).
pub fn config_path(home: &Path) -> PathBuf {
    home.join("nats").join("accounts.conf")
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

impl NatsAuth {
    /// The home's credentials, created (with a fresh platform password) on first use.
    pub fn load_or_create(home: &Path) -> Result<Self> {
        let path = auth_path(home);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let auth = Self {
                    platform_password: password(),
                    tenants: BTreeMap::new(),
                    callout: None,
                };
                auth.save(home)?;
                Ok(auth)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Saves the credentials and renders the accounts file from them.
    pub fn save(&self, home: &Path) -> Result<()> {
        std::fs::create_dir_all(home.join("nats"))?;
        write_private(&auth_path(home), &serde_json::to_vec_pretty(self)?)?;
        write_private(&config_path(home), self.render().as_bytes())
    }

    /// The tenant's password, minted on first request. True when the tenant is new.
    pub fn tenant(&mut self, tenant: &Tenant) -> (String, bool) {
        let mut new = false;
        let pw = self
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                new = true;
                password()
            })
            .clone();
        (pw, new)
    }

    /// How the platform's own processes connect.
    pub fn platform(&self, url: &str, name: &str) -> ConnectOptions {
        ConnectOptions {
            user: Some(PLATFORM_USER.into()),
            password: Some(self.platform_password.clone()),
            ..ConnectOptions::new(url).with_name(name)
        }
    }

    /// Environment handed to every platform process.
    pub fn platform_env(&self) -> [(&'static str, String); 2] {
        [
            ("AGENTOS_NATS_USER", PLATFORM_USER.into()),
            ("AGENTOS_NATS_PASSWORD", self.platform_password.clone()),
        ]
    }

    /// The nats-server `accounts` configuration.
    pub fn render(&self) -> String {
        let line = |e: &Export, body: String| {
            let kind = match e.kind {
                Kind::Service => "service",
                Kind::Stream => "stream",
            };
            format!("      {{ {kind}: {body} }}\n")
        };
        let exports: String = tenant_exports::all("*", ">")
            .iter()
            .map(|e| {
                let body = format!(
                    "\"{}\", account_token_position: {}",
                    e.subject, e.token_position
                );
                line(e, body)
            })
            .collect();
        let sys = self
            .callout
            .as_ref()
            .map_or_else(|| "  SYS { }\n".to_owned(), |c| c.accounts());
        let mut out = format!(
            r#"# Written by `agentos up` / `agentos tenant` from auth.json; edits are overwritten.
system_account: SYS
accounts {{
{sys}  {PLATFORM_ACCOUNT} {{
    jetstream: enabled
    users: [ {{ user: "{PLATFORM_USER}", password: "{pw}" }} ]
    exports: [
{exports}    ]
  }}
"#,
            pw = self.platform_password
        );
        for (t, pw) in &self.tenants {
            let imports: String = tenant_exports::all(t.as_str(), ">")
                .iter()
                .map(|e| {
                    let body = format!(
                        "{{ account: {PLATFORM_ACCOUNT}, subject: \"{}\" }}",
                        e.subject
                    );
                    line(e, body)
                })
                .collect();
            let allow = tenant_exports::subscribe_allow(t.as_str())
                .map(|s| format!("\"{s}\""))
                .join(", ");
            out.push_str(&format!(
                r#"  {t} {{
    users: [ {{ user: "{t}", password: "{pw}",
      permissions: {{ subscribe: {{ allow: [ {allow} ] }} }} }} ]
    imports: [
{imports}    ]
  }}
"#
            ));
        }
        out.push_str("}\n");
        if let Some(c) = &self.callout {
            out.push_str(&c.authorization());
        }
        out
    }
}

/// What a tenant needs to connect, and what it may do there.
pub fn tenant_credentials(url: &str, tenant: &Tenant, password: &str) -> serde_json::Value {
    let subjects: serde_json::Map<String, serde_json::Value> =
        tenant_exports::all(tenant.as_str(), "<run_id>")
            .into_iter()
            .map(|e| {
                // The live-events subscription covers every run of the tenant.
                let subject = match e.kind {
                    Kind::Stream => tenant_exports::all(tenant.as_str(), ">")[1].subject.clone(),
                    Kind::Service => e.subject,
                };
                (e.name.to_owned(), subject.into())
            })
            .collect();
    serde_json::json!({
        "tenant": tenant,
        "url": url,
        "user": tenant,
        "password": password,
        "subjects": subjects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_gets_its_own_account_fenced_to_its_subjects() {
        let mut auth = NatsAuth {
            platform_password: "p".into(),
            tenants: BTreeMap::new(),
            callout: None,
        };
        let acme: Tenant = "acme".parse().expect("tenant");
        let (pw, new) = auth.tenant(&acme);
        assert!(new && pw.len() == 64);
        assert_eq!(
            auth.tenant(&acme),
            (pw.clone(), false),
            "stable once minted"
        );
        let conf = auth.render();
        assert!(
            conf.contains(r#"subject: "agentos.runs.acme.submit""#),
            "{conf}"
        );
        assert!(conf.contains(r#"allow: [ "agentos.events.acme.>", "_INBOX.>" ]"#));
        assert!(conf.contains(&format!(r#"user: "acme", password: "{pw}""#)));
        assert_eq!(conf.matches("account_token_position").count(), 4);
    }

    #[test]
    fn the_documented_example_is_what_render_writes() {
        let example = include_str!("../../nats/tenants.conf.example");
        let auth = NatsAuth {
            platform_password: "CHANGE-ME-platform".into(),
            tenants: ["acme", "globex"]
                .into_iter()
                .map(|t| (t.parse().expect("tenant"), format!("CHANGE-ME-{t}")))
                .collect(),
            callout: None,
        };
        let rendered = auth.render();
        let body = rendered.split_once('\n').map_or("", |(_, rest)| rest);
        assert!(
            example.ends_with(body),
            "nats/tenants.conf.example is stale; it should end with:\n{body}"
        );
    }
}
