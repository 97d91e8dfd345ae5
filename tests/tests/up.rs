//! `agentos up --smoke-only` from a fresh home folder: starts NATS, the edge and the workers,
//! completes the smoke run, stops everything; a second start reuses the same data. The secrets it
//! writes (`jwt-secret`, `token`) are readable by their owner only.

use std::process::Command;

use agentos_e2e::agentos_bin;

fn free_port() -> u16 {
    agentos_e2e::free_port().expect("free port")
}

/// The permission bits of a file.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn up_completes_a_smoke_run_and_stops_cleanly_twice() {
    let home = tempfile::tempdir().expect("home");
    for attempt in 1..=2 {
        let out = Command::new(agentos_bin().expect("binary"))
            .args(["up", "--smoke-only", "--home"])
            .arg(home.path())
            .args([
                "--nats-port",
                &free_port().to_string(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .output()
            .expect("run agentos up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "attempt {attempt}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for phase in [
            "[1/6] config",
            "[2/6] nats-server",
            "[6/6] smoke run",
            "completed: \"The answer is 42.\"",
            "stopped.",
        ] {
            assert!(
                stdout.contains(phase),
                "attempt {attempt} lacks {phase:?}:\n{stdout}"
            );
        }
        assert!(home.path().join("token").is_file());
        for secret in ["jwt-secret", "token"] {
            let mode = mode(&home.path().join(secret));
            assert!(
                mode == 0o600,
                "attempt {attempt}: {secret} has mode {mode:04o}, not 0600"
            );
        }
        assert!(!home.path().join("up.pid").exists(), "the lock is released");
    }
    let reports = std::fs::read_dir(home.path().join("reports"))
        .expect("reports")
        .count();
    assert!(reports >= 1);
}
