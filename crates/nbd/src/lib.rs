//! NBD, the network block device protocol
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>),
//! as vmgate's virtual media speaks it, and the media stream that carries it.
//!
//! A user's image becomes a guest's CD-ROM: QEMU's NBD client reads it on
//! demand from an NBD server that runs where the image is (`vmgate media`,
//! or the browser), through the gateway and the agent. Sans-IO, like
//! `vmgate-ticket` and `vmgate-rfb`: bytes in, bytes and typed events out,
//! no sockets, no clock.
//!
//! * [`server`]: a read-only NBD server: the fixed-newstyle handshake
//!   (`NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`,
//!   `NBD_OPT_ABORT`; everything else `NBD_REP_ERR_UNSUP`), then requests:
//!   reads are handed to the caller after a bounds check, writes and every
//!   other change are refused with `EPERM`, requests past the end or longer
//!   than [`MAX_REQUEST`] get `EINVAL`. The CLI serves files with it, and
//!   the agent answers QEMU's handshake with it.
//! * [`client`]: the client side of the handshake (`NBD_OPT_GO`), which the
//!   agent runs against the user's server before it lets QEMU connect, so
//!   QEMU never waits on the network while it negotiates.
//! * [`monitor`]: follows the transmission phase both ways between QEMU and
//!   the user's server: only reads (and a disconnect) from QEMU, only
//!   replies to requests in flight from the server, and the bytes read.
//! * [`media`]: the messages of a `media` channel's stream between a client
//!   and the agent (insert, eject, status, NBD bytes, inserted, ejected).
//!
//! docs/media.md describes the same protocol for the browser's server.
#![forbid(unsafe_code)]

pub mod client;
pub mod media;
pub mod monitor;
pub mod proto;
pub mod server;

pub use client::{ClientError, Handshake, Negotiated};
pub use monitor::{Monitor, MonitorError};
pub use proto::MAX_REQUEST;
pub use server::{Event, Export, Server, ServerError};
