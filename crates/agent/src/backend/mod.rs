//! Backends: where an agent finds its guests and how it opens their
//! endpoints. The server, relay, scrollback and session logic are the same
//! for every backend, and so is the dispatch here: a backend says what a
//! channel is ([`Backend::lookup`]) and how to open each kind, and
//! [`Backend::open`] does the rest (the exclusive slot of a virtio-serial
//! port, the names used in messages) once for all of them.
//!
//! * [`qemu`]: guests declared in the configuration by their QEMU sockets;
//! * [`libvirt`]: a libvirt daemon's domains, followed by its events;
//! * [`slot`]: one session at a time on a channel;
//! * [`media`]: removable-media drives (virtual CD-ROMs served over NBD);
//! * [`chardev`]: a virtio-serial chardev socket's end-of-stream rules.

pub mod chardev;
pub mod libvirt;
pub mod media;
pub mod qemu;
pub mod slot;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vmgate_wire::{ChannelKind, Close, Inventory, OpenRequest};

pub use chardev::ChardevStream;
pub use slot::{Slot, SlotGuard};

use crate::audio::{AudioRx, AudioTx};
use crate::console::{ConsoleHub, ConsoleRx, ConsoleTx};
use crate::duplex::Duplex;

/// What opening a channel gives.
pub enum Opened {
    /// A byte stream relayed as is; `stop` fires when another session takes
    /// the channel over.
    Stream {
        stream: Box<dyn Duplex>,
        /// [`ChannelKind::Vnc`] or [`ChannelKind::Channel`]: it chooses how
        /// a read-only session's input is dropped.
        kind: ChannelKind,
        what: String,
        stop: Option<(CancellationToken, SlotGuard)>,
    },
    /// An attachment to a serial console hub.
    Console(ConsoleRx, ConsoleTx),
    /// The guest's sound, from a VNC connection of the agent's own
    /// ([`crate::audio`]).
    Audio(AudioRx, AudioTx),
    /// A removable-media drive: the session speaks the media stream
    /// ([`media::serve`]).
    Media(Arc<media::Drive>),
}

/// What a guest's channel is, as [`Backend::lookup`] found it.
pub enum Endpoint<V, C> {
    /// A serial console: sessions attach to its hub.
    Console(ConsoleHub),
    /// The screen: each session is a fresh client of QEMU's VNC server.
    Vnc(V),
    /// The sound: each session is a fresh client of QEMU's VNC server too,
    /// one that asks for audio only.
    Audio(V),
    /// A virtio-serial port, one session at a time (the slot).
    Channel(Arc<Slot>, C),
    /// A removable-media drive.
    Media(Arc<media::Drive>),
}

/// A source of guests and their endpoints.
pub trait Backend: Send + Sync + 'static {
    /// How this backend reaches a guest's VNC server.
    type Vnc: Send;
    /// How this backend reaches a virtio-serial port.
    type Channel: Send;

    /// The inventory now and every later change.
    fn inventory(&self) -> watch::Receiver<Inventory>;

    /// The endpoint `req` names, or why there is none (unknown guest, guest
    /// down, no such channel). Only what this returns can be opened: it is
    /// the allow-list.
    fn lookup(&self, req: &OpenRequest) -> Result<Endpoint<Self::Vnc, Self::Channel>, Close>;

    /// Attaches a session to a serial console's hub.
    fn attach(
        &self,
        hub: ConsoleHub,
        req: &OpenRequest,
    ) -> impl Future<Output = Result<(ConsoleRx, ConsoleTx), Close>> + Send;

    /// A fresh VNC client connection to the guest's screen.
    fn open_vnc(
        &self,
        vnc: Self::Vnc,
        req: &OpenRequest,
    ) -> impl Future<Output = Result<Box<dyn Duplex>, Close>> + Send;

    /// A connection to a virtio-serial port whose slot the session already
    /// holds; `what` names it in messages ("channel test.echo of demo").
    fn open_channel(
        &self,
        channel: Self::Channel,
        req: &OpenRequest,
        what: &str,
    ) -> impl Future<Output = Result<Box<dyn Duplex>, Close>> + Send;

    /// Opens the channel a gateway asked for, or says why not.
    fn open(&self, req: &OpenRequest) -> impl Future<Output = Result<Opened, Close>> + Send {
        async move {
            match self.lookup(req)? {
                Endpoint::Console(hub) => {
                    let (rx, tx) = self.attach(hub, req).await?;
                    Ok(Opened::Console(rx, tx))
                }
                Endpoint::Vnc(vnc) => Ok(Opened::Stream {
                    stream: self.open_vnc(vnc, req).await?,
                    kind: ChannelKind::Vnc,
                    what: format!("VNC of {}", req.guest),
                    stop: None,
                }),
                Endpoint::Audio(vnc) => {
                    let stream = self.open_vnc(vnc, req).await?;
                    let (rx, tx) =
                        crate::audio::start(stream, format!("audio of {}", req.guest), req.session);
                    Ok(Opened::Audio(rx, tx))
                }
                Endpoint::Channel(slot, channel) => {
                    let what = format!("channel {} of {}", req.channel, req.guest);
                    let held = slot.take(req.session, req.force, &what).await?;
                    let stream = self.open_channel(channel, req, &what).await?;
                    Ok(Opened::Stream {
                        stream,
                        kind: ChannelKind::Channel,
                        what,
                        stop: Some(held),
                    })
                }
                Endpoint::Media(drive) => Ok(Opened::Media(drive)),
            }
        }
    }

    /// Resolves, with the reason to give, when a session that `req` opened
    /// must end because its guest went away (a libvirt domain stopped).
    /// Called right after a successful [`Backend::open`]. Backends that keep
    /// sessions across guest restarts (`qemu`) never resolve it.
    fn session_end(&self, req: &OpenRequest) -> impl Future<Output = Close> + Send + 'static {
        let _ = req;
        std::future::pending()
    }
}
