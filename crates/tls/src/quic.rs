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
/// Kernel send and receive buffers of the QUIC socket. One socket carries
/// every console of a gateway–agent pair: with Linux's default (~208 KiB)
/// a burst overflows the receive buffer and the drops read as congestion.
/// The kernel caps this at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The transport parameters both ends use.
pub fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONN_WINDOW))
        .send_window(CONN_WINDOW as u64)
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .mtu_discovery_config(Some({
            let mut m = quinn::MtuDiscoveryConfig::default();
            m.upper_bound(MAX_UDP_PAYLOAD);
            m
        }))
        // A dead agent or gateway is noticed within seconds, so users get
        // "agent unreachable" instead of a frozen screen.
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(VarInt::from_u32(8_000).into()));
    Arc::new(t)
}

/// A QUIC server endpoint (the agent).
pub fn quic_server(addr: SocketAddr, tls: ServerConfig) -> Result<Endpoint, TlsError> {
    let crypto =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config());
    endpoint(addr, Some(cfg))
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
    cfg.max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("payload size within QUIC's bounds");
    Endpoint::new(cfg, server, socket.into(), runtime).map_err(TlsError::Bind)
}

/// A QUIC client endpoint (the gateway), bound to an ephemeral port.
pub fn quic_client(tls: ClientConfig) -> Result<Endpoint, TlsError> {
    let crypto =
        QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal address");
    let mut ep = endpoint(bind, None)?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}
