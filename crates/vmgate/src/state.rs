//! The state directory: keys, certificates and configurations that the demo
//! writes and that client commands (`ticket`, `console`) read.
//!
//! ```text
//! public-ca.pem               trust anchor of the public HTTPS listener (give it to clients)
//! gateway-public.{pem,key}    the gateway's HTTPS certificate
//! internal-ca.pem             trust anchor of the gateway–agent link (mutual TLS)
//! agent.{pem,key}             the agent's QUIC certificate
//! gateway-internal.{pem,key}  the gateway's client certificate towards agents
//! ticket.key / ticket.pub     ticket signing key (0600) / verifying key
//! gateway.json                {"url": …}: where clients reach the gateway
//! agent.toml, gateway.toml    the configurations the demo runs with
//! logs/                       serial console logs
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vmgate_tls::pki::Ca;

/// The state directory from `--state-dir`, `VMGATE_STATE_DIR`, or `./.vmgate`.
pub fn resolve(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from(".vmgate"))
}

/// What clients need to find the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Public base URL, e.g. `https://127.0.0.1:8443`.
    pub url: String,
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct State {
    pub dir: PathBuf,
}

impl State {
    pub fn new(dir: impl Into<PathBuf>) -> State {
        State { dir: dir.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn public_ca(&self) -> PathBuf {
        self.path("public-ca.pem")
    }

    pub fn signing_key(&self) -> PathBuf {
        self.path("ticket.key")
    }

    pub fn logs(&self) -> PathBuf {
        self.path("logs")
    }

    /// Creates keys and certificates. The ticket signing key is kept if it
    /// exists (tickets minted earlier stay valid); certificates are made anew.
    pub fn init(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating state directory {}", self.dir.display()))?;
        let public = Ca::new("vmgate demo public CA")?;
        public.write_cert(&self.public_ca())?;
        public.issue_to(
            &self.dir,
            "gateway-public",
            &["localhost", "127.0.0.1", "::1"],
        )?;
        let internal = Ca::new("vmgate demo internal CA")?;
        internal.write_cert(&self.path("internal-ca.pem"))?;
        internal.issue_to(&self.dir, "agent", &["localhost", "127.0.0.1"])?;
        internal.issue_to(&self.dir, "gateway-internal", &["vmgate-gateway"])?;
        if !self.signing_key().exists() {
            // A verifying key without its signing key is stale.
            let _ = std::fs::remove_file(self.path("ticket.pub"));
            let key = vmgate_ticket::SigningKey::generate();
            key.save(self.signing_key())?;
            key.verifying_key().save(self.path("ticket.pub"))?;
        }
        std::fs::create_dir_all(self.logs())?;
        Ok(())
    }

    /// An agent configuration for `guests`, listening on `listen`.
    pub fn agent_config(
        &self,
        listen: std::net::SocketAddr,
        guests: Vec<vmgate_agent::config::GuestConfig>,
    ) -> vmgate_agent::AgentConfig {
        vmgate_agent::AgentConfig {
            node: "demo-node".into(),
            listen,
            log_dir: self.logs(),
            scrollback_bytes: 1 << 20,
            backend: Default::default(),
            tls: vmgate_agent::config::AgentTls {
                cert: self.path("agent.pem"),
                key: self.path("agent.key"),
                gateway_ca: self.path("internal-ca.pem"),
            },
            guests,
            libvirt: Default::default(),
        }
    }

    /// A gateway configuration reaching the agents at `agents`.
    pub fn gateway_config(
        &self,
        listen: std::net::SocketAddr,
        agents: &[std::net::SocketAddr],
    ) -> vmgate_gateway::GatewayConfig {
        vmgate_gateway::GatewayConfig {
            listen,
            tls: vmgate_gateway::config::PublicTls {
                cert: self.path("gateway-public.pem"),
                key: self.path("gateway-public.key"),
            },
            ticket_public_key: self.path("ticket.pub"),
            agents: vmgate_gateway::config::AgentsTls {
                ca: self.path("internal-ca.pem"),
                cert: self.path("gateway-internal.pem"),
                key: self.path("gateway-internal.key"),
            },
            agent_list: agents
                .iter()
                .map(|a| vmgate_gateway::config::AgentEntry {
                    addr: *a,
                    server_name: "localhost".into(),
                })
                .collect(),
        }
    }

    pub fn write_gateway_info(&self, info: &GatewayInfo) -> Result<()> {
        std::fs::write(self.path("gateway.json"), serde_json::to_vec_pretty(info)?)?;
        Ok(())
    }

    pub fn gateway_info(&self) -> Result<GatewayInfo> {
        let p = self.path("gateway.json");
        let text = std::fs::read(&p).with_context(|| {
            format!(
                "no gateway known in {} (start `vmgate demo` first, or pass --url)",
                self.dir.display()
            )
        })?;
        Ok(serde_json::from_slice(&text)?)
    }
}

/// Writes `cfg` as TOML at `path` (for operators to read and reuse).
pub fn write_toml<T: Serialize>(path: &Path, cfg: &T) -> Result<()> {
    std::fs::write(path, toml::to_string_pretty(cfg)?)
        .with_context(|| format!("writing {}", path.display()))
}
