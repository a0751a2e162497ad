//! The gateway: the only part users reach, and it runs off the hypervisor
//! nodes.
//!
//! It terminates client TLS, redeems a ticket (it holds only the verifying
//! key and cannot mint), finds the agent hosting the guest, opens one QUIC
//! stream to that agent per console and relays. It holds no host-management
//! credential.
//!
//! * [`config`]: the TOML configuration;
//! * [`agents`]: QUIC connections to agents, inventory and routing;
//! * [`tickets`]: ticket redemption (signature, expiry, scope, single use);
//! * [`public`]: the HTTPS listener, console WebSockets, web page;
//! * [`ws`]: a client WebSocket as a side of the relay;
//! * [`assets`]: the embedded web console;
//! * [`pages`]: web console sessions (one ticket, the page's streams);
//! * [`rfb_filter`]: RFB awareness (read-only viewers, malformed RFB).
#![forbid(unsafe_code)]

pub mod agents;
pub mod assets;
pub mod config;
pub mod pages;
pub mod public;
pub mod rfb_filter;
pub mod tickets;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vmgate_tls::Identity;

pub use config::GatewayConfig;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// TLS material or the QUIC socket.
    #[error(transparent)]
    Tls(#[from] vmgate_tls::TlsError),
    /// The ticket verifying key.
    #[error("ticket public key: {0}")]
    TicketKey(#[from] vmgate_ticket::KeyError),
    /// The public listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every session handler shares.
pub struct Shared {
    pub pool: Arc<agents::AgentPool>,
    pub tickets: tickets::TicketCheck,
    /// Web console pages' sessions.
    pub pages: pages::Pages,
    pub shutdown: CancellationToken,
}

/// A gateway bound to its port, agents being connected.
pub struct Gateway {
    listener: TcpListener,
    tls: Arc<vmgate_tls::rustls::ServerConfig>,
    shared: Arc<Shared>,
}

impl Gateway {
    /// Binds the public listener and starts connecting to the agents.
    pub async fn bind(
        cfg: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Result<Gateway, GatewayError> {
        let public = Identity {
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
        };
        let tls = vmgate_tls::server_config(&public, &[b"h2", b"http/1.1"])?;
        let internal = Identity {
            cert: cfg.agents.cert.clone(),
            key: cfg.agents.key.clone(),
        };
        let quic = vmgate_tls::quic_client(vmgate_tls::mtls_client_config(
            &internal,
            &cfg.agents.ca,
            &[vmgate_wire::ALPN],
        )?)?;
        let key = vmgate_ticket::VerifyingKey::load(&cfg.ticket_public_key)?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| GatewayError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let pool = agents::AgentPool::start(cfg.agent_list.clone(), quic, shutdown.clone());
        Ok(Gateway {
            listener,
            tls: Arc::new(tls),
            shared: Arc::new(Shared {
                pool,
                tickets: tickets::TicketCheck::new(key),
                pages: pages::Pages::default(),
                shutdown,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The agent pool, for inventory listings.
    pub fn pool(&self) -> Arc<agents::AgentPool> {
        self.shared.pool.clone()
    }

    /// Serves until the shutdown token fires.
    pub async fn run(self) {
        tracing::info!(addr = %self.local_addr(), "gateway listening (HTTPS)");
        let app = public::router(self.shared.clone());
        public::serve(self.listener, self.tls, app, self.shared.shutdown.clone()).await;
    }
}
