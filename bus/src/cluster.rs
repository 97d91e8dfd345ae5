//! A clustered JetStream of N local nats-servers on loopback (routes between them, one shared
//! cluster name, a store per node): the test harness and `agentos up --cluster 3` both use it.
//! Each node is a [`NatsServer`], so it can be `kill -9`ed and restarted on its own port and
//! store like a single server.

use std::path::{Path, PathBuf};

use crate::server::{NatsServer, locate};
use crate::{Error, Result};

/// Where one node listens: its client port (fixed, so clients find it again after a restart)
/// and its cluster (route) port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    pub client: u16,
    pub cluster: u16,
    /// The HTTP monitoring port (`/healthz`, `/jsz`), on loopback.
    pub monitor: u16,
}

/// The nodes' names: `n0`, `n1`, …; the servers report them as `server_name`.
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// The configuration file of node `i` of a cluster whose nodes listen on `ports`; `extra` is
/// appended (e.g. accounts or a `tls { … }` block).
pub fn node_config(cluster_name: &str, i: usize, ports: &[NodePorts], extra: &str) -> String {
    let routes: String = ports
        .iter()
        .map(|p| format!("    nats-route://127.0.0.1:{}\n", p.cluster))
        .collect();
    let own = ports.get(i).copied().unwrap_or(NodePorts {
        client: 0,
        cluster: 0,
        monitor: 0,
    });
    format!(
        "server_name: {name}\nmax_payload: 8MB\nhttp: \"127.0.0.1:{monitor}\"\n\ncluster {{\n  \
         name: {cluster_name}\n  listen: 127.0.0.1:{route}\n  routes: [\n{routes}  ]\n}}\n\n{extra}",
        name = node_name(i),
        monitor = own.monitor,
        route = own.cluster,
    )
}

/// Ports nobody listens on right now, for `n` nodes, drawn below Linux's ephemeral range
/// (32,768 and up): every outgoing connection takes its local port from that range, so a port
/// the OS picked there and released could be taken by a connection before the node listens on
/// it (seen in CI: a node of a test cluster failed to start while other tests ran).
pub fn free_ports(n: usize) -> Result<Vec<NodePorts>> {
    // Hold every listener until all ports are picked, so none is picked twice.
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        let (a, b, c) = (bind_low()?, bind_low()?, bind_low()?);
        ports.push(NodePorts {
            client: port_of(&a)?,
            cluster: port_of(&b)?,
            monitor: port_of(&c)?,
        });
        held.push((a, b, c));
    }
    drop(held);
    Ok(ports)
}

/// A listener on a random free port in 10,000..32,000.
fn bind_low() -> Result<std::net::TcpListener> {
    for _ in 0..1_000 {
        let port = 10_000 + (uuid::Uuid::new_v4().as_u128() % 22_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l);
        }
    }
    Err(Error::Server("no free port in 10000..32000".into()))
}

fn port_of(l: &std::net::TcpListener) -> Result<u16> {
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Server(format!("no free port: {e}")))
}

/// A running cluster: its nodes in order (`n0` first).
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    pub ports: Vec<NodePorts>,
    _temp: Option<tempfile::TempDir>,
}

impl NatsCluster {
    /// A throwaway cluster of `n` nodes for tests: random ports, temporary stores.
    pub async fn ephemeral(n: usize) -> Result<Self> {
        let temp = tempfile::tempdir().map_err(|e| Error::Server(format!("temp dir: {e}")))?;
        let binary = locate(&[])?;
        let ports = free_ports(n)?;
        // `AGENTOS_NATS_LOG_DIR`: keep each node's log there (`<dir>/<node>-<port>.log`).
        let args: Vec<String> = std::env::var_os("AGENTOS_NATS_LOG_DIR")
            .map(PathBuf::from)
            .map(|d| {
                let log = d.join(format!(
                    "{{node}}-{}.log",
                    ports.first().map_or(0, |p| p.client)
                ));
                vec!["-l".to_owned(), log.display().to_string()]
            })
            .unwrap_or_default();
        let mut cluster =
            Self::start(&binary, temp.path(), &ports, "agentos-test", &args, "").await?;
        cluster._temp = Some(temp);
        Ok(cluster)
    }

    /// Starts one nats-server per entry of `ports`, node `i` storing under `dir/n<i>` with its
    /// configuration written to `dir/n<i>.conf` (`extra` appended to each); `args` go to every
    /// node after the configuration (e.g. `-l <log>`, with `{node}` replaced by its name).
    pub async fn start(
        binary: &Path,
        dir: &Path,
        ports: &[NodePorts],
        cluster_name: &str,
        args: &[String],
        extra: &str,
    ) -> Result<Self> {
        let mut nodes = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let name = node_name(i);
            let conf = dir.join(format!("{name}.conf"));
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Server(format!("create {}: {e}", dir.display())))?;
            std::fs::write(&conf, node_config(cluster_name, i, ports, extra))
                .map_err(|e| Error::Server(format!("write {}: {e}", conf.display())))?;
            let mut node_args = vec!["-c".to_owned(), conf.display().to_string()];
            node_args.extend(args.iter().map(|a| a.replace("{node}", &name)));
            let node = NatsServer::spawn(binary, &dir.join(&name), Some(p.client), &node_args)
                .await
                .map_err(|e| Error::Server(format!("node {name}: {e}")))?;
            nodes.push(node);
        }
        Ok(Self {
            nodes,
            ports: ports.to_vec(),
            _temp: None,
        })
    }

    /// Every node's client URL, comma-separated: what components connect with (async-nats
    /// tries them in turn and reconnects to another when one goes away).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name` (`n<i>`), e.g. a stream's leader.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.nodes.len())
    }

    /// Waits until every node answers `/healthz` with 200: JetStream current with the meta
    /// leader and every stream and consumer it holds current (what a rolling restart waits for
    /// before the next node). The nodes that are still unhealthy at the deadline are named.
    pub async fn wait_healthy(&self, timeout: std::time::Duration) -> Result<()> {
        wait_healthy(&self.ports, timeout).await
    }

    /// The nodes, and the temporary directory holding their stores (if [`Self::ephemeral`]):
    /// keep it alive as long as the nodes run.
    pub fn into_parts(self) -> (Vec<NatsServer>, Option<tempfile::TempDir>) {
        (self.nodes, self._temp)
    }

    /// The store directories, one per node.
    pub fn store_dirs(&self) -> Vec<PathBuf> {
        self.nodes
            .iter()
            .map(|n| n.store_dir().to_path_buf())
            .collect()
    }
}

/// Whether the node monitored on `port` answers `/healthz` with 200.
pub async fn healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        conn.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 16];
        let n = conn.read(&mut head).await?;
        std::io::Result::Ok(
            head[..n].starts_with(b"HTTP/1.0 200") || head[..n].starts_with(b"HTTP/1.1 200"),
        )
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// [`NatsCluster::wait_healthy`] for nodes monitored on `ports`.
pub async fn wait_healthy(ports: &[NodePorts], timeout: std::time::Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut sick = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            if !healthy(p.monitor).await {
                sick.push(node_name(i));
            }
        }
        if sick.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Server(format!(
                "cluster nodes not healthy after {timeout:?}: {}",
                sick.join(", ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
