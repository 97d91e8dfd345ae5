//! The operator CLI end to end: `up --detach`, `status`, `run create --follow`, supervision after
//! `kill -9`, `down`, data kept across restarts, `nuke --yes`; failures with one clear line;
//! the configuration's precedence and secret files; and snapshots of the human output (variable
//! parts redacted).

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

/// `agentos <args>` in `dir` (where an `agentos.toml` may be), with these variables set.
fn agentos_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(agentos_bin().expect("binary"));
    cmd.current_dir(dir).args(args);
    for var in [
        "AGENTOS_NATS_URL",
        "AGENTOS_JWT_SECRET",
        "AGENTOS_HOME",
        "AGENTOS_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().expect("run agentos")
}

/// The `validate` line of a check, e.g. `FAIL nats …`.
fn check_line(out: &Output, check: &str) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.get(5..).is_some_and(|l| l.starts_with(check)))
        .unwrap_or_else(|| panic!("no {check} line: {}", text(out)))
        .to_owned()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn flags_win_over_the_environment_and_the_environment_over_the_file() {
    let dir = tempfile::tempdir().expect("temp");
    // Closed ports: `validate` names the NATS it tried.
    let url = |n: u16| format!("nats://127.0.0.1:{n}");
    let (file, env, flag) = (url(free_port()), url(free_port()), url(free_port()));
    std::fs::write(
        dir.path().join("agentos.toml"),
        format!("[nats]\nurl = \"{file}\"\n"),
    )
    .expect("write");
    let home = dir.path().join("home");
    let home = home.to_str().expect("utf-8");
    for (args, vars, want) in [
        (vec!["validate", "--home", home], vec![], &file),
        (
            vec!["validate", "--home", home],
            vec![("AGENTOS_NATS_URL", env.as_str())],
            &env,
        ),
        (
            vec!["validate", "--home", home, "--nats-url", &flag],
            vec![("AGENTOS_NATS_URL", env.as_str())],
            &flag,
        ),
    ] {
        let out = agentos_in(dir.path(), &args, &vars);
        let nats = check_line(&out, "nats");
        assert!(
            nats.starts_with("FAIL") && nats.contains(want.as_str()),
            "{vars:?} {args:?}: {nats}"
        );
    }
}

#[test]
fn secret_files_others_can_read_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("temp");
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, "s".repeat(40)).expect("write");
    chmod(&secret, 0o644);
    let fix = format!(
        "{} is readable by others (mode 0644): chmod 600 {}",
        secret.display(),
        secret.display()
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let nats = format!("nats://127.0.0.1:{}", free_port());

    // The edge, from a flag and from agentos.toml: refused before anything starts.
    let secret_arg = secret.to_str().expect("utf-8");
    let out = agentos_in(
        dir.path(),
        &[
            "edge",
            "--listen",
            &listen,
            "--nats-url",
            &nats,
            "--jwt-secret-file",
            secret_arg,
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&fix),
        "{}",
        text(&out)
    );
    std::fs::write(
        dir.path().join("agentos.toml"),
        format!("[edge]\njwt-secret-file = \"{}\"\n", secret.display()),
    )
    .expect("write");
    let out = agentos_in(
        dir.path(),
        &["edge", "--listen", &listen, "--nats-url", &nats],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jwt-secret-file") && err.contains(&fix),
        "{err}"
    );

    // validate: the file's jwt-secret-file, a route's api-key-file, NATS creds.
    let home = dir.path().join("home");
    let home = home.to_str().expect("utf-8");
    let out = agentos_in(
        dir.path(),
        &["validate", "--home", home, "--nats-url", &nats],
        &[],
    );
    let auth = check_line(&out, "auth");
    assert!(auth.starts_with("FAIL") && auth.contains(&fix), "{auth}");
    chmod(&secret, 0o600);
    let out = agentos_in(
        dir.path(),
        &["validate", "--home", home, "--nats-url", &nats],
        &[],
    );
    assert!(check_line(&out, "auth").starts_with("ok"), "{}", text(&out));

    let key = dir.path().join("api-key");
    std::fs::write(&key, "sk-test").expect("write");
    chmod(&key, 0o640);
    let creds = dir.path().join("agentos.creds");
    std::fs::write(&creds, "creds").expect("write");
    chmod(&creds, 0o604);
    std::fs::write(
        dir.path().join("agentos.toml"),
        format!(
            "[nats]\nurl = \"{nats}\"\ncreds = \"{}\"\n[model.routes.gpt]\nbackend = \"openai\"\nbase-url = \"http://127.0.0.1:9/v1\"\napi-key-file = \"{}\"\n",
            creds.display(),
            key.display()
        ),
    )
    .expect("write");
    let out = agentos_in(dir.path(), &["validate", "--home", home], &[]);
    assert!(!out.status.success());
    let models = check_line(&out, "models");
    assert!(
        models.starts_with("FAIL")
            && models.contains(&format!("(mode 0640): chmod 600 {}", key.display())),
        "{models}"
    );
    let files = check_line(&out, "files");
    assert!(
        files.starts_with("FAIL")
            && files.contains(&format!("(mode 0604): chmod 600 {}", creds.display())),
        "{files}"
    );
    // A worker refuses the creds file before connecting.
    let out = agentos_in(dir.path(), &["worker", "tool"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out)
    );
}
