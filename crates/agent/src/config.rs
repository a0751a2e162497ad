//! The agent's configuration file (TOML), validated once at start.

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
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The node agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The node's name, reported to gateways with the inventory.
    pub node: String,
    /// UDP address of the QUIC listener that gateways connect to.
    pub listen: SocketAddr,
    /// Where each serial console's append-only log is written
    /// (`<guest>.<console>.log`).
    pub log_dir: PathBuf,
    /// Bytes of scrollback kept per serial console (default 1 MiB).
    #[serde(default = "default_scrollback")]
    pub scrollback_bytes: usize,
    pub tls: AgentTls,
    /// The guests of the `qemu` backend.
    #[serde(default, rename = "guest")]
    pub guests: Vec<GuestConfig>,
}

/// The agent's QUIC identity and whom it trusts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTls {
    /// The agent's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA that gateway client certificates must chain to (PEM).
    pub gateway_ca: PathBuf,
}

/// One guest of the `qemu` backend, declared by its QEMU sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    pub name: String,
    /// QMP socket (`-qmp unix:PATH,server=on`).
    #[serde(default)]
    pub qmp: Option<PathBuf>,
    /// VNC unix socket (`-vnc unix:PATH`), exposed as channel `vnc`.
    #[serde(default)]
    pub vnc: Option<PathBuf>,
    /// How a `vnc` session reaches QEMU's VNC server: `qmp` hands QEMU one
    /// end of a fresh socketpair per session (QMP `getfd` + `add_client`,
    /// as libvirt's `virDomainOpenGraphicsFD` does), so QEMU needs a VNC
    /// display (`-vnc none` will do) but no listener; `socket` connects to
    /// `vnc`. Default: `socket` when `vnc` is set, else none (no `vnc`
    /// channel). `qmp` needs `qmp`.
    #[serde(default)]
    pub vnc_via: Option<VncVia>,
    /// Serial consoles (`-chardev socket,server=on` behind `-serial`).
    #[serde(default)]
    pub serial: Vec<Endpoint>,
    /// virtio-serial ports (`-chardev socket,server=on` behind a
    /// `virtserialport`). Only ports listed here are exposed.
    #[serde(default)]
    pub channel: Vec<Endpoint>,
}

/// How the agent opens a guest's VNC server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VncVia {
    /// A socketpair per session, given to QEMU with QMP `add_client`.
    Qmp,
    /// A connection to the VNC unix socket.
    Socket,
}

impl GuestConfig {
    /// How this guest's `vnc` channel is opened, if it has one.
    pub fn vnc_via(&self) -> Option<VncVia> {
        match (self.vnc_via, &self.vnc) {
            (Some(v), _) => Some(v),
            (None, Some(_)) => Some(VncVia::Socket),
            (None, None) => None,
        }
    }
}

/// A named unix socket of a guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub path: PathBuf,
}

fn default_scrollback() -> usize {
    1 << 20
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks names and uniqueness, so the rest of the agent can trust them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for g in &self.guests {
            if !vmgate_wire::valid_name(&g.name) {
                return Err(ConfigError::Invalid(format!("bad guest name {:?}", g.name)));
            }
            if !seen.insert(&g.name) {
                return Err(ConfigError::Invalid(format!(
                    "guest {} declared twice",
                    g.name
                )));
            }
            let mut chans = std::collections::HashSet::new();
            match g.vnc_via() {
                Some(VncVia::Qmp) if g.qmp.is_none() => {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: vnc_via = \"qmp\" needs the guest's qmp socket",
                        g.name
                    )))
                }
                Some(VncVia::Socket) if g.vnc.is_none() => {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: vnc_via = \"socket\" needs the guest's vnc socket",
                        g.name
                    )))
                }
                Some(_) => {
                    chans.insert("vnc");
                }
                None => {}
            }
            for e in g.serial.iter().chain(&g.channel) {
                if !vmgate_wire::valid_name(&e.name) {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: bad channel name {:?}",
                        g.name, e.name
                    )));
                }
                if !chans.insert(&e.name) {
                    return Err(ConfigError::Invalid(format!(
                        "guest {}: channel {} declared twice",
                        g.name, e.name
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        node = "node-a"
        listen = "127.0.0.1:7443"
        log_dir = "/tmp"
        [tls]
        cert = "a.pem"
        key = "a.key"
        gateway_ca = "ca.pem"
        [[guest]]
        name = "demo"
        vnc = "/run/vnc.sock"
        serial = [{ name = "serial0", path = "/run/s0.sock" }]
        channel = [{ name = "test.echo", path = "/run/echo.sock" }]
    "#;

    #[test]
    fn parses_and_defaults_scrollback() {
        let cfg: AgentConfig = toml::from_str(GOOD).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.scrollback_bytes, 1 << 20);
        assert_eq!(cfg.guests[0].channel[0].name, "test.echo");
    }

    #[test]
    fn refuses_duplicates_bad_names_and_unknown_fields() {
        let dup = GOOD.replace("\"test.echo\"", "\"serial0\"");
        let cfg: AgentConfig = toml::from_str(&dup).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("twice"));
        let bad = GOOD.replace("\"demo\"", "\"de/mo\"");
        let cfg: AgentConfig = toml::from_str(&bad).unwrap();
        assert!(cfg.validate().is_err());
        assert!(toml::from_str::<AgentConfig>(&format!("{GOOD}\nbogus = 1")).is_err());
    }

    #[test]
    fn vnc_via_defaults_to_the_socket_and_qmp_needs_a_qmp_socket() {
        let cfg: AgentConfig = toml::from_str(GOOD).unwrap();
        assert_eq!(cfg.guests[0].vnc_via(), Some(VncVia::Socket));
        let qmp = GOOD.replace("vnc = \"/run/vnc.sock\"", "vnc_via = \"qmp\"");
        let cfg: AgentConfig = toml::from_str(&qmp).unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("qmp socket"));
        let qmp = qmp.replace("vnc_via", "qmp = \"/run/qmp.sock\"\n        vnc_via");
        let cfg: AgentConfig = toml::from_str(&qmp).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.guests[0].vnc_via(), Some(VncVia::Qmp));
    }
}
