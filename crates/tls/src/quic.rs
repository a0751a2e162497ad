//! QUIC endpoints for the gateway–agent link.
//!
//! The transport parameters are set here, once, for both ends: they decide
//! how much one console may have in flight and how fast a dead peer is
//! noticed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, TransportConfig, VarInt};
use rustls::{ClientConfig, ServerConfig};

use crate::TlsError;

/// Per-stream receive window: enough for a screen update in flight without
/// letting one console buffer unbounded memory.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Per-connection window: several busy consoles share it.
const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// Consoles one gateway may have open on one agent at once.
const MAX_STREAMS: u32 = 20_000;
/// The largest UDP payload either end sends or accepts. Path MTU discovery
/// starts at 1200 bytes and climbs only as far as the path carries (a
/// 1500-byte Ethernet path stays at 1452; loopback or a jumbo-frame LAN go
/// higher), and each packet saved is per-packet work saved. Kept under
/// 64 KiB / 10 because quinn sends up to 10 packets in one GSO write and
/// the kernel refuses a write over 64 KiB: the refused packets look like a
/// black hole and send the MTU back to 1200. See BENCHMARKS.md.
const MAX_UDP_PAYLOAD: u16 = 6000;
/// The largest UDP payload on a loopback link (gateway and agent on one
/// host: the all-in-one process, a single-host install, the benchmarks).
/// Loopback carries 64 KiB datagrams, so there each packet is sent on its
/// own, without GSO (whose batches of 10 could not exceed 64 KiB), and a
/// MiB takes 17 packets instead of 175: the per-packet work (quinn's packet
/// handling, ACKs, syscalls) that the profile showed falls with it, on both
/// ends. A link over any other path keeps [`MAX_UDP_PAYLOAD`] and GSO.
/// Both ends pick by the peer's address ([`LinkServer`], [`LinkClient`]).
/// See BENCHMARKS.md (issue 17).
const LOOPBACK_UDP_PAYLOAD: u16 = 65_000;
/// Kernel send and receive buffers of the QUIC socket. One socket carries
/// every console of a gateway–agent pair: with Linux's default (~208 KiB)
/// a burst overflows the receive buffer and the drops read as congestion.
/// The kernel caps this at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The transport parameters both ends use on a link that is not loopback.
pub fn transport_config() -> Arc<TransportConfig> {
    transport(false)
}

/// The transport parameters for a link over loopback (`true`) or any other
/// path.
fn transport(loopback: bool) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONN_WINDOW))
        .send_window(CONN_WINDOW as u64)
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .enable_segmentation_offload(!loopback)
        .mtu_discovery_config(Some({
            let mut m = quinn::MtuDiscoveryConfig::default();
            m.upper_bound(if loopback {
                LOOPBACK_UDP_PAYLOAD
            } else {
                MAX_UDP_PAYLOAD
            });
            m
        }))
        // A dead agent or gateway is noticed within seconds, so users get
        // "agent unreachable" instead of a frozen screen.
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(VarInt::from_u32(8_000).into()));
    Arc::new(t)
}

/// Whether `peer` is this host, over loopback (IPv4-mapped IPv6 too).
fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// A QUIC server endpoint (the agent), every connection with the
/// transport of a link that is not loopback.
pub fn quic_server(addr: SocketAddr, tls: ServerConfig) -> Result<Endpoint, TlsError> {
    Ok(link_server(addr, tls)?.endpoint)
}

/// The agent's QUIC endpoint, accepting each gateway with the transport of
/// its path (loopback or not, [`LOOPBACK_UDP_PAYLOAD`]). The TLS
/// configuration, and so the client-certificate checks, are the same on
/// both.
pub struct LinkServer {
    pub endpoint: Endpoint,
    loopback: Arc<quinn::ServerConfig>,
}

impl LinkServer {
    /// Accepts `incoming` with the transport for its peer's path.
    pub fn accept(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<quinn::Connecting, quinn::ConnectionError> {
        if is_loopback(incoming.remote_address()) {
            incoming.accept_with(self.loopback.clone())
        } else {
            incoming.accept()
        }
    }
}

/// A QUIC server endpoint (the agent) that picks each connection's
/// transport by its path ([`LinkServer::accept`]).
pub fn link_server(addr: SocketAddr, tls: ServerConfig) -> Result<LinkServer, TlsError> {
    let crypto = Arc::new(
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| TlsError::Quic(e.to_string()))?,
    );
    let mut cfg = quinn::ServerConfig::with_crypto(crypto.clone());
    cfg.transport_config(transport(false));
    let mut loopback = quinn::ServerConfig::with_crypto(crypto);
    loopback.transport_config(transport(true));
    Ok(LinkServer {
        endpoint: endpoint(addr, Some(cfg))?,
        loopback: Arc::new(loopback),
    })
}

