//! The gateway's configuration file (TOML), validated once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

/// The gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// TCP address of the public HTTPS listener (consoles, web page).
    pub listen: SocketAddr,
    /// The public HTTPS certificate and key (PEM).
    pub tls: PublicTls,
    /// The ticket verifying (public) key, PEM. The gateway cannot mint.
    pub ticket_public_key: PathBuf,
    /// How the gateway reaches agents.
    pub agents: AgentsTls,
    /// The agents to connect to.
    #[serde(default, rename = "agent")]
    pub agent_list: Vec<AgentEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The gateway's identity towards agents, and whom it trusts as an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsTls {
    /// CA that agent certificates must chain to.
    pub ca: PathBuf,
    /// The gateway's client certificate (chains to the agents' gateway CA).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// UDP address of the agent's QUIC listener.
    pub addr: SocketAddr,
    /// The name its certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    "localhost".into()
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }
}
