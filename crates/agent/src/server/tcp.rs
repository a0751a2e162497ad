//! The agent's TCP + TLS listener (`tcp_sessions = true`), on the QUIC
//! listener's port number: one connection per console session from
//! gateways configured with `[agents] session_transport = "tcp"`.
//!
//! The same TLS checks as QUIC (one `agent_server_config`, ALPN
//! [`vmgate_wire::TCP_ALPN`] required), and the same limits before a
//! gateway is authenticated: the handshake under [`HANDSHAKE_DEADLINE`],
//! then the stream header under the header deadline ([`super::serve_stream`]).
//! Caps, checked at accept before any TLS work: [`MAX_HANDSHAKES`]
//! connections in their handshake at once, and connections in all fitted
//! to the open-files limit (a session may hold a second descriptor, its
//! guest's socket). Every refusal is counted by reason and logged with the
//! count, at most [`LOG_LINES`] lines per [`LOG_WINDOW`] (a port scan
//! cannot flood the log).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vmgate_relay::ratelog::RateLog;
use vmgate_relay::stream::{Io, StreamRx, StreamTx};
use vmgate_relay::Either;

use super::{serve_stream, HANDSHAKE_DEADLINE};
use crate::backend::Backend;

/// Connections in their TLS handshake at once; more are closed at accept.
/// Gateways open sessions a few at a time (a burst of reconnects after a
/// gateway restart stays well under it); a flood of strangers does not
/// get further.
pub const MAX_HANDSHAKES: usize = 1024;
/// Descriptors kept back from the TCP sessions for everything else (QMP,
/// serial chardevs, console logs, the QUIC socket).
const RESERVED_FILES: u64 = 256;
/// Pending connections the kernel queues before accept.
const BACKLOG: u32 = 1024;
const LOG_LINES: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);
/// After an accept error (out of descriptors), before the next accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The bound TCP listener, ready to serve.
pub struct TcpLink {
    listener: TcpListener,
    tls: vmgate_tls::TcpLinkServer,
    handshakes: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// The connections cap, for the log.
    max_connections: usize,
    refusals: Arc<Refusals>,
}

/// Why a TCP connection was refused before it carried a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// [`MAX_HANDSHAKES`] connections were in their handshake.
    Handshakes,
    /// The connections cap (open-files limit) was reached.
    Connections,
    /// The TLS handshake failed: a certificate the link's checks refuse,
    /// no certificate, another ALPN, not TLS.
    Handshake,
    /// The handshake did not finish within [`HANDSHAKE_DEADLINE`].
    HandshakeDeadline,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Handshakes => "handshakes_in_flight",
            Refusal::Connections => "connections_total",
            Refusal::Handshake => "handshake_failed",
            Refusal::HandshakeDeadline => "handshake_deadline",
        }
    }
}

/// Refusals counted by reason, and the budget of their log lines.
struct Refusals {
    counts: [AtomicU64; 4],
    log: Mutex<RateLog>,
}

