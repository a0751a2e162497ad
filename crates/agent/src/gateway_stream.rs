//! A session's stream from a gateway, as the agent's pieces see it: a QUIC
//! stream on the gateway's connection, or a TCP + TLS connection of its
//! own (the gateway's `[agents] session_transport`). The server accepts
//! it (`server.rs`); a backend that serves the session itself (removable
//! media) reads and writes it.

use tokio::io::{ReadHalf, WriteHalf};
use vmgate_relay::quic::{QuicRx, QuicTx};
use vmgate_relay::stream::{StreamRx, StreamTx};
use vmgate_relay::Either;

/// A session's TCP + TLS connection from a gateway.
pub type TlsConn = vmgate_tls::TcpLinkAccepted;
/// What a gateway sends on a session: a QUIC stream's or a TCP
/// connection's frames.
pub type GatewayRx = Either<QuicRx, StreamRx<ReadHalf<TlsConn>>>;
/// What the agent sends a gateway on a session.
pub type GatewayTx = Either<QuicTx, StreamTx<WriteHalf<TlsConn>>>;
