//! `agentos up --observability`: Debian's Prometheus and Alertmanager (if installed) against the
//! local platform — Prometheus scraping the targets `up` wrote, with the alert rules of
//! `deploy/prometheus/alerts.yml` when run from a checkout — stopped with the platform.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use serde_json::json;

/// The started processes, killed on drop.
pub struct Observability {
    children: Vec<Child>,
    /// What to print: `(name, url)`.
    pub urls: Vec<(&'static str, String)>,
}

impl Drop for Observability {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn installed(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn spawn(home: &Path, name: &str, bin: &str, args: &[String]) -> Result<Child> {
    let log = std::fs::File::create(home.join("logs").join(format!("{name}.log")))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {bin}"))
}

/// Starts what is installed; says what is not.
pub fn start(home: &Path, targets: &Path) -> Result<Observability> {
    let mut o = Observability {
        children: Vec::new(),
        urls: Vec::new(),
    };
    let dir = home.join("prometheus");
    let mut alerting = None;
    // Debian names it prometheus-alertmanager.
    let am = ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|b| installed(b));
    if let Some(bin) = am {
        let port = free_port()?;
        let config = Path::new("deploy/alertmanager/alertmanager.yml");
        let config = if config.is_file() {
            config.to_path_buf()
        } else {
            let own = dir.join("alertmanager.yml");
            std::fs::write(
                &own,
                "route:\n  receiver: none\nreceivers:\n  - name: none\n",
            )?;
            own
        };
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.join("alertmanager").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".into(),
        ];
        o.children.push(spawn(home, "alertmanager", bin, &args)?);
        o.urls
            .push(("alertmanager", format!("http://127.0.0.1:{port}")));
        alerting = Some(port);
    } else {
        o.urls.push((
            "alertmanager",
            "not installed (apt-get install prometheus-alertmanager)".into(),
        ));
    }
    if installed("prometheus") {
        let port = free_port()?;
        let rules = Path::new("deploy/prometheus/alerts.yml");
        let mut config = json!({
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "scrape_configs": [{
                "job_name": "agentos",
                "sample_limit": 5000,
                "label_limit": 12,
                "file_sd_configs": [{"files": [targets.display().to_string()]}],
            }],
        });
        if rules.is_file() {
            config["rule_files"] = json!([std::fs::canonicalize(rules)?.display().to_string()]);
        }
        if let Some(am) = alerting {
            config["alerting"] = json!({"alertmanagers": [{"static_configs": [{"targets": [format!("127.0.0.1:{am}")]}]}]});
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config.to_string())?; // JSON is YAML
        let args = vec![
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        o.children
            .push(spawn(home, "prometheus", "prometheus", &args)?);
        o.urls
            .push(("prometheus", format!("http://127.0.0.1:{port}")));
    } else {
        o.urls.push((
            "prometheus",
            "not installed (apt-get install prometheus)".into(),
        ));
    }
    Ok(o)
}
