//! The node agent: one per hypervisor node.
//!
//! It owns the node-local endpoints of each guest (QEMU's serial chardevs,
//! VNC, virtio-serial ports) and serves them, as console sessions only, to
//! gateways that connect over QUIC with mutual TLS. It exposes no
//! host-management verb: a gateway can open a console, nothing else.
//!
//! * [`config`]: the TOML configuration;
//! * [`console`]: serial consoles: persistent connection, scrollback, log,
//!   fan-out, one keyboard;
//! * [`backend`]: where guests come from (`qemu`: declared in the config;
//!   `libvirt`: a libvirt daemon's running domains), and the one dispatch
//!   from a channel's kind to how it opens;
//! * [`duplex`]: the byte stream to a guest endpoint both of them hand out;
//! * [`audio`]: the `audio` channel, QEMU's VNC audio as framed PCM;
//! * [`server`]: the QUIC listener, the TCP + TLS listener on the same
//!   port number, and the per-stream dispatch;
//! * [`qmp`]: a small QMP client (commands, fd passing for VNC sessions).
//!
//! `unsafe` is denied everywhere but in `backend::libvirt::ffi`, which calls
//! libvirt functions the `virt` crate does not wrap (event callbacks, a
//! returned descriptor) and says why.
#![deny(unsafe_code)]

pub mod audio;
pub mod backend;
pub mod check;
pub mod config;
pub mod console;
pub mod duplex;
pub mod gateway_stream;
pub mod qmp;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use vmgate_tls::Identity;

pub use config::AgentConfig;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS material or the QUIC socket.
    #[error(transparent)]
    Tls(#[from] vmgate_tls::TlsError),
    /// The TCP listener (on the QUIC listener's port number).
    #[error("TCP listener on {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The console log directory could not be created.
    #[error(transparent)]
    LogDir(#[from] console::log::LogError),
    /// `media_group` names no group.
    #[error("{0}")]
    MediaGroup(String),
}

/// Attempts at a free port number for both listeners when `listen` asks
/// for any port (0): the QUIC socket picks one, and TCP may hold it.
const PORT_ATTEMPTS: usize = 8;

/// An agent bound to its QUIC port and the same TCP port, ready to run.
pub struct Agent {
    /// Accepts each gateway with the transport of its path.
    endpoint: vmgate_tls::LinkServer,
    /// Gateways' per-session TCP + TLS connections (`tcp_sessions`).
    tcp: Option<server::TcpLink>,
    config: AgentConfig,
    logs: console::ConsoleLogs,
}

impl Agent {
    /// Binds the QUIC listener (port 0 picks a free port).
    pub fn bind(config: AgentConfig) -> Result<Agent, AgentError> {
        let logs = console::ConsoleLogs::new(&config.log_dir, config.console_log)?;
        backend::media::MediaDir::from_config(&config).map_err(AgentError::MediaGroup)?;
        let id = Identity {
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
        };
        let tls = |alpn: &[u8]| {
            vmgate_tls::agent_server_config(
                &id,
                &config.tls.gateway_ca,
                &config.tls.allowed_gateways,
                &[alpn],
            )
        };
        let quic = tls(vmgate_wire::ALPN)?;
        if !config.tcp_sessions {
            let endpoint = vmgate_tls::link_server(config.listen, quic)?;
            return Ok(Agent {
                endpoint,
                tcp: None,
                config,
                logs,
            });
        }
        let tcp = tls(vmgate_wire::TCP_ALPN)?;
        let open_files = vmgate_tls::raise_open_files();
        let mut attempt = 0;
        let (endpoint, tcp) = loop {
            attempt += 1;
            let endpoint = vmgate_tls::link_server(config.listen, quic.clone())?;
            let addr = endpoint
                .endpoint
                .local_addr()
                .map_err(vmgate_tls::TlsError::Bind)?;
            match server::TcpLink::bind(addr, tcp.clone(), open_files) {
                Ok(t) => break (endpoint, Some(t)),
                Err(e)
                    if config.listen.port() == 0
                        && e.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < PORT_ATTEMPTS => {}
                Err(source) => return Err(AgentError::Tcp { addr, source }),
            }
        };
        Ok(Agent {
            endpoint,
            tcp,
            config,
            logs,
        })
    }

    /// The serial console logs, to reopen them on SIGHUP
    /// ([`console::ConsoleLogs::reopen`]).
    pub fn console_logs(&self) -> console::ConsoleLogs {
        self.logs.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .endpoint
            .local_addr()
            .expect("bound endpoint has an address")
    }

    /// Serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let drain = std::time::Duration::from_secs(self.config.drain_secs);
        match self.config.backend {
            config::BackendKind::Qemu => {
                tracing::info!(node = %self.config.node, addr = %self.local_addr(), backend = "qemu", guests = self.config.guests.len(), "agent listening (QUIC)");
                let backend =
                    backend::qemu::QemuBackend::start(&self.config, &self.logs, shutdown.clone());
                server::serve(self.endpoint, self.tcp, Arc::new(backend), shutdown, drain).await;
            }
            config::BackendKind::Libvirt => {
                tracing::info!(node = %self.config.node, addr = %self.local_addr(), backend = "libvirt", uri = %self.config.libvirt.uri, "agent listening (QUIC)");
                let backend = backend::libvirt::LibvirtBackend::start(
                    &self.config,
                    &self.logs,
                    shutdown.clone(),
                );
                server::serve(self.endpoint, self.tcp, Arc::new(backend), shutdown, drain).await;
            }
        }
    }
}