/// An endpoint on `addr` with large socket buffers.
fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<Endpoint, TlsError> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(TlsError::Bind)?;
    // Best effort: a smaller buffer works, only less well under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into()).map_err(TlsError::Bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TlsError::Quic("no async runtime for QUIC".into()))?;
    let mut cfg = EndpointConfig::default();
    // The most either path takes: each connection's transport bounds its
    // own MTU discovery below this.
    cfg.max_udp_payload_size(LOOPBACK_UDP_PAYLOAD)
        .expect("payload size within QUIC's bounds");
    Endpoint::new(cfg, server, socket.into(), runtime).map_err(TlsError::Bind)
}

/// A QUIC client endpoint (the gateway), bound to an ephemeral port, its
/// default connections with the transport of a link that is not loopback.
pub fn quic_client(tls: ClientConfig) -> Result<Endpoint, TlsError> {
    Ok(link_client(tls)?.endpoint)
}

/// The gateway's QUIC endpoint, connecting to each agent with the transport
/// of its path (loopback or not, [`LOOPBACK_UDP_PAYLOAD`]); the same TLS
/// configuration either way.
pub struct LinkClient {
    pub endpoint: Endpoint,
    loopback: quinn::ClientConfig,
}

impl LinkClient {
    /// Connects to the agent at `addr`, named `server_name` in its
    /// certificate.
    pub fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connecting, quinn::ConnectError> {
        if is_loopback(addr) {
            self.endpoint
                .connect_with(self.loopback.clone(), addr, server_name)
        } else {
            self.endpoint.connect(addr, server_name)
        }
    }
}

/// A QUIC client endpoint (the gateway) that picks each connection's
/// transport by its path ([`LinkClient::connect`]).
pub fn link_client(tls: ClientConfig) -> Result<LinkClient, TlsError> {
    let crypto = Arc::new(
        QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| TlsError::Quic(e.to_string()))?,
    );
    let mut cfg = quinn::ClientConfig::new(crypto.clone());
    cfg.transport_config(transport(false));
    let mut loopback = quinn::ClientConfig::new(crypto);
    loopback.transport_config(transport(true));
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal address");
    let mut endpoint = endpoint(bind, None)?;
    endpoint.set_default_client_config(cfg);
    Ok(LinkClient { endpoint, loopback })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_host_counts_as_a_loopback_link() {
        for a in [
            "127.0.0.1:7000",
            "127.9.9.9:1",
            "[::1]:7000",
            "[::ffff:127.0.0.1]:7000",
        ] {
            assert!(is_loopback(a.parse().unwrap()), "{a}");
        }
        for a in [
            "10.0.0.5:7000",
            "192.168.1.1:7000",
            "[2001:db8::1]:7000",
            "[::ffff:10.0.0.5]:7000",
        ] {
            assert!(!is_loopback(a.parse().unwrap()), "{a}");
        }
    }

    /// A gateway and an agent on one host reach loopback's large datagrams
    /// through the project's own endpoints, mutual TLS included.
    #[tokio::test]
    async fn a_loopback_link_carries_datagrams_larger_than_other_paths_allow() {
        let dir = tempfile::tempdir().unwrap();
        let link = crate::pki::write_link(dir.path(), &["localhost"], &["gateway"]).unwrap();
        let server = link_server(
            "127.0.0.1:0".parse().unwrap(),
            crate::agent_server_config(&link.agent, &link.gateway_ca, &[], &[b"t"]).unwrap(),
        )
        .unwrap();
        let addr = server.endpoint.local_addr().unwrap();
        let client = link_client(
            crate::gateway_client_config(&link.gateway, &link.agent_ca, &[b"t"]).unwrap(),
        )
        .unwrap();
        let accept = tokio::spawn(async move {
            let incoming = server.endpoint.accept().await.unwrap();
            let conn = server.accept(incoming).unwrap().await.unwrap();
            let (_tx, mut rx) = conn.accept_bi().await.unwrap();
            while rx.read_chunk(usize::MAX, true).await.unwrap().is_some() {}
            (conn, server)
        });
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut tx, _rx) = conn.open_bi().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // MTU discovery probes upward while data flows.
        while conn.stats().path.current_mtu <= MAX_UDP_PAYLOAD {
            assert!(
                tokio::time::Instant::now() < deadline,
                "MTU still {} after 20 s",
                conn.stats().path.current_mtu
            );
            tx.write_all(&[0u8; 256 * 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(conn.stats().path.current_mtu <= LOOPBACK_UDP_PAYLOAD);
        tx.finish().unwrap();
        drop(accept);
    }
}
