//! The one kind of byte stream the agent holds to a guest: a serial
//! console's connection, a VNC client connection, a virtio-serial port.
//! Consoles and backends both name it, so it lives below both.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a guest endpoint.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}
