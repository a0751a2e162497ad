//! `vmgate admin`'s configuration file (TOML), validated once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmgate_config::ConfigError;
use vmgate_gateway::config::AdminAuth;

use crate::mint::{Caps, CAP_LIMIT_SECS};

/// Why `vmgate admin` could not start.
#[derive(Debug, thiserror::Error)]
pub enum MinterError {
    /// The configuration file could not be read, parsed, or has a value
    /// out of range (the same words as the agent's and the gateway's).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ticket signing key could not be loaded.
    #[error("ticket signing key: {0}")]
    Key(#[from] vmgate_ticket::KeyError),
    /// The listener's TLS material or administrators' credentials.
    #[error(transparent)]
    Listener(#[from] vmgate_gateway::GatewayError),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// `vmgate admin`'s configuration file (TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinterConfig {
    /// TCP address, on the management network.
    pub listen: SocketAddr,
    /// This listener's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of administrators' client certificates (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// File holding the administrators' bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The ticket signing key (PKCS#8 PEM, mode 0600).
    pub ticket_signing_key: PathBuf,
    /// The gateway's public base URL, for the URLs handed out
    /// (`https://console.example.com`).
    pub public_url: String,
    /// Longest time to redeem a ticket that may be asked for, in seconds
    /// (default 300).
    #[serde(default = "default_max_ttl")]
    pub max_ttl_secs: u64,
    /// Longest session length a ticket may carry, in seconds (default
    /// 86400, a day). A request may also ask for none (no limit).
    #[serde(default = "default_max_session")]
    pub max_session_secs: u64,
}

fn default_max_ttl() -> u64 {
    Caps::default().max_ttl_secs
}

fn default_max_session() -> u64 {
    Caps::default().max_session_secs
}

impl MinterConfig {
    pub fn load(path: &Path) -> Result<MinterConfig, ConfigError> {
        let cfg: MinterConfig = vmgate_config::read_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth().validate("vmgate admin")?;
        if !self.public_url.starts_with("https://") || self.public_url.ends_with('/') {
            return Err(ConfigError::Invalid(format!(
                "public_url {:?}: expected https://host[:port] without a trailing slash",
                self.public_url
            )));
        }
        for (name, v) in [
            ("max_ttl_secs", self.max_ttl_secs),
            ("max_session_secs", self.max_session_secs),
        ] {
            if v == 0 || v > CAP_LIMIT_SECS {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be 1 to {CAP_LIMIT_SECS}"
                )));
            }
        }
        Ok(())
    }

    /// The caps this configuration sets.
    pub fn caps(&self) -> Caps {
        Caps {
            max_ttl_secs: self.max_ttl_secs,
            max_session_secs: self.max_session_secs,
        }
    }

    pub(crate) fn auth(&self) -> AdminAuth {
        AdminAuth {
            client_ca: self.client_ca.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MinterConfig {
        toml::from_str(
            r#"
listen = "127.0.0.1:9444"
cert = "a.pem"
key = "a.key"
token_file = "admin.token"
ticket_signing_key = "ticket.key"
public_url = "https://console.example.com"
"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_are_five_minutes_to_redeem_and_a_day_of_session() {
        let c = cfg();
        c.validate().unwrap();
        assert_eq!(c.caps(), Caps::default());
        assert_eq!((c.max_ttl_secs, c.max_session_secs), (300, 86400));
    }

    #[test]
    fn caps_out_of_range_are_refused_naming_the_field() {
        for (ttl, session, field) in [
            (0, 60, "max_ttl_secs"),
            (CAP_LIMIT_SECS + 1, 60, "max_ttl_secs"),
            (60, 0, "max_session_secs"),
            (60, u64::MAX, "max_session_secs"),
        ] {
            let c = MinterConfig {
                max_ttl_secs: ttl,
                max_session_secs: session,
                ..cfg()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn a_minter_needs_credentials_and_an_https_base() {
        let c = MinterConfig {
            token_file: None,
            ..cfg()
        };
        assert!(c.validate().unwrap_err().to_string().contains("token_file"));
        let c = MinterConfig {
            public_url: "http://x".into(),
            ..cfg()
        };
        assert!(c.validate().unwrap_err().to_string().contains("public_url"));
    }
}
