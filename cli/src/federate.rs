//! `agentos up --federate`: two federated clusters on this machine, for a demo. Cluster `a` is
//! the hub, cluster `b` a leaf of `a`; each has its own nats-server (JetStream domain = node id,
//! the configs of `agentos_bus::federation::nats_conf`), edge, orchestrator, model and tool
//! worker. Both edges trust the same secret, so one token works on both. Everything stops on
//! Ctrl-C. Components are not supervised here (plain `up` does that).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentos_bus::federation::nats_conf;
use agentos_bus::id::{NodeId, Tenant};
use agentos_bus::server::{self, NatsServer};
use agentos_bus::{Bus, ConnectOptions, Settings};
use anyhow::{Context, Result, bail};

/// Children killed on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            crate::state::terminate(c.id());
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Cluster {
    node: NodeId,
    peer: NodeId,
    dir: PathBuf,
    nats: NatsServer,
    edge_port: u16,
}

async fn start_nats(binary: &Path, dir: &Path, conf: &str) -> Result<NatsServer> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let path = dir.join("nats.conf");
    std::fs::write(&path, conf)?;
    let args = ["-c".to_owned(), path.display().to_string()];
    NatsServer::spawn(binary, dir, None, &args)
        .await
        .with_context(|| format!("starting nats-server in {}", dir.display()))
}

fn spawn(
    c: &Cluster,
    secret: &str,
    config: Option<&Path>,
    name: &str,
    args: &[&str],
) -> Result<Child> {
    let log = std::fs::File::create(c.dir.join("logs").join(format!("{name}.log")))?;
    Command::new(std::env::current_exe()?)
        .args(args)
        .env("AGENTOS_NATS_URL", c.nats.url())
        .env("AGENTOS_JWT_SECRET", secret)
        .env("AGENTOS_FED_NODE", c.node.as_str())
        .env("AGENTOS_FED_PEERS", c.peer.as_str())
        .env("AGENTOS_LOG_FORMAT", "json")
        .envs(config.map(|p| ("AGENTOS_CONFIG", p)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name} of cluster {}", c.node))
}

/// Starts both clusters under `<home>/federation/`, prints how to use them, waits for Ctrl-C.
pub async fn up(home: &Path, config: Option<PathBuf>) -> Result<()> {
    let root = home.join("federation");
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create {} (hint: another --home)", root.display()))?;
    let root = root.canonicalize()?;
    let binary = server::locate(&[home
        .join("tools")
        .join("nats")
        .join("bin")
        .join("nats-server")])
    .context("hint: scripts/install-nats-server, or run plain `agentos up` once")?;
    let (a, b) = (NodeId::parse("a")?, NodeId::parse("b")?);
    let leaf_port = free_port()?;
    println!("[1/3] two nats-servers: a (hub, leaf port {leaf_port}) and b (leaf of a)");
    let na = start_nats(
        &binary,
        &root.join("a"),
        &nats_conf::hub(&a, None, &format!("127.0.0.1:{leaf_port}")),
    )
    .await?;
    let nb = start_nats(
        &binary,
        &root.join("b"),
        &nats_conf::leaf(&b, None, &format!("nats-leaf://127.0.0.1:{leaf_port}")),
    )
    .await?;
    let clusters = [
        Cluster {
            node: a.clone(),
            peer: b.clone(),
            dir: root.join("a"),
            nats: na,
            edge_port: free_port()?,
        },
        Cluster {
            node: b.clone(),
            peer: a.clone(),
            dir: root.join("b"),
            nats: nb,
            edge_port: free_port()?,
        },
    ];
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    println!("[2/3] edge and workers of each cluster");
    let mut children = Children(Vec::new());
    for c in &clusters {
        let bus = Bus::connect(&ConnectOptions::new(c.nats.url())).await?;
        bus.provision(&Settings::default()).await?;
        let listen = format!("127.0.0.1:{}", c.edge_port);
        let cfg = config.as_deref();
        children.0.push(spawn(
            c,
            &secret,
            cfg,
            "edge",
            &["edge", "--listen", &listen],
        )?);
        for kind in ["orchestrator", "model", "tool"] {
            children
                .0
                .push(spawn(c, &secret, cfg, kind, &["worker", kind])?);
        }
    }
    let tenant = Tenant::parse("dev")?;
    let token = agentos_edge::mint(
        secret.as_bytes(),
        "developer",
        &tenant,
        &["member".to_owned()],
        Duration::from_secs(86_400),
    )?;
    println!("[3/3] waiting for the link");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for c in &clusters {
        let url = format!("http://127.0.0.1:{}/v1/federation/peers", c.edge_port);
        loop {
            let up = match http.get(&url).bearer_auth(&token).send().await {
                Ok(r) => r.json::<serde_json::Value>().await.ok().is_some_and(|v| {
                    v["data"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|p| p["link"] == "up"))
                }),
                Err(_) => false,
            };
            if up {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "cluster {} does not see its peer after 60 s; logs in {}",
                    c.node,
                    c.dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let state = crate::fed_status::FederatedHome {
        up_pid: std::process::id(),
        clusters: clusters
            .iter()
            .map(|c| crate::fed_status::ClusterState {
                node: c.node.to_string(),
                nats_url: c.nats.url().to_owned(),
                edge_url: format!("http://127.0.0.1:{}", c.edge_port),
            })
            .collect(),
    };
    state.save(home)?;
    let (ea, eb) = (clusters[0].edge_port, clusters[1].edge_port);
    println!(
        "\nfederated: cluster a at http://127.0.0.1:{ea} (nats {}), cluster b at http://127.0.0.1:{eb} (nats {})\n\
         token (tenant dev, both clusters): {token}\n\n\
         an agent only b serves, run from a:\n  \
         curl -s -H \"Authorization: Bearer $T\" -H 'content-type: application/json' http://127.0.0.1:{eb}/v1/agents \\\n    \
         -d '{{\"id\": \"hello\", \"model\": \"scripted\", \"model_config\": {{\"script\": [{{\"text\": \"hi from b\"}}]}}}}'\n  \
         curl -s -H \"Authorization: Bearer $T\" -H 'content-type: application/json' http://127.0.0.1:{ea}/v1/runs \\\n    \
         -d '{{\"agent_id\": \"hello\", \"input\": \"hi\"}}'\n  \
         curl -s -H \"Authorization: Bearer $T\" http://127.0.0.1:{ea}/v1/federation/peers\n\n\
         `agentos status --home {}` shows the link; logs in {}; Ctrl-C stops both clusters",
        clusters[0].nats.url(),
        clusters[1].nats.url(),
        home.display(),
        root.display()
    );
    crate::run::shutdown_on_signal().cancelled().await;
    println!("stopping");
    crate::fed_status::FederatedHome::remove(home);
    drop(children);
    Ok(())
}
