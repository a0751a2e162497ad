//! The gateway–agent stream protocol, as plain types and functions over bytes.
//!
//! Every console session is one QUIC bidirectional stream. The gateway opens
//! it with an [`OpenRequest`] header; after that both directions carry
//! [`Frame`]s. The agent's first frame answers the request: [`Frame::Opened`]
//! or [`Frame::Close`] with the refusal. The inventory is a stream too
//! ([`StreamKind::Inventory`]), on which the agent pushes [`Inventory`]
//! snapshots whenever its guests change.
//!
//! The client side of the gateway speaks WebSocket; its text messages are
//! [`Control`] messages, and its close codes are the same [`CloseCode`]s
//! (`control.rs` says how a client reads them). An `audio` channel's bytes
//! are framed PCM ([`audio`]).
//!
//! No sockets and no clock here: the service crates feed bytes in and read
//! frames out. `docs/wire.md` is the byte-level description.
#![forbid(unsafe_code)]

pub mod audio;
mod close;
mod control;
mod frame;
mod header;
mod inventory;

pub use close::{Close, CloseCode};
pub use control::{Control, ControlError, EXIT_STATUS, MAX_CONTROL_LEN, MAX_NOTICE};
pub use frame::{Frame, FrameError, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
pub use header::{HeaderError, Mode, OpenRequest, StreamKind, MAX_HEADER_LEN, MAX_NAME_LEN};
pub use inventory::{ChannelInfo, ChannelKind, GuestInfo, GuestState, Inventory};

/// ALPN protocol id of the gateway–agent QUIC connection; bump with the
/// header version.
pub const ALPN: &[u8] = b"vmgate/1";
/// ALPN protocol id of a gateway–agent TCP + TLS connection (one per
/// session, `[agents] session_transport = "tcp"`): the same header and
/// frames as a QUIC console stream; bump with the header version.
pub const TCP_ALPN: &[u8] = b"vmgate-tcp/1";

/// Checks a guest or channel name: 1 to [`MAX_NAME_LEN`] bytes of
/// `[A-Za-z0-9._:-]`. Names travel in URLs, file names and log lines, so
/// anything else is refused at the edge.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}
