//! Two federated clusters on loopback: A (the hub, JetStream domain `a`) and B (a leaf of A,
//! domain `b`), each a real nats-server with the configs `agentos_bus::federation::nats_conf`
//! writes, and each with its own edge and workers (a [`Platform`]).

use std::path::PathBuf;
use std::time::Duration;

use agentos_bus::Bus;
use agentos_bus::federation::nats_conf;
use agentos_bus::id::{NodeId, RunId, Tenant};
use agentos_bus::server::{NatsServer, locate};
use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{Options, Platform, eventually, free_port};

/// A nats-server started from a federation config, restartable on the same port and store.
pub struct FedNats {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub port: u16,
    /// The config it starts with.
    linked: String,
    /// The same server without its leaf remote (a leaf only; a hub's stays `linked`).
    unlinked: String,
}

impl FedNats {
    fn new(linked: String, unlinked: String) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("nats.conf");
        // The store is given on the command line (`--sd`), next to the config.
        std::fs::write(&conf, &linked)?;
        Ok(Self {
            dir,
            conf,
            port: free_port()?,
            linked,
            unlinked,
        })
    }

    /// The hub `node`, accepting leaf links on the returned port.
    pub fn hub(node: &NodeId) -> Result<(Self, u16)> {
        let leaf_port = free_port()?;
        let text = nats_conf::hub(node, None, &format!("127.0.0.1:{leaf_port}"));
        Ok((Self::new(text.clone(), text)?, leaf_port))
    }

    /// A leaf `node` of the hub listening for leaf links on `hub_leaf_port`.
    pub fn leaf(node: &NodeId, hub_leaf_port: u16) -> Result<Self> {
        let linked = nats_conf::leaf(
            node,
            None,
            &format!("nats-leaf://127.0.0.1:{hub_leaf_port}"),
        );
        Self::new(linked, nats_conf::unlinked(node, None))
    }

    /// Rewrites the config with or without the leaf remote and has `server` reload it
    /// (`SIGHUP`): removing the remote closes the leaf link at once, adding it back reconnects.
    pub fn reload_linked(&self, server: &NatsServer, linked: bool) -> Result<()> {
        let text = if linked { &self.linked } else { &self.unlinked };
        std::fs::write(&self.conf, text)?;
        let status = std::process::Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "SIGHUP to nats-server: {status}");
        Ok(())
    }

    /// Starts (or starts again) the server.
    pub async fn start(&self) -> Result<NatsServer> {
        let args = ["-c".to_owned(), self.conf.display().to_string()];
        Ok(NatsServer::spawn(&locate(&[])?, self.dir.path(), Some(self.port), &args).await?)
    }
}

/// `kill -9` of a server; it is reaped, so dropping it later signals nothing.
pub fn kill9(server: &mut NatsServer) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &server.pid().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.exited().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How the two clusters are set up.
#[derive(Clone, Debug)]
pub struct FedOptions {
    pub a: Options,
    pub b: Options,
    /// How often nodes announce themselves.
    pub announce: &'static str,
    /// How long a peer may stay unseen before its runs fail `peer_unavailable`.
    pub peer_deadline: &'static str,
    /// The protocol range B announces (default: this build's).
    pub b_protocol: Option<&'static str>,
}

impl Default for FedOptions {
    fn default() -> Self {
        Self {
            a: Options::default(),
            b: Options::default(),
            announce: "300ms",
            peer_deadline: "120s",
            b_protocol: None,
        }
    }
}

pub struct Clusters {
    pub a: Platform,
    pub b: Platform,
    pub a_nats: FedNats,
    pub b_nats: FedNats,
}

fn fed_env(node: &str, peer: &str, o: &FedOptions) -> Vec<(String, String)> {
    vec![
        ("AGENTOS_FED_NODE".into(), node.into()),
        ("AGENTOS_FED_PEERS".into(), peer.into()),
        ("AGENTOS_FED_ANNOUNCE_INTERVAL".into(), o.announce.into()),
        ("AGENTOS_FED_PEER_DEADLINE".into(), o.peer_deadline.into()),
    ]
}

impl Clusters {
    /// Starts A and B, each with an edge, an orchestrator, a model and a tool worker, and waits
    /// until each sees the other as a peer.
    pub async fn start(o: FedOptions) -> Result<Self> {
        let (a_id, b_id) = (NodeId::parse("a")?, NodeId::parse("b")?);
        let (a_nats, leaf_port) = FedNats::hub(&a_id)?;
        let b_nats = FedNats::leaf(&b_id, leaf_port)?;
        let (na, nb) = (a_nats.start().await?, b_nats.start().await?);
        let mut a_opts = o.a.clone();
        a_opts.env.extend(fed_env("a", "b", &o));
        let mut b_opts = o.b.clone();
        b_opts.env.extend(fed_env("b", "a", &o));
        if let Some(p) = o.b_protocol {
            b_opts.env.push(("AGENTOS_FED_PROTOCOL".into(), p.into()));
        }
        let (a, b) = tokio::try_join!(
            Platform::start_on(na, a_opts),
            Platform::start_on(nb, b_opts)
        )?;
        let me = Self {
            a,
            b,
            a_nats,
            b_nats,
        };
        me.wait_peer(&me.a, "b").await?;
        me.wait_peer(&me.b, "a").await?;
        Ok(me)
    }