impl Refusals {
    /// Counts a refusal of `peer` and logs it within the budget; `error`
    /// is the handshake's error, if it had one (rustls's words, no peer
    /// text).
    fn refuse(&self, peer: SocketAddr, why: Refusal, error: Option<&dyn std::fmt::Display>) {
        let total = self.counts[why as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let Some(left_out) = self.log.lock().expect("log budget").allow(Instant::now()) else {
            return;
        };
        let reason = why.as_str();
        match (why, error) {
            (Refusal::Handshake, Some(e)) => tracing::warn!(%peer, transport = "tcp", reason,
                refused = total, left_out, error = %e, "gateway handshake failed"),
            (Refusal::HandshakeDeadline, _) => tracing::warn!(%peer, transport = "tcp", reason,
                refused = total, left_out, "gateway handshake timed out"),
            _ => tracing::warn!(%peer, transport = "tcp", reason, refused = total, left_out,
                "connection refused at accept"),
        }
    }
}

impl TcpLink {
    /// Binds `addr` (the QUIC listener's address and port) for gateways'
    /// TLS connections made with `tls` (the agent's link configuration
    /// with the TCP ALPN); `open_files` is the limit the connections cap
    /// fits under.
    pub fn bind(
        addr: SocketAddr,
        tls: vmgate_tls::rustls::ServerConfig,
        open_files: Option<u64>,
    ) -> std::io::Result<TcpLink> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // A restarted agent binds its port again at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG)?;
        let max_connections =
            usize::try_from((open_files.unwrap_or(1024).saturating_sub(RESERVED_FILES) / 2).max(1))
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS);
        Ok(TcpLink {
            listener,
            tls: vmgate_tls::TcpLinkServer::new(tls),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            refusals: Arc::new(Refusals {
                counts: Default::default(),
                log: Mutex::new(RateLog::new(LOG_LINES, LOG_WINDOW)),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown`; each session is tracked by `streams`, as
    /// a QUIC stream's is, so the drain waits for it.
    pub async fn serve<B: Backend>(
        self,
        backend: Arc<B>,
        shutdown: CancellationToken,
        streams: TaskTracker,
    ) {
        tracing::info!(
            addr = %self.listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            connections = self.max_connections,
            handshakes = MAX_HANDSHAKES,
            "agent listening (TCP)"
        );
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "TCP accept failed");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                },
            };
            let Ok(connection) = self.connections.clone().try_acquire_owned() else {
                self.refusals.refuse(peer, Refusal::Connections, None);
                continue;
            };
            let Ok(handshake) = self.handshakes.clone().try_acquire_owned() else {
                self.refusals.refuse(peer, Refusal::Handshakes, None);
                continue;
            };
            let tls = self.tls.clone();
            let refusals = self.refusals.clone();
            let (backend, shutdown, streams) = (backend.clone(), shutdown.clone(), streams.clone());
            tokio::spawn(async move {
                let conn = match tokio::time::timeout(HANDSHAKE_DEADLINE, tls.accept(tcp)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return refusals.refuse(peer, Refusal::Handshake, Some(&e)),
                    Err(_) => return refusals.refuse(peer, Refusal::HandshakeDeadline, None),
                };
                drop(handshake);
                tracing::debug!(%peer, "gateway connected (TCP)");
                let (r, w) = tokio::io::split(conn);
                streams.spawn(async move {
                    let _connection = connection;
                    serve_stream(
                        Either::B(StreamTx::new(Io(w), "gateway")),
                        r,
                        |r, buf| Either::B(StreamRx::new(r, buf, "gateway")),
                        "tcp",
                        backend,
                        shutdown,
                    )
                    .await
                });
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::backend::qemu::QemuBackend;
    use crate::config::{AgentConfig, AgentTls};

    /// With room for one connection, a second is closed at accept (before
    /// any TLS work, at once) and counted; the first, once it ended, frees
    /// its place for a gateway whose handshake then succeeds.
    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_accept_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let link = vmgate_tls::pki::write_link(dir.path(), &["localhost"], &["gateway"]).unwrap();
        let tls = vmgate_tls::agent_server_config(
            &link.agent,
            &link.gateway_ca,
            &[],
            &[vmgate_wire::TCP_ALPN],
        )
        .unwrap();
        let tcp = TcpLink::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            Some(RESERVED_FILES + 2),
        )
        .unwrap();
        assert_eq!(tcp.max_connections, 1);
        let addr = tcp.local_addr().unwrap();
        let refusals = tcp.refusals.clone();
        let cfg = AgentConfig {
            node: "n".into(),
            listen: addr,
            log_dir: dir.path().join("logs"),
            scrollback_bytes: 1024,
            drain_secs: 5,
            console_log: Default::default(),
            backend: Default::default(),
            libvirt: Default::default(),
            tls: AgentTls {
                cert: link.agent.cert.clone(),
                key: link.agent.key.clone(),
                gateway_ca: link.gateway_ca.clone(),
                allowed_gateways: Vec::new(),
            },
            guests: vec![],
            media_dir: None,
            media_group: None,
            tcp_sessions: false,
        };
        let logs = crate::console::ConsoleLogs::new(&cfg.log_dir, cfg.console_log).unwrap();
        let shutdown = CancellationToken::new();
        let backend = Arc::new(QemuBackend::start(&cfg, &logs, shutdown.clone()));
        tokio::spawn(tcp.serve(backend, shutdown.clone(), TaskTracker::new()));

        let first = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The first holds the place once accepted: a refusal of the second
        // must come after that.
        while tcp_count(&refusals, Refusal::Connections) == 0 {
            let started = Instant::now();
            let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut b))
                .await
                .expect("an over-the-cap connection stayed open")
                .unwrap_or(0);
            assert_eq!(n, 0);
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        drop(first);
        let client = vmgate_tls::TcpLinkClient::new(
            vmgate_tls::gateway_client_config(
                &link.gateway,
                &link.agent_ca,
                &[vmgate_wire::TCP_ALPN],
            )
            .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        // The first's handshake task ends on its EOF and frees the place.
        while client.connect(addr, "localhost").await.is_err() {
            assert!(Instant::now() < deadline, "the place was never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(tcp_count(&refusals, Refusal::Connections), 1);
        shutdown.cancel();
    }

    /// An agent opens no TCP port unless `tcp_sessions` says so; with it,
    /// its TCP listener has the QUIC listener's port number.
    #[tokio::test]
    async fn only_an_agent_told_to_listens_on_tcp_and_on_its_quic_port() {
        let dir = tempfile::tempdir().unwrap();
        let link = vmgate_tls::pki::write_link(dir.path(), &["localhost"], &["gateway"]).unwrap();
        let mut cfg: AgentConfig = toml::from_str(&format!(
            "node = \"n\"\nlisten = \"127.0.0.1:0\"\nlog_dir = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\ngateway_ca = {:?}\n",
            dir.path().join("logs"),
            link.agent.cert,
            link.agent.key,
            link.gateway_ca,
        ))
        .unwrap();
        assert!(!cfg.tcp_sessions, "TCP is on by default");
        let quiet = crate::Agent::bind(cfg.clone()).unwrap();
        assert!(quiet.tcp.is_none());
        cfg.tcp_sessions = true;
        let agent = crate::Agent::bind(cfg).unwrap();
        let tcp = agent.tcp.as_ref().expect("a TCP listener");
        assert_eq!(tcp.local_addr().unwrap(), agent.local_addr());
    }

    fn tcp_count(r: &Refusals, why: Refusal) -> u64 {
        r.counts[why as usize].load(Ordering::Relaxed)
    }
}
