//! The gateway: the only part users reach, and it runs off the hypervisor
//! nodes.
//!
//! It terminates client TLS, redeems a ticket (it holds only the verifying
//! key and cannot mint), finds the agent hosting the guest, opens one QUIC
//! stream to that agent per console and relays. It holds no host-management
//! credential.
//!
//! * [`config`]: the TOML configuration;
//! * [`agents`]: QUIC connections to agents and their inventory streams;
//! * [`routing`]: the routing table merged from every agent's inventory
//!   (sans-IO: running wins over down, allow-lists, conflicts);
//! * [`tickets`]: ticket redemption (signature, expiry, scope, single use);
//! * [`store`]: used tickets, throttling, session counts and page sessions:
//!   an embedded database (one gateway, across restarts) or Redis (a
//!   fleet of gateways);
//! * [`public`]: the HTTPS listener, console WebSockets, web page;
//! * [`ws`]: a client WebSocket as a side of the relay;
//! * [`assets`]: the embedded web console;
//! * [`pages`]: web console sessions (one ticket, the page's streams);
//! * [`session`]: the one session pipeline every credential's grant goes
//!   through (admission, agent stream, per-kind filter, relay, following,
//!   audit, metrics);
//! * [`rfb_filter`]: RFB awareness (read-only viewers, malformed RFB);
//! * [`media`]: media awareness (read-only sessions only ask what is in a
//!   drive, malformed media streams, the bytes a guest read);
//! * [`admin`]: the administrators' listener (sessions, inventory, metrics,
//!   recovery consoles). Minting is not in this crate: `vmgate admin`
//!   (crate `vmgate-minter`) holds the signing key, and this crate cannot
//!   even name one (`vmgate-ticket`'s `mint` feature is off here);
//! * [`conns`]: connections without a session, capped per address and in
//!   all, closed when idle; the open-files limit they fit in;
//! * [`limits`], [`sessions`], [`audit`], [`metrics`]: abuse and session
//!   limits, the live-session registry, the audit log, Prometheus counters;
//! * [`untrusted`]: untrusted text in log lines, escaped and bounded.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agents;
pub mod assets;
pub mod audit;
pub mod check;
pub mod config;
pub mod conns;
pub mod follow;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod public;
pub mod rfb_filter;
pub mod routing;
pub mod session;
pub mod sessions;
pub mod splice;
pub mod store;
pub mod tickets;
pub mod untrusted;
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
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The admin credentials (token file) are unusable.
    #[error("admin credentials: {0}")]
    AdminAuth(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The audit log could not be opened.
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What every session handler shares.
pub struct Shared {
    pub pool: Arc<agents::AgentPool>,
    /// Which sites may frame the console pages.
    pub embed: config::Embed,
    /// The public listener's certificate, replaced on SIGHUP.
    pub public_cert: Arc<vmgate_tls::ReloadableCert>,
    pub tickets: tickets::TicketCheck,
    /// Used tickets, throttling, session counts, page sessions.
    pub store: Arc<store::Store>,
    /// This gateway's name in its fleet.
    pub name: String,
    pub shutdown: CancellationToken,
    /// The limits in force, replaced on SIGHUP.
    pub limits: Arc<config::LiveLimits>,
    pub metrics: Arc<metrics::Metrics>,
    /// Live sessions: limits, admin listing and ending, audit.
    pub sessions: Arc<sessions::Registry>,
    /// Every running session, so shutdown can wait (boundedly) for each to
    /// tell its client why it ends.
    pub drain: tokio_util::task::TaskTracker,
}

impl Shared {
    /// What the request-level limit layers need.
    pub fn request_limits(&self) -> limits::RequestLimits {
        limits::RequestLimits {
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Whether `peer` may have a ticket checked: refused (4429) after
    /// `failed_tickets_per_address` failures in the window, counted in the
    /// whole store (the fleet's, with Redis).
    pub async fn throttled(&self, peer: SocketAddr) -> Result<(), vmgate_wire::Close> {
        let l = self.limits.get();
        let window = std::time::Duration::from_secs(l.throttle_window_secs);
        match self
            .store
            .throttled(peer.ip(), l.failed_tickets_per_address, window)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                tracing::warn!(%peer, "ticket check throttled");
                self.metrics.refused("throttled");
                Err(vmgate_wire::Close::new(
                    vmgate_wire::CloseCode::TooMany,
                    format!(
                        "too many failed tickets from your address: try again in {}s",
                        wait.as_secs().max(1)
                    ),
                ))
            }
            Err(e) => Err(self.store_failed(&e)),
        }
    }

    /// A ticket from `peer` was refused for `e`: counted in the refusal
    /// metrics, and towards the peer's throttle if it was actually checked
    /// ([`limits::counts_against_throttle`]).
    pub async fn ticket_failed(&self, peer: SocketAddr, e: &vmgate_ticket::TicketError) {
        if limits::counts_against_throttle(e) {
            let l = self.limits.get();
            let window = std::time::Duration::from_secs(l.throttle_window_secs);
            if let Err(e) = self
                .store
                .ticket_failed(peer.ip(), l.failed_tickets_per_address, window)
                .await
            {
                tracing::warn!(%peer, error = %e, "could not count a failed ticket in the store");
            }
        }
        self.metrics.refused(e.code());
    }

    /// A session refused because the store did not answer: logged,
    /// counted (`{reason="store_unavailable"}`), and what the client is told.
    pub fn store_failed(&self, e: &store::StoreError) -> vmgate_wire::Close {
        tracing::warn!(error = %e, "session refused: the store does not answer");
        self.metrics.refused("store_unavailable");
        store::unavailable()
    }
}

/// A gateway bound to its port, agents being connected.
pub struct Gateway {
    listener: TcpListener,
    tls: Arc<vmgate_tls::rustls::ServerConfig>,
    shared: Arc<Shared>,
    admin: Option<admin::AdminServer>,
    /// The public listener's connection caps.
    caps: conns::Caps,
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
        let public_cert = vmgate_tls::ReloadableCert::load(&public)?;
        let tls = vmgate_tls::reloadable_server_config(public_cert.clone(), &[b"h2", b"http/1.1"])?;
        let internal = Identity {
            cert: cfg.agents.cert.clone(),
            key: cfg.agents.key.clone(),
        };
        let quic = vmgate_tls::link_client(vmgate_tls::gateway_client_config(
            &internal,
            &cfg.agents.ca,
            &[vmgate_wire::ALPN],
        )?)?;
        let tcp = match cfg.agents.session_transport {
            config::SessionTransport::Quic => None,
            config::SessionTransport::Tcp => Some(vmgate_tls::TcpLinkClient::new(
                vmgate_tls::gateway_client_config(
                    &internal,
                    &cfg.agents.ca,
                    &[vmgate_wire::TCP_ALPN],
                )?,
            )),
        };
        let keys = cfg.ticket_keys()?;
        let ids: Vec<String> = keys.iter().map(vmgate_ticket::VerifyingKey::id).collect();
        tracing::info!(key_ids = ?ids, "ticket verifying keys loaded");
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| GatewayError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let admin = match &cfg.admin {
            Some(a) => Some(admin::AdminServer::bind(a).await?),
            None => None,
        };
        let audit = match &cfg.audit {
            Some(a) => Some(
                audit::Audit::open(&a.path).map_err(|source| GatewayError::Audit {
                    path: a.path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let open_files = vmgate_tls::raise_open_files();
        let admin_total = admin.as_ref().map_or(0, |a| a.caps().total);
        // Over TCP each session holds a second descriptor, its agent's
        // connection: the public listener gets half the limit.
        let per_session = match cfg.agents.session_transport {
            config::SessionTransport::Quic => 1,
            config::SessionTransport::Tcp => 2,
        };
        let (total, unauthenticated) = conns::fit_to_open_files(
            open_files.unwrap_or(1024) / per_session,
            admin_total,
            cfg.limits.max_unauthenticated_connections,
        );
        let caps = conns::Caps {
            per_address: cfg.limits.max_unauthenticated_per_address,
            unauthenticated,
            total,
        };
        tracing::info!(
            open_files,
            connections = total,
            unauthenticated,
            per_address = caps.per_address,
            admin_connections = admin_total,
            "open-files limit and the public listener's connection caps"
        );
        if unauthenticated < cfg.limits.max_unauthenticated_connections {
            tracing::warn!(configured = cfg.limits.max_unauthenticated_connections, unauthenticated,
                "limits.max_unauthenticated_connections lowered to fit the open-files limit (raise `ulimit -n` / LimitNOFILE=)");
        }
        let limits = Arc::new(config::LiveLimits::new(cfg.limits.clone()));
        let metrics = Arc::new(metrics::Metrics::default());
        let name = cfg.store.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| vmgate_wire::valid_name(h))
                .unwrap_or_else(|| "gateway".into());
            format!("{host}:{}", listener.local_addr().map_or(0, |a| a.port()))
        });
        let store = Arc::new(store::Store::open(&cfg.store, &name, metrics.clone()).await?);
        tracing::info!(store = %store.describe(), gateway = %name, epoch = store.epoch(), "store open");
        let sessions = Arc::new(sessions::Registry::new(
            limits.clone(),
            metrics.clone(),
            audit,
            store.clone(),
            name.clone(),
        ));
        if store.shared() {
            tokio::spawn(sessions::end_when_asked(sessions.clone(), shutdown.clone()));
        }
        metrics.identify(
            &name,
            match &*store {
                store::Store::Embedded(_) => "embedded",
                store::Store::Redis(_) => "redis",
            },
        );
        let pool = agents::AgentPool::start(
            cfg.agent_list.clone(),
            quic,
            tcp,
            metrics.clone(),
            shutdown.clone(),
        );
        Ok(Gateway {
            listener,
            tls: Arc::new(tls),
            shared: Arc::new(Shared {
                pool,
                embed: cfg.embed.clone(),
                public_cert,
                tickets: tickets::TicketCheck::new(
                    keys,
                    cfg.limits.max_ticket_ttl_secs,
                    cfg.limits.ticket_clock_skew_secs,
                    store.clone(),
                ),
                shutdown,
                sessions: sessions.clone(),
                store,
                name,
                limits,
                metrics,
                drain: tokio_util::task::TaskTracker::new(),
            }),
            admin,
            caps,
        })
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// The shared state, for tasks that outlive `run`'s borrow.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
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

    /// Serves until the shutdown token fires, then drains: every session
    /// tells its client why it ends (1001, "the gateway is shutting
    /// down"), and connections get `limits.drain_secs` to finish. Returns
    /// when all of that is done, or when the drain's bound passes.
    pub async fn run(self) {
        tracing::info!(addr = %self.local_addr(), "gateway listening (HTTPS)");
        let shared = self.shared.clone();
        let admin = self.admin.map(|a| tokio::spawn(a.run(shared.clone())));
        let app = public::router(shared.clone());
        let conn = limits::ConnLimits::from(&*shared.limits.get());
        let admission =
            conns::Admission::new(conns::Listener::Public, self.caps, shared.metrics.clone());
        public::serve(
            self.listener,
            self.tls,
            app,
            shared.shutdown.clone(),
            conn,
            admission,
        )
        .await;
        let drained = async {
            if let Some(a) = admin {
                let _ = a.await;
            }
            shared.drain.close();
            shared.drain.wait().await;
        };
        let drain = std::time::Duration::from_secs(shared.limits.get().drain_secs);
        match tokio::time::timeout(drain, drained).await {
            Ok(()) => tracing::info!("gateway drained"),
            Err(_) => tracing::warn!(
                sessions = shared.drain.len(),
                "sessions still ending after the drain period; exiting"
            ),
        }
    }
}
