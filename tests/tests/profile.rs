//! The production profile refuses development settings at start, naming every one at once, in
//! the edge and in the workers; the development profile lets them through. (A production
//! configuration that passes is `auth.rs`'s JWKS platform, which runs under the profile.)

use std::process::Command;

use agentos_e2e::agentos_bin;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(agentos_bin().expect("binary"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("AGENTOS_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run agentos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_production_profile_refuses_development_settings_at_start() {
    let (ok, err) = run(
        &[
            "--profile",
            "production",
            "edge",
            "--listen",
            "0.0.0.0:0",
            "--nats-url",
            "nats://10.255.0.1:4222",
        ],
        &[("AGENTOS_JWT_SECRET", "a-development-secret-of-32-bytes!")],
    );
    assert!(!ok, "{err}");
    for what in [
        "production profile refuses",
        "HS256 shared secret",
        "--jwt-audience",
        "plain-text listener on 0.0.0.0:0",
        "plain-text NATS to nats://10.255.0.1:4222",
    ] {
        assert!(err.contains(what), "missing {what:?} in: {err}");
    }
    let (ok, err) = run(
        &["edge", "--dev-no-auth-tenant", "dev"],
        &[("AGENTOS_PROFILE", "production")],
    );
    assert!(!ok && err.contains("--dev-no-auth-tenant"), "{err}");
    let (ok, err) = run(
        &[
            "worker",
            "tool",
            "--nats-url",
            "nats://nats.example.com:4222",
        ],
        &[("AGENTOS_PROFILE", "production")],
    );
    assert!(
        !ok && err.contains("plain-text NATS to nats://nats.example.com:4222"),
        "{err}"
    );
}

#[test]
fn an_unknown_profile_is_refused_by_name() {
    let (ok, err) = run(&["--profile", "staging", "edge"], &[]);
    assert!(!ok && err.contains("staging"), "{err}");
}
