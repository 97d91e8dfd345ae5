//! Secret files (the JWT secret, tokens, API keys, NATS creds): written readable by their owner
//! only, from creation; read only when no one else can read or change them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Refuses a file that group or others may read or write, naming the fix.
pub fn check(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            let how = if mode & 0o044 != 0 {
                "readable"
            } else {
                "writable"
            };
            bail!(
                "{} is {how} by others (mode {mode:04o}): chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// The file's content, trimmed, after [`check`].
pub fn read(path: &Path) -> Result<String> {
    check(path)?;
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_owned())
}

/// Writes `contents` to `path` (replacing it) through a temp file created with mode 0600, so
/// the secret is never readable by others, not even for a moment, and an older, wider mode of
/// `path` does not survive.
pub fn write(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("secret-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn written_secrets_are_0600_even_over_a_wider_file() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("token");
        std::fs::write(&path, "old").expect("write");
        chmod(&path, 0o644);
        write(&path, b"new\n").expect("secret written");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read(&path).expect("read"), "new");
    }

    #[test]
    fn secrets_others_can_read_or_write_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("jwt-secret");
        std::fs::write(&path, "s").expect("write");
        for (m, how) in [
            (0o644, "readable"),
            (0o640, "readable"),
            (0o620, "writable"),
        ] {
            chmod(&path, m);
            let err = read(&path).expect_err("refused").to_string();
            assert_eq!(
                err,
                format!(
                    "{} is {how} by others (mode {m:04o}): chmod 600 {}",
                    path.display(),
                    path.display()
                )
            );
        }
        for m in [0o600, 0o400] {
            chmod(&path, m);
            assert_eq!(read(&path).expect("accepted"), "s");
        }
    }
}
