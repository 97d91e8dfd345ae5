//! The operator CLI end to end: `up --detach`, `status`, `run create --follow`, supervision after
//! `kill -9`, `down`, data kept across restarts, `nuke --yes`; failures with one clear line; and
//! snapshots of the human output (variable parts redacted).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use agentos_e2e::{agentos_bin, eventually};

fn free_port() -> u16 {
    agentos_e2e::free_port().expect("free port")
}

fn agentos(home: &Path, args: &[&str]) -> Output {
    Command::new(agentos_bin().expect("binary"))
        .args(args)
        .arg("--home")
        .arg(home)
        .env_remove("AGENTOS_NATS_URL")
        .output()
        .expect("run agentos")
}

/// `agentos run create --agent smoke --input <input> --follow`.
fn follow_run(home: &Path, input: &str) -> Output {
    agentos(
        home,
        &[
            "run", "create", "--agent", "smoke", "--input", input, "--follow",
        ],
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn up_args(nats: u16, edge: u16) -> Vec<String> {
    vec![
        "up".into(),
        "--detach".into(),
        "--nats-port".into(),
        nats.to_string(),
        "--listen".into(),
        format!("127.0.0.1:{edge}"),
    ]
}

fn state(home: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(home.join("state.json")).expect("state.json"))
        .expect("json")
}

fn pids(home: &Path) -> Vec<u32> {
    let s = state(home);
    let mut out = vec![
        s["up_pid"].as_u64().unwrap_or(0) as u32,
        s["nats_pid"].as_u64().unwrap_or(0) as u32,
    ];
    out.extend(
        s["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["pid"].as_u64())
            .map(|p| p as u32),
    );
    out
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Redacts what changes from run to run: paths, ports, ids, timings.
fn snapshot(name: &str, output: &str, home: &Path) {
    let output = output.replace(&home.display().to_string(), "[home]");
    insta::with_settings!({filters => vec![
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[port]"),
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[run-id]"),
        (r"\d+\.\d+s", "[secs]"),
        (r"pid \d+", "pid [pid]"),
        (r"/\S*nats-server \(", "[nats-server] ("),
        (r"up-\d+\.json", "up-[ms].json"),
        (r"[A-Za-z0-9]{22}", "[instance]"),
        (r"(AGENTOS_\w+ +\d+ +)\d+", "$1[bytes]"),
        // Acks are asynchronous: a consumer's counts may lag the run's end by a moment.
        (r"(orchestrators) +\d+ +\d+ +\d+", "$1 [pending] [ack-pending] [redelivered]"),
    ]}, {
        insta::assert_snapshot!(name, output);
    });
}

#[tokio::test]
async fn up_status_follow_restart_down_up_nuke() {
    let dir = tempfile::tempdir().expect("temp");
    let home = dir.path().join("home");
    let (nats, edge) = (free_port(), free_port());
    let args = up_args(nats, edge);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let out = agentos(&home, &args);
    assert!(out.status.success(), "{}", text(&out));
    snapshot("up_detach", &String::from_utf8_lossy(&out.stdout), &home);

    let out = agentos(&home, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    for worker in ["agentos-orchestrator", "agentos-model", "agentos-tool"] {
        assert!(status.contains(worker), "status lacks {worker}:\n{status}");
    }
    snapshot("status", &status, &home);

    let out = agentos(&home, &["validate"]);
    assert!(out.status.success(), "{}", text(&out));
    snapshot("validate", &String::from_utf8_lossy(&out.stdout), &home);

    let out = follow_run(&home, "what is 6*7?");
    assert!(out.status.success(), "{}", text(&out));
    snapshot("run_follow", &String::from_utf8_lossy(&out.stdout), &home);

    // kill -9 of a worker: restarted, and the platform serves runs again.
    let victim = state(&home)["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == "orchestrator-1")
        .and_then(|c| c["pid"].as_u64())
        .expect("pid") as u32;
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill");
    eventually(
        "orchestrator-1 restarted",
        Duration::from_secs(30),
        || async {
            let s = state(&home);
            let pid = s["components"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "orchestrator-1")?["pid"]
                .as_u64()? as u32;
            (pid != victim && alive(pid)).then_some(())
        },
    )
    .await
    .expect("restarted");
    let out = follow_run(&home, "again");
    assert!(out.status.success(), "after restart: {}", text(&out));

    // kill -9 of nats-server itself: restarted on the same port and store; the components
    // reconnect and the platform serves runs again.
    let nats_pid = state(&home)["nats_pid"].as_u64().expect("nats pid") as u32;
    Command::new("kill")
        .args(["-9", &nats_pid.to_string()])
        .status()
        .expect("kill");
    eventually("nats-server restarted", Duration::from_secs(30), || async {
        let pid = state(&home)["nats_pid"].as_u64()? as u32;
        (pid != nats_pid && alive(pid)).then_some(())
    })
    .await
    .expect("restarted");
    let out = eventually(
        "a run after the NATS restart",
        Duration::from_secs(60),
        || async {
            let out = follow_run(&home, "after nats");
            out.status.success().then_some(out)
        },
    )
    .await
    .expect("the platform serves runs after a NATS restart");
    assert!(text(&out).contains("completed"), "{}", text(&out));

    let running = pids(&home);
    let out = agentos(&home, &["down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(running.iter().all(|p| !alive(*p)), "down leaves no process");
    assert_eq!(agentos(&home, &["status"]).status.code(), Some(1));

    let out = agentos(&home, &args);
    assert!(out.status.success(), "second up: {}", text(&out));
    let out = agentos(&home, &["run", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("completed"))
        .count();
    assert!(
        listed >= 5,
        "runs survive down/up (2 smoke + 3 ours):\n{}",
        text(&out)
    );

    // A second up on the same home is refused, and leaves the first one alone.
    let out = agentos(
        &home,
        &[
            "up",
            "--nats-port",
            &free_port().to_string(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("already running"), "{}", text(&out));
    assert!(agentos(&home, &["status"]).status.success());

    let running = pids(&home);
    let out = agentos(&home, &["nuke", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!home.exists(), "nuke deletes the home folder");
    assert!(running.iter().all(|p| !alive(*p)), "nuke leaves no process");
}

#[test]
fn failures_are_one_clear_line_and_leave_nothing_running() {
    let dir = tempfile::tempdir().expect("temp");
    let home = dir.path().join("home");

    // The NATS port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = agentos(
        &home,
        &[
            "up",
            "--nats-port",
            &port,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: port") && err.contains("hint:"),
        "{err}"
    );
    assert!(!home.join("up.pid").exists() && !home.join("state.json").exists());

    // No nats-server to be found.
    let out = Command::new(agentos_bin().expect("binary"))
        .args(["up", "--home"])
        .arg(&home)
        .args(["--nats-port", &free_port().to_string()])
        .env(
            "AGENTOS_NATS_SERVER",
            dir.path().join("no-such-nats-server"),
        )
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nats-server") && err.contains("hint:"),
        "{err}"
    );

    // Nothing to stop, nothing running.
    let out = agentos(&home, &["down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing is running"));

    // A broken agentos.toml: the key and its line, before anything starts.
    std::fs::write(
        dir.path().join("agentos.toml"),
        "[up]\nnats-port = 4222\norchestrator = 2\n",
    )
    .expect("write");
    let out = Command::new(agentos_bin().expect("binary"))
        .current_dir(dir.path())
        .args(["up", "--home"])
        .arg(&home)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agentos.toml") && err.contains("line 3") && err.contains("orchestrator"),
        "{err}"
    );
    let out = Command::new(agentos_bin().expect("binary"))
        .current_dir(dir.path())
        .args(["validate", "--home"])
        .arg(&home)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("FAIL config"))
    );

    // A model route whose API key variable is not set fails validation, naming the variable.
    std::fs::write(
        dir.path().join("agentos.toml"),
        "[model.routes.gpt]\nbackend = \"openai\"\nbase-url = \"http://127.0.0.1:9/v1\"\napi-key-env = \"AGENTOS_TEST_UNSET_KEY\"\n",
    )
    .expect("write");
    let out = Command::new(agentos_bin().expect("binary"))
        .current_dir(dir.path())
        .args(["validate", "--home"])
        .arg(&home)
        .env_remove("AGENTOS_TEST_UNSET_KEY")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL models") && l.contains("AGENTOS_TEST_UNSET_KEY")),
        "{stdout}"
    );

    // nuke without confirmation does nothing.
    std::fs::create_dir_all(&home).expect("home");
    let out = agentos(&home, &["nuke"]);
    assert!(!out.status.success());
    assert!(home.exists());
}
