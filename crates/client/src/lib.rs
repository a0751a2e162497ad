//! The client side of the gateway's console WebSocket, written once for
//! every client: `vmgate console`, `channel`, `vnc` (and the coming `audio`
//! and `media`), the benchmark client and the test harness.
//!
//! It owns:
//! - [`Connector`]: TCP, TLS and the WebSocket handshake, each under its own
//!   deadline ([`Deadlines`]), trusting the CA it is given; optionally with
//!   a client certificate or a bearer token (the admin listener);
//! - [`url`]: every URL a client builds or reads (a console WebSocket, the
//!   web console, the admin console, a ticket URL handed to a user);
//! - [`ws`]: the one adapter from a tungstenite client WebSocket to the
//!   relay's [`FrameRx`](vmgate_relay::FrameRx) / [`FrameTx`](vmgate_relay::FrameTx):
//!   binary messages are Data, text messages are typed control messages
//!   ([`vmgate_wire::Control`]), the close frame is a [`vmgate_wire::Close`];
//! - [`media`]: the client side of a `media` session: serving an image as
//!   a guest's CD-ROM over NBD, ejecting, asking what is in a drive;
//! - [`peek`]: what a ticket is for, read through the ticket crate without
//!   verifying it (the gateway verifies);
//! - [`audio`]: the `audio` channel: the format request, then the agent's
//!   framed PCM as owned items.
//!
//! It never links the gateway crate, and cannot mint tickets.
//!
//! A new client command is: build a URL ([`url::ws_url`]), connect
//! ([`Connector::connect`]), split ([`ws::split`]), then either hand both
//! halves to [`vmgate_relay::relay`] with a local side (as `vmgate vnc`
//! does), or loop on [`ws::WsRx::recv`] for frames.
#![forbid(unsafe_code)]

pub mod audio;
mod connect;
mod error;
pub mod media;
pub mod url;
pub mod ws;

pub use connect::{Connector, Deadlines, Ws};
pub use error::ClientError;
pub use vmgate_ticket::Claims;

/// The claims of `ticket`, **unverified**: only to know which guest and
/// channels a ticket is for. The gateway is what verifies.
pub fn peek(ticket: &str) -> Result<Claims, ClientError> {
    vmgate_ticket::peek(ticket).map_err(ClientError::Ticket)
}
