//! `agentos up` and metrics: each worker gets its own metrics listener on a free loopback port
//! (kept across restarts, since a component restarts with the same arguments), and the scrape
//! targets are written as a Prometheus `file_sd` file in the home folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

const METRICS_FLAG: &str = "--metrics-listen";

/// `worker <kind> --metrics-listen 127.0.0.1:<free port>`.
pub fn worker_args(kind: &str) -> Result<Vec<String>> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port for a worker's metrics")?
        .port();
    Ok(vec![
        "worker".into(),
        kind.into(),
        METRICS_FLAG.into(),
        format!("127.0.0.1:{port}"),
    ])
}

/// Writes `<home>/prometheus/targets.json` (file_sd): the edge and every component started with
/// its own metrics listener, labelled with the component's name.
pub fn write_targets<'a>(
    home: &Path,
    edge: SocketAddr,
    components: impl Iterator<Item = (&'a str, &'a [String])>,
) -> Result<PathBuf> {
    let mut groups = vec![json!({"targets": [edge.to_string()], "labels": {"component": "edge"}})];
    for (name, args) in components {
        let listen = args
            .iter()
            .position(|a| a == METRICS_FLAG)
            .and_then(|i| args.get(i + 1));
        if let Some(addr) = listen {
            groups.push(json!({"targets": [addr], "labels": {"component": name}}));
        }
    }
    let dir = home.join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("targets.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&groups)?)?;
    Ok(file)
}
