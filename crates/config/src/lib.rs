//! Loading a component's configuration file (the agent's, the gateway's,
//! `vmgate admin`'s): read it, parse it as TOML into the component's typed
//! configuration, and say what is wrong with one error type, so every
//! component refuses a bad file in the same words.
//!
//! Validating the values is each component's own business; it reports what
//! it finds as [`ConfigError::Invalid`].
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One thing `--check` found wrong, under the configuration key that causes
/// it (`tls.cert`, `admin.token_file`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Checks a file that holds a secret (a private key, a token): it must be
/// a regular file, not a symlink's target the service did not choose, and
/// readable by nobody but its owner and group (no `o+r`), writable by its
/// owner only.
pub fn check_secret_file(key: &str, path: &Path) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => vec![Problem::new(key, format!("{}: {e}", path.display()))],
        Ok(m) if !m.is_file() => vec![Problem::new(
            key,
            format!("{} is not a regular file", path.display()),
        )],
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o027 != 0 {
                vec![Problem::new(
                    key,
                    format!(
                        "{} is mode {mode:03o}: a secret must not be readable by others nor \
                         writable by its group (chmod 0640 or 0600)",
                        path.display()
                    ),
                )]
            } else {
                Vec::new()
            }
        }
    }
}

/// Checks that `path` is a directory this process can write into.
pub fn check_writable_dir(key: &str, path: &Path) -> Vec<Problem> {
    match std::fs::metadata(path) {
        Err(e) => vec![Problem::new(key, format!("{}: {e}", path.display()))],
        Ok(m) if !m.is_dir() => vec![Problem::new(
            key,
            format!("{} is not a directory", path.display()),
        )],
        Ok(_) => match tempfile_probe(path) {
            Ok(()) => Vec::new(),
            Err(e) => vec![Problem::new(
                key,
                format!("{} is not writable: {e}", path.display()),
            )],
        },
    }
}

fn tempfile_probe(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".vmgate-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Reads `path` and parses it as `T`.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Small {
        name: String,
    }

    #[test]
    fn secrets_readable_by_others_and_missing_directories_are_problems() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "x").unwrap();
        for (mode, ok) in [(0o600, true), (0o640, true), (0o644, false), (0o660, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let p = check_secret_file("tls.key", &key);
            assert_eq!(p.is_empty(), ok, "{mode:o}: {p:?}");
            if let Some(p) = p.first() {
                assert_eq!(p.key, "tls.key");
                assert!(p.to_string().contains(&format!("mode {mode:03o}")), "{p}");
            }
        }
        let missing = dir.path().join("nope");
        assert_eq!(check_secret_file("k", &missing).len(), 1);
        assert!(check_writable_dir("log_dir", dir.path()).is_empty());
        assert_eq!(check_writable_dir("log_dir", &missing)[0].key, "log_dir");
        assert_eq!(check_writable_dir("log_dir", &key).len(), 1);
    }

    #[test]
    fn each_failure_names_the_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = read_toml::<Small>(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "name = \"x\"\nbogus = 1\n").unwrap();
        let e = read_toml::<Small>(&bad).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        let text = e.to_string();
        assert!(text.starts_with(&format!("{}: ", bad.display())), "{text}");
        assert!(text.contains("bogus"), "{text}");

        let good = dir.path().join("good.toml");
        std::fs::write(&good, "name = \"x\"\n").unwrap();
        assert_eq!(read_toml::<Small>(&good).unwrap().name, "x");

        assert_eq!(
            ConfigError::Invalid("port 0".into()).to_string(),
            "invalid configuration: port 0"
        );
    }
}
