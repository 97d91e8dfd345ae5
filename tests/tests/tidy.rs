//! Subjects and KV keys are built in `agentos-bus` only, from validated ids: no other crate
//! spells one out. This test fails when a subject or key literal (or a hand-formatted key)
//! appears in the edge, the workers or the CLI.

use std::path::{Path, PathBuf};

/// Text that only a subject or key literal contains.
const FORBIDDEN: &[(&str, &str)] = &[
    ("\"agentos.", "a subject literal (use agentos_bus::subject)"),
    ("\"$KV", "a KV subject (use agentos_bus::key / Kv)"),
    ("\"$JS", "a JetStream API subject (use agentos_bus)"),
    (
        "\"$SRV",
        "a service discovery subject (use agentos_bus::subject)",
    ),
    ("\"_INBOX", "an inbox subject (use agentos_bus)"),
    (
        "subject::PREFIX",
        "a subject built by hand (use agentos_bus::subject)",
    ),
    (
        "format!(\"{}.{}\"",
        "a key or subject built by hand (use agentos_bus::key)",
    ),
    (
        "format!(\"{tenant}.",
        "a key or subject built by hand (use agentos_bus::key)",
    ),
];

/// Literals that merely look like subjects.
const ALLOWED: &[&str] = &["\"agentos.toml", "\"agentos.example.toml"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_subject_or_key_is_spelled_outside_the_bus_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["edge", "workers", "cli"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        // Unit tests may spell what they check; they sit at the end of a file.
        let code_part = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code_part.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            let mut code = line.to_owned();
            for allowed in ALLOWED {
                code = code.replace(allowed, "");
            }
            for (needle, what) in FORBIDDEN {
                if code.contains(needle) {
                    offences.push(format!(
                        "{}:{}: {what}: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "subjects and keys belong in agentos-bus:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_tidy_check_sees_an_offence() {
    let line = r#"let k = format!("{}.{}", tenant, run); bus.call("agentos.tool.x".into());"#;
    let hits: Vec<_> = FORBIDDEN.iter().filter(|(n, _)| line.contains(n)).collect();
    assert_eq!(hits.len(), 2);
}
