//! The state directory: keys, certificates and configurations that the demo
//! writes and that client commands (`ticket`, `console`) read.
//!
//! ```text
//! public-ca.pem               trust anchor of the public HTTPS listener (give it to clients)
//! gateway-public.{pem,key}    the gateway's HTTPS certificate (serverAuth)
//! agent-ca.pem                the agent CA: signs agents; gateways' `[agents] ca`
//! agent.{pem,key}             the agent's QUIC certificate (serverAuth only)
//! gateway-client-ca.pem       the gateway-client CA: agents' `gateway_ca`
//! gateway-client.{pem,key}    the gateway's client certificate towards agents (clientAuth only)
//! ticket.key / ticket.pub     ticket signing key (0600) / verifying key
//! gateway.json                {"url": …}: where clients reach the gateway
//! agent.toml, gateway.toml    the configurations the demo runs with
//! logs/                       serial console logs
//! admin-ca.pem                trust anchor of administrators' client certificates (init_admin)
//! admin-server-ca.pem         trust anchor of the admin listeners' certificate
//! admin-server.{pem,key}      the admin listeners' certificate
//! admin-client.{pem,key}      an administrator's client certificate
//! admin.token                 an administrator's bearer token (0600)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use vmgate_tls::pki::{Ca, Purpose};

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

    /// Creates keys and certificates: three CAs (public, agent,
    /// gateway-client) and a one-purpose leaf from each. The ticket signing
    /// key is kept if it exists (tickets minted earlier stay valid);
    /// certificates are made anew.
    pub fn init(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating state directory {}", self.dir.display()))?;
        let public = Ca::new("vmgate demo public CA")?;
        public.write_cert(&self.public_ca())?;
        public.issue_to(
            &self.dir,
            "gateway-public",
            &["localhost", "127.0.0.1", "::1"],
            Purpose::Server,
        )?;
        // A state directory from before the three CAs: its single-CA files
        // would only confuse whoever copies them.
        for old in [
            "internal-ca.pem",
            "gateway-internal.pem",
            "gateway-internal.key",
        ] {
            let _ = std::fs::remove_file(self.path(old));
        }
        vmgate_tls::pki::write_link(&self.dir, &["localhost", "127.0.0.1"], &["vmgate-gateway"])?;
        if !self.signing_key().exists() {
            // A verifying key without its signing key is stale.
            let _ = std::fs::remove_file(self.path("ticket.pub"));
            vmgate_minter::generate_key_pair(&self.signing_key(), &self.path("ticket.pub"))?;
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
            drain_secs: 5,
            console_log: Default::default(),
            backend: Default::default(),
            tls: vmgate_agent::config::AgentTls {
                cert: self.path("agent.pem"),
                key: self.path("agent.key"),
                gateway_ca: self.path("gateway-client-ca.pem"),
                allowed_gateways: Vec::new(),
            },
            guests,
            libvirt: Default::default(),
            media_dir: None,
            media_group: None,
            tcp_sessions: false,
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
            extra_ticket_public_keys: Vec::new(),
            agents: vmgate_gateway::config::AgentsTls {
                ca: self.path("agent-ca.pem"),
                cert: self.path("gateway-client.pem"),
                key: self.path("gateway-client.key"),
                session_transport: Default::default(),
            },
            agent_list: agents
                .iter()
                .map(|a| vmgate_gateway::config::AgentEntry {
                    addr: *a,
                    server_name: "localhost".into(),
                    guests: None,
                })
                .collect(),
            limits: Default::default(),
            audit: None,
            admin: None,
            embed: Default::default(),
            // The embedded store lives with the rest of the state.
            store: vmgate_gateway::config::StoreConfig {
                path: Some(self.path("gateway.redb")),
                ..Default::default()
            },
        }
    }

    /// Creates the administrators' CA, a client certificate, the admin
    /// listeners' certificate and a bearer token, for the gateway's admin
    /// listener and `vmgate admin`. Call after [`State::init`].
    pub fn init_admin(&self) -> Result<()> {
        let admins = Ca::new("vmgate demo admin CA")?;
        admins.write_cert(&self.path("admin-ca.pem"))?;
        admins.issue_to(
            &self.dir,
            "admin-client",
            &["vmgate-admin"],
            Purpose::Client,
        )?;
        // The admin listeners' server certificate has its own CA: admin
        // clients trust only it, and public clients never do.
        let servers = Ca::new("vmgate demo admin server CA")?;
        servers.write_cert(&self.path("admin-server-ca.pem"))?;
        servers.issue_to(
            &self.dir,
            "admin-server",
            &["localhost", "127.0.0.1", "::1"],
            Purpose::Server,
        )?;
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).expect("the operating system's random generator");
        let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(self.path("admin.token"))?;
            writeln!(f, "{token}")?;
        }
        Ok(())
    }

    /// Credentials of an administrator using the bearer token.
    pub fn admin_token_creds(&self) -> Result<crate::admin_client::AdminCreds> {
        crate::admin_client::AdminCreds {
            ca: self.path("admin-server-ca.pem"),
            ..Default::default()
        }
        .with_token_file(&self.path("admin.token"))
    }

    /// Credentials of an administrator using the client certificate.
    pub fn admin_cert_creds(&self) -> crate::admin_client::AdminCreds {
        crate::admin_client::AdminCreds {
            ca: self.path("admin-server-ca.pem"),
            cert: Some(vmgate_tls::Identity {
                cert: self.path("admin-client.pem"),
                key: self.path("admin-client.key"),
            }),
            token: None,
        }
    }

    /// The gateway's `[admin]` section: listening on `listen`, accepting the
    /// admin CA's certificates and the token.
    pub fn gateway_admin_config(
        &self,
        listen: std::net::SocketAddr,
    ) -> vmgate_gateway::config::AdminListener {
        vmgate_gateway::config::AdminListener {
            listen,
            cert: self.path("admin-server.pem"),
            key: self.path("admin-server.key"),
            client_ca: Some(self.path("admin-ca.pem")),
            token_file: Some(self.path("admin.token")),
            allowed_origins: Vec::new(),
            max_connections: 64,
            max_connections_per_address: 16,
        }
    }

    /// `vmgate admin`'s configuration: minting for the gateway at
    /// `public_url`, listening on `listen`.
    pub fn minter_config(
        &self,
        listen: std::net::SocketAddr,
        public_url: &str,
    ) -> vmgate_minter::MinterConfig {
        vmgate_minter::MinterConfig {
            listen,
            cert: self.path("admin-server.pem"),
            key: self.path("admin-server.key"),
            client_ca: Some(self.path("admin-ca.pem")),
            token_file: Some(self.path("admin.token")),
            ticket_signing_key: self.signing_key(),
            public_url: public_url.to_string(),
            max_ttl_secs: 300,
            max_session_secs: 24 * 3600,
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
