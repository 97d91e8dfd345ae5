//! The auth callout's part of the local NATS accounts (`up --auth-callout`): the issuer nkey (seed
//! in `<home>/nats/callout-issuer.nk`, mode 0600), the `AUTH` account with the callout's user, a
//! system-account user to close revoked tokens' connections, and the `authorization {
//! auth_callout }` block. See docs/operations.md, "One identity on NATS: the auth callout".

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::accounts::{NatsAuth, password};

const CALLOUT_ACCOUNT: &str = "AUTH";
const CALLOUT_USER: &str = "auth-callout";
const SYS_USER: &str = "agentos-sys";

/// What nats-server needs to hand connections to the auth callout, and the callout to answer.
#[derive(Clone, Serialize, Deserialize)]
pub struct CalloutAuth {
    /// The issuer's public account nkey; its seed is in [`seed_path`].
    pub issuer: String,
    pub password: String,
    /// The system-account user the callout closes revoked tokens' connections with.
    pub sys_password: String,
}

/// The callout issuer's seed (mode 0600).
pub fn seed_path(home: &Path) -> PathBuf {
    home.join("nats").join("callout-issuer.nk")
}

impl CalloutAuth {
    /// The `SYS` account with its user, and the `AUTH` account with the callout's.
    pub fn accounts(&self) -> String {
        format!(
            "  SYS {{ users: [ {{ user: \"{SYS_USER}\", password: \"{}\" }} ] }}\n  {CALLOUT_ACCOUNT} {{ users: [ {{ user: \"{CALLOUT_USER}\", password: \"{}\" }} ] }}\n",
            self.sys_password, self.password
        )
    }

    /// Connections of no static user go to the callout, which places them in their tenant's
    /// account. Static users (the platform's, each tenant's) authenticate as before: only the
    /// callout's own account is delegated (`allowed_accounts`; users no account knows always
    /// are), and its user skips the callout (`auth_users`). Neither list names a tenant:
    /// nats-server cannot reload a changed `auth_callout` block, so adding a tenant must not
    /// change it.
    pub fn authorization(&self) -> String {
        format!(
            r#"authorization {{
  auth_callout {{
    issuer: "{issuer}"
    account: {CALLOUT_ACCOUNT}
    auth_users: [ "{CALLOUT_USER}" ]
    allowed_accounts: [ {CALLOUT_ACCOUNT} ]
  }}
}}
"#,
            issuer = self.issuer
        )
    }
}

impl NatsAuth {
    /// Turns the auth callout on (a fresh issuer nkey, seed written 0600, when there is none) or
    /// off; `save` then renders the server configuration to match.
    pub fn set_callout(&mut self, home: &Path, on: bool) -> Result<()> {
        if !on {
            self.callout = None;
            return Ok(());
        }
        let seed = seed_path(home);
        if self.callout.is_some() && seed.exists() {
            return Ok(());
        }
        let (issuer, secret) = agentos_bus::callout::Issuer::generate()?;
        std::fs::create_dir_all(home.join("nats"))?;
        crate::secret::write(&seed, secret.as_bytes())?;
        self.callout = Some(CalloutAuth {
            issuer: issuer.public_key(),
            password: password(),
            sys_password: password(),
        });
        Ok(())
    }

    /// Environment of the `auth-callout` component: its seed file and its two NATS users.
    pub fn callout_env(&self, home: &Path) -> Vec<(&'static str, String)> {
        let Some(c) = &self.callout else {
            return Vec::new();
        };
        vec![
            (
                "AGENTOS_CALLOUT_ISSUER_SEED_FILE",
                seed_path(home).display().to_string(),
            ),
            ("AGENTOS_CALLOUT_USER", CALLOUT_USER.into()),
            ("AGENTOS_CALLOUT_PASSWORD", c.password.clone()),
            ("AGENTOS_CALLOUT_SYS_USER", SYS_USER.into()),
            ("AGENTOS_CALLOUT_SYS_PASSWORD", c.sys_password.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_callout_block_delegates_only_unknown_users_and_survives_new_tenants() {
        let dir = tempfile::tempdir().expect("temp");
        let mut auth = NatsAuth {
            platform_password: "p".into(),
            tenants: BTreeMap::new(),
            callout: None,
        };
        auth.tenant(&"acme".parse().expect("tenant"));
        auth.set_callout(dir.path(), true).expect("on");
        let c = auth.callout.clone().expect("callout");
        assert!(c.issuer.starts_with('A'));
        let seed = crate::secret::read(&seed_path(dir.path())).expect("seed 0600");
        assert_eq!(
            agentos_bus::callout::Issuer::from_seed(&seed)
                .expect("issuer")
                .public_key(),
            c.issuer
        );
        let conf = auth.render();
        assert!(
            conf.contains(&format!(r#"issuer: "{}""#, c.issuer)),
            "{conf}"
        );
        assert!(conf.contains(r#"auth_users: [ "auth-callout" ]"#), "{conf}");
        assert!(conf.contains("allowed_accounts: [ AUTH ]"), "{conf}");
        assert!(conf.contains(r#"user: "agentos-sys""#), "{conf}");
        // A new tenant leaves the callout block as it was (nats-server cannot reload it).
        let block = |c: &str| c[c.find("authorization").expect("block")..].to_owned();
        auth.tenant(&"globex".parse().expect("tenant"));
        assert_eq!(block(&auth.render()), block(&conf));
        auth.set_callout(dir.path(), true).expect("again");
        assert_eq!(
            auth.callout.as_ref().map(|c| &c.issuer),
            Some(&c.issuer),
            "kept"
        );
        auth.set_callout(dir.path(), false).expect("off");
        assert!(!auth.render().contains("auth_callout"));
    }
}
