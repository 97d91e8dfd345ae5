//! `agentos up --cluster N`: N clustered nats-servers on loopback instead of one, every stream
//! and bucket at R-N, the components connected to every node. Node `i` listens for clients on
//! `--nats-port + i`, for routes on `--nats-port + 2000 + i`, for monitoring (`/healthz`) on
//! `--nats-port + 4000 + i`; its configuration is `<home>/nats/n<i>.conf` (it includes the
//! platform's accounts, and TLS with `--tls`), its store `<home>/nats/n<i>/jetstream`, its log
//! `<home>/logs/nats-n<i>.log`. Nodes 1.. are started here; `up` starts node 0 as it does the
//! single server, and its supervisor restarts every node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentos_bus::cluster::{self, NodePorts};
use agentos_bus::server::NatsServer;
use agentos_bus::{Bus, Settings};
use anyhow::{Context, Result, anyhow, bail};

use crate::up_supervise::NatsLauncher;

/// The cluster's name (identical on every node).
const NAME: &str = "agentos";

/// Where each node listens and keeps its files.
pub struct Plan {
    ports: Vec<NodePorts>,
    nats_dir: PathBuf,
    logs: PathBuf,
}

impl Plan {
    /// `None` for a single server. Writes every node's configuration, including `nats_config`
    /// (the accounts, or the TLS configuration that includes them; it lives in `<home>/nats`).
    pub fn new(
        nodes: Option<u8>,
        base: u16,
        home: &Path,
        nats_config: &Path,
    ) -> Result<Option<Self>> {
        let Some(n) = nodes.map(usize::from) else {
            return Ok(None);
        };
        let port = |offset: usize| -> Result<u16> {
            u16::try_from(usize::from(base) + offset)
                .map_err(|_| anyhow!("--nats-port {base} leaves no room for {n} nodes"))
        };
        let ports = (0..n)
            .map(|i| {
                Ok(NodePorts {
                    client: port(i)?,
                    cluster: port(2000 + i)?,
                    monitor: port(4000 + i)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for p in ports.iter().flat_map(|p| [p.client, p.cluster, p.monitor]) {
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                bail!(
                    "port {p} is in use (the cluster uses --nats-port + 0..{n}, + 2000.., + 4000..)\n  hint: stop what uses it, or pass another --nats-port"
                );
            }
        }
        let nats_dir = home.join("nats");
        let include = nats_config
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| anyhow!("no file name in {}", nats_config.display()))?;
        for i in 0..n {
            let conf = nats_dir.join(format!("{}.conf", cluster::node_name(i)));
            let text = format!(
                "# Written by `agentos up --cluster {n}`; edits are overwritten.\n{}",
                cluster::node_config(NAME, i, &ports, &format!("include {include:?}\n"))
            );
            std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        }
        Ok(Some(Self {
            ports,
            nats_dir,
            logs: home.join("logs"),
        }))
    }

    /// Node `i`'s store folder and the arguments after the defaults (log file, configuration).
    pub fn node(&self, i: usize) -> (PathBuf, Vec<String>) {
        let name = cluster::node_name(i);
        let log = self.logs.join(format!("nats-{name}.log"));
        let conf = self.nats_dir.join(format!("{name}.conf"));
        (
            self.nats_dir.join(&name),
            vec![
                "-l".into(),
                log.display().to_string(),
                "-c".into(),
                conf.display().to_string(),
            ],
        )
    }

    /// Every node's client URL, comma-separated: what the components connect with.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One replica per node (JetStream allows up to 5).
    pub fn settings(&self) -> Settings {
        Settings {
            replicas: self.ports.len().min(5),
            ..Settings::default()
        }
    }

    /// Starts nodes 1.. (node 0 is `up`'s own), each with its name and how to start it again
    /// (`up`'s supervisor restarts them as it does node 0).
    pub async fn start_peers(
        &self,
        binary: &Path,
    ) -> Result<Vec<(String, NatsLauncher, NatsServer)>> {
        let mut nodes = Vec::new();
        for (i, p) in self.ports.iter().enumerate().skip(1) {
            let (dir, args) = self.node(i);
            let launcher = NatsLauncher {
                binary: binary.to_path_buf(),
                dir,
                port: p.client,
                args,
            };
            let node = launcher.spawn().await.map_err(|e| {
                anyhow!(
                    "nats-server {}: {e}\n  hint: see {}",
                    cluster::node_name(i),
                    launcher.args[1]
                )
            })?;
            nodes.push((cluster::node_name(i), launcher, node));
        }
        Ok(nodes)
    }

    /// Provisions at R-N once the cluster has a meta leader, then waits until every node is
    /// healthy (current with the meta leader and every stream).
    pub async fn provision(&self, bus: &Bus) -> Result<agentos_bus::provision::Report> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let report = loop {
            match bus.provision(&self.settings()).await {
                Ok(r) => break r,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "cluster not ready for provisioning yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => bail!("{e}\n  hint: see {}", self.logs.display()),
            }
        };
        cluster::wait_healthy(&self.ports, Duration::from_secs(60)).await?;
        Ok(report)
    }

    /// The lines `up` prints about the cluster.
    pub fn describe(&self) -> String {
        format!(
            "{} nodes, streams and KV at R{} (configs and stores in {}; health: {})",
            self.ports.len(),
            self.settings().replicas,
            self.nats_dir.display(),
            self.ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{}/healthz", p.monitor))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}