    /// Waits until `p` lists `node` as a peer whose link is up; its entry.
    pub async fn wait_peer(&self, p: &Platform, node: &str) -> Result<Value> {
        eventually(
            &format!("peer {node} up"),
            Duration::from_secs(60),
            || async {
                let (status, v) = p.get("/v1/federation/peers").await.ok()?;
                (status == 200).then_some(())?;
                v["data"]
                    .as_array()?
                    .iter()
                    .find(|e| e["node"] == node && e["link"] == "up")
                    .cloned()
            },
        )
        .await
    }

    /// `kill -9` of B's nats-server.
    pub fn kill_b_nats(&mut self) {
        kill9(&mut self.b.nats);
    }

    /// Cuts the link (`linked = false`) or restores it by rewriting B's nats config and
    /// reloading it, and waits until A's peers list shows the link so.
    pub async fn reload_b_link(&self, linked: bool) -> Result<()> {
        self.b_nats.reload_linked(&self.b.nats, linked)?;
        eventually(
            &format!("the leaf link {}", if linked { "up" } else { "down" }),
            Duration::from_secs(30),
            || async {
                let (_, v) = self.a.get("/v1/federation/peers").await.ok()?;
                let b = v["data"].as_array()?.iter().find(|p| p["node"] == "b")?;
                (b["link"] == if linked { "up" } else { "down" }).then_some(())
            },
        )
        .await
    }

    /// `kill -9` of B's workers: its orchestrators, model and tool workers (not its edge).
    pub fn kill_b_workers(&mut self) {
        self.b
            .procs
            .retain(|p| !matches!(p.name.as_str(), "orchestrator" | "model" | "tool"));
    }

    /// Starts B's workers again (one orchestrator, a model and a tool worker).
    pub async fn restart_b_workers(&mut self) -> Result<()> {
        self.b.spawn("model", &["worker", "model"])?;
        self.b.spawn("tool", &["worker", "tool"])?;
        self.b.spawn_orchestrator()?;
        self.b.wait_services(1).await
    }

    /// Starts B's nats-server again on the same port and store.
    pub async fn restart_b_nats(&mut self) -> Result<()> {
        let fresh = self
            .b_nats
            .start()
            .await
            .context("restarting B's nats-server")?;
        // The old handle holds the reaped child: dropping it signals nothing.
        drop(std::mem::replace(&mut self.b.nats, fresh));
        Ok(())
    }
}

// What the federation tests share: agents, waits and journal checks.

/// How long a federation test waits for anything to cross the link.
pub const LONG: Duration = Duration::from_secs(60);

/// An agent that calls `math.eval` then `echo`, then answers.
pub fn calc_agent() -> serde_json::Value {
    json!({
        "id": "calc", "model": "scripted", "tools": ["math.eval", "echo"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "math.eval", "arguments": {"expr": "6*7"}}]},
            {"tool_calls": [{"name": "echo", "arguments": {"said": "hello"}}]},
            {"text": "The answer is 42."}
        ]}
    })
}

/// Waits until A's peers list shows `agent` served by B.
pub async fn wait_agent_at_b(c: &Clusters, agent: &str) -> Result<()> {
    eventually("B announces the agent", LONG, || async {
        let (_, v) = c.a.get("/v1/federation/peers").await.ok()?;
        v["data"].as_array()?.iter().find(|p| {
            p["node"] == "b"
                && p["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == agent))
        })?;
        Some(())
    })
    .await
}

/// An agent that sleeps `ms` in a tool, then answers.
pub fn sleepy_agent(ms: u64) -> serde_json::Value {
    json!({
        "id": "sleepy", "model": "scripted", "tools": ["sleep"],
        "model_config": {"script": [
            {"tool_calls": [{"name": "sleep", "arguments": {"ms": ms}}]},
            {"text": "slept"}
        ]}
    })
}

/// The events of `run` in A's journal: in order, each once, and how many of each type.
pub async fn check_journal(bus: &Bus, run: &str) -> Result<Vec<String>> {
    let tenant = Tenant::parse("acme")?;
    let journal = bus.read_journal(&tenant, &RunId::parse(run)?).await?;
    let seqs: Vec<u64> = journal.iter().map(|s| s.event.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "run {run}: {seqs:?}"
    );
    Ok(journal
        .iter()
        .map(|s| s.event.type_name().to_owned())
        .collect())
}

/// An agent that calls the client tool `lookup` (so its run waits for its caller), then
/// quotes the answer.
pub fn asker_agent() -> serde_json::Value {
    json!({
        "id": "asker", "model": "scripted",
        "client_tools": [{
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
        }],
        "model_config": {"script": [
            {"tool_calls": [{"name": "lookup", "arguments": {"q": "the answer"}}]},
            {"text": "the caller said {last_tool_output}"}
        ]}
    })
}

/// How many events of `kind` the journal of `run` at `bus` holds.
pub async fn count_events(bus: &Bus, run: &RunId, kind: &str) -> Result<usize> {
    let tenant = Tenant::parse("acme")?;
    let journal = bus.read_journal(&tenant, run).await?;
    Ok(journal
        .iter()
        .filter(|s| s.event.type_name() == kind)
        .count())
}

/// Waits until A sees `run` waiting for its caller; its record.
pub async fn waiting_at_a(c: &Clusters, run: &str) -> Result<Value> {
    eventually("A to see the wait", LONG, || async {
        let (_, v) =
            c.a.get(&format!("/v1/runs/{run}/wait?timeout_s=5"))
                .await
                .ok()?;
        (v["status"] == "requires_action").then_some(v)
    })
    .await
}

/// How many of `names` are `kind`.
pub fn count(names: &[String], kind: &str) -> usize {
    names.iter().filter(|n| *n == kind).count()
}
