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
