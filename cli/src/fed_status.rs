//! Federation in `agentos status`: each peer a cluster heard from (its `agentos-peers` entry),
//! whether the link is up and when the peer was last seen. A home started with `up --federate`
//! records its two clusters in `<home>/federation/state.json` (removed on stop), so `status`
//! shows both; a plain platform whose edges federate (`[federation]`) shows its peers below
//! the rest.

use std::path::{Path, PathBuf};

use agentos_bus::{Bus, ConnectOptions};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One cluster of a home started with `up --federate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    pub node: String,
    pub nats_url: String,
    pub edge_url: String,
}

/// `<home>/federation/state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FederatedHome {
    /// The `agentos up --federate` process.
    pub up_pid: u32,
    pub clusters: Vec<ClusterState>,
}

fn path(home: &Path) -> PathBuf {
    home.join("federation").join("state.json")
}

impl FederatedHome {
    /// The federated clusters still running from `home`, if any.
    pub fn load(home: &Path) -> Result<Option<Self>> {
        let me: Option<Self> = crate::state::read_json(&path(home))?;
        Ok(me.filter(|m| crate::state::alive(m.up_pid)))
    }

    /// Writes atomically (temp file, then rename).
    pub fn save(&self, home: &Path) -> Result<()> {
        crate::state::write_json(&path(home), self)
    }

    pub fn remove(home: &Path) {
        let _ = std::fs::remove_file(path(home));
    }
}

/// A peer as `status` shows it.
#[derive(Debug, Serialize)]
pub struct PeerLine {
    pub node: String,
    pub version: String,
    pub protocol: String,
    /// `up` while announcements arrive (within three of the peer's intervals), else `down`.
    pub link: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: time::OffsetDateTime,
    /// Seconds since `last_seen`.
    pub seen_ago_s: i64,
}

/// The peers `bus`'s cluster heard from; `None` when it does not federate.
pub async fn peers(bus: &Bus) -> Result<Option<Vec<PeerLine>>> {
    let Some(records) = bus.fed_peers().await? else {
        return Ok(None);
    };
    let now = agentos_bus::envelope::now();
    Ok(Some(
        records
            .into_iter()
            .map(|p| PeerLine {
                node: p.announcement.node.to_string(),
                version: p.announcement.version.clone(),
                protocol: format!(
                    "{}-{}",
                    p.announcement.protocol.min, p.announcement.protocol.max
                ),
                link: if p.link_up(now) { "up" } else { "down" },
                last_seen: p.last_seen,
                seen_ago_s: (now - p.last_seen).whole_seconds(),
            })
            .collect(),
    ))
}

/// The peers table (nothing but a note when no peer announced yet).
pub fn print_peers(peers: &[PeerLine]) {
    if peers.is_empty() {
        println!("no peer has announced itself yet");
        return;
    }
    println!("PEER       LINK  LAST SEEN                        VERSION   PROTOCOL");
    for p in peers {
        let seen = p
            .last_seen
            .replace_nanosecond(0)
            .unwrap_or(p.last_seen)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!(
            "{:<10} {:<5} {:<32} {:<9} {}",
            p.node,
            p.link,
            format!("{seen} ({}s ago)", p.seen_ago_s),
            p.version,
            p.protocol
        );
    }
}

/// `agentos status` of a home started with `up --federate`: each cluster, its edge and its
/// peers. True (running).
pub async fn status(home: &FederatedHome, json_out: bool) -> Result<bool> {
    let http = reqwest::Client::new();
    let mut clusters = Vec::new();
    for c in &home.clusters {
        let bus = Bus::connect(&ConnectOptions::new(c.nats_url.clone()))
            .await
            .with_context(|| format!("connecting to cluster {}", c.node))?;
        let ready = http
            .get(format!("{}/readyz", c.edge_url))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let peers = peers(&bus).await?.unwrap_or_default();
        clusters.push((c, bus.server_version(), ready, peers));
    }
    if json_out {
        let v: Vec<_> = clusters
            .iter()
            .map(|(c, version, ready, peers)| {
                json!({"node": c.node, "nats": {"url": c.nats_url, "version": version},
                    "edge": {"url": c.edge_url, "ready": ready}, "peers": peers})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"running": true, "federation": v}))?
        );
        return Ok(true);
    }
    for (c, version, ready, peers) in &clusters {
        println!("CLUSTER  {} (federated, up pid {})", c.node, home.up_pid);
        println!("NATS     {} (v{version})", c.nats_url);
        println!(
            "edge     {} {}",
            c.edge_url,
            if *ready { "ready" } else { "NOT READY" }
        );
        print_peers(peers);
        println!();
    }
    Ok(true)
}
