//! `<home>/state.json`: what a running platform looks like from outside — URLs, the token file
//! and every pid. Written once the platform is ready, updated on restarts, removed on stop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub edge_url: String,
    pub nats_url: String,
    pub token_file: PathBuf,
    pub home: PathBuf,
    /// The `agentos up` process that supervises everything.
    pub up_pid: u32,
    pub nats_pid: u32,
    /// The other nodes' nats-servers with `up --cluster N` (node 1 on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nats_peers: Vec<u32>,
    pub components: Vec<ComponentPid>,
    /// The operator's TLS files when the platform runs with `--tls` (CA, client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::certs::ClientTls>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComponentPid {
    pub name: String,
    pub pid: u32,
}

pub fn path(home: &Path) -> PathBuf {
    home.join("state.json")
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The JSON file at `p`, if there is one.
pub fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not valid", p.display()))
}

/// Writes `value` as JSON to `p` atomically (temp file, then rename).
pub fn write_json(p: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))
}

impl State {
    /// The state of a platform that is still running from `home`, if any.
    pub fn load(home: &Path) -> Result<Option<Self>> {
        let state: Option<Self> = read_json(&path(home))?;
        Ok(state.filter(|s| alive(s.up_pid)))
    }

    /// Writes atomically (temp file, then rename).
    pub fn save(&self) -> Result<()> {
        write_json(&path(&self.home), self)
    }

    /// How operator commands connect to this platform's NATS: as the platform user.
    pub fn connect_options(&self, name: &str) -> Result<agentos_bus::ConnectOptions> {
        let opts =
            crate::accounts::NatsAuth::load_or_create(&self.home)?.platform(&self.nats_url, name);
        Ok(match &self.tls {
            Some(tls) => tls.nats(opts),
            None => opts,
        })
    }

    /// An HTTP client for this platform's edge (with its CA and client certificate under TLS).
    pub fn http(&self) -> Result<reqwest::Client> {
        match &self.tls {
            Some(tls) => tls.http(),
            None => Ok(reqwest::Client::new()),
        }
    }

    /// The platform's dev token; refused if others can read its file.
    pub fn token(&self) -> Result<String> {
        crate::secret::read(&self.token_file)
    }
}

/// Sends SIGTERM (graceful stop) to a process.
pub fn terminate(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
