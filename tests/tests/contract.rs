//! The API contract: schemathesis (`--checks all`) against a live platform finds nothing. Every
//! status a route answers is documented, in the error model; what the document allows the
//! server takes, and what it forbids the server refuses.
//!
//! A fixed seed and a bounded example budget keep the run reproducible and within its time;
//! `AGENTOS_CONTRACT_SEED` and `AGENTOS_CONTRACT_EXAMPLES` explore further. Settings:
//! `tests/contract/schemathesis.toml`.

use std::process::Stdio;
use std::time::Instant;

use agentos_e2e::{Options, Platform, mint_with_roles};
use anyhow::{Context, Result};

const SEED: &str = "1";
const EXAMPLES: &str = "20";

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_contract_failure_against_a_live_platform() -> Result<()> {
    let p = Platform::start(Options::default()).await?;
    // An admin reaches the admin routes too.
    let token = mint_with_roles("acme", "admin")?;
    let seed = std::env::var("AGENTOS_CONTRACT_SEED").unwrap_or_else(|_| SEED.into());
    let examples = std::env::var("AGENTOS_CONTRACT_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/contract/schemathesis.toml");
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let out = tokio::process::Command::new("schemathesis")
        .args(["--no-color", "--config-file", config, "run"])
        .arg(p.url("/openapi.json"))
        .args([
            "--checks",
            "all",
            "--workers",
            "1",
            "--output-sanitize",
            "false",
        ])
        .args(["--generation-database", "none"])
        .args(["--seed", &seed, "--max-examples", &examples])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        // Its own files (reports, caches) go to a temporary directory.
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .context("schemathesis (pip install -r tests/requirements.txt)")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "schemathesis seed {seed}, {examples} examples per operation: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis found contract failures (seed {seed}):\n{report}"
    );
    let summary = report
        .lines()
        .rev()
        .find(|l| l.contains(" in ") && l.starts_with('='))
        .unwrap_or_default();
    eprintln!("{summary}");
    assert!(
        !summary.contains("failure") && !summary.contains("error"),
        "{report}"
    );
    Ok(())
}
