//! Backends: where an agent finds its guests and how it opens their
//! endpoints. The server, relay, scrollback and session logic are the same
//! for every backend.

pub mod libvirt;
pub mod qemu;

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vmgate_wire::{Close, CloseCode, Inventory, OpenRequest};

use crate::console::{ConsoleRx, ConsoleTx};

/// A byte stream to a guest endpoint (VNC, a virtio-serial port).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// What opening a channel gives.
pub enum Opened {
    /// A byte stream relayed as is; `stop` fires when another session takes
    /// the channel over.
    Stream {
        stream: Box<dyn Duplex>,
        what: String,
        stop: Option<(CancellationToken, SlotGuard)>,
    },
    /// An attachment to a serial console hub.
    Console(ConsoleRx, ConsoleTx),
}

/// A source of guests and their endpoints.
pub trait Backend: Send + Sync + 'static {
    /// The inventory now and every later change.
    fn inventory(&self) -> watch::Receiver<Inventory>;
    /// Opens the channel a gateway asked for, or says why not.
    fn open(&self, req: &OpenRequest) -> impl Future<Output = Result<Opened, Close>> + Send;
    /// Resolves, with the reason to give, when a session that `req` opened
    /// must end because its guest went away (a libvirt domain stopped).
    /// Called right after a successful [`Backend::open`]. Backends that keep
    /// sessions across guest restarts (`qemu`) never resolve it.
    fn session_end(&self, req: &OpenRequest) -> impl Future<Output = Close> + Send + 'static {
        let _ = req;
        std::future::pending()
    }
}

/// Holds an exclusive channel (a guest agent serves one client at a time).
#[derive(Default)]
pub struct Slot {
    holder: Mutex<Option<(u64, CancellationToken)>>,
}

/// Frees the slot when the session ends, unless it was taken over.
pub struct SlotGuard {
    slot: Arc<Slot>,
    session: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut h = self.slot.holder.lock().expect("slot lock");
        if h.as_ref().is_some_and(|(s, _)| *s == self.session) {
            *h = None;
        }
    }
}

impl Slot {
    /// Takes the slot for `session`; with `force`, ends the current holder.
    pub fn take(
        self: &Arc<Self>,
        session: u64,
        force: bool,
        what: &str,
    ) -> Result<(CancellationToken, SlotGuard), Close> {
        let mut h = self.holder.lock().expect("slot lock");
        if let Some((_, token)) = h.as_ref() {
            if !force {
                return Err(Close::new(
                    CloseCode::ChannelInUse,
                    format!("{what} is in use by another session (use --force to take it over)"),
                ));
            }
            token.cancel();
        }
        let token = CancellationToken::new();
        *h = Some((session, token.clone()));
        Ok((
            token,
            SlotGuard {
                slot: self.clone(),
                session,
            },
        ))
    }
}
