//! Following a guest across live migration.
//!
//! When a guest migrates, its agent ends the session with
//! [`CloseCode::GuestMoved`]. For serial consoles and channels (byte
//! streams that can go on against the guest's new QEMU) the gateway keeps
//! the client's WebSocket, waits for an agent to report the guest again,
//! opens the same channel there, tells the client in a notice, and relays
//! on. The client's close frame is held back meanwhile ([`HoldMoved`]) and
//! only sent if following fails. VNC is not followed: an RFB stream cannot
//! be resumed on another QEMU mid-way, so its viewer gets 4413 and
//! reconnects.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use vmgate_relay::FrameTx;
use vmgate_wire::{Close, CloseCode, Frame, Mode};

use crate::agents::{AgentPool, Opened};

/// How long a moved guest may take to show up on its new node (libvirt
/// reports it there when the migration completes, before it stops here).
pub const FOLLOW_WAIT: Duration = Duration::from_secs(30);
/// Between attempts while the routes catch up with the move (the new
/// node's report and the old node's 4413 race; a screen waits this long).
const RETRY: Duration = Duration::from_millis(50);

/// The client's sending half, holding back a [`CloseCode::GuestMoved`]
/// close (and the end of the stream after it) until the gateway knows
/// whether it can follow the guest.
pub struct HoldMoved<T> {
    inner: T,
    held: Option<Close>,
}

impl<T: FrameTx> HoldMoved<T> {
    pub fn new(inner: T) -> HoldMoved<T> {
        HoldMoved { inner, held: None }
    }

    /// The session goes on against the guest's new node: tell the client.
    pub async fn resume(&mut self, notice: String) {
        self.held = None;
        let _ = self.inner.send(Frame::Notice(notice)).await;
    }

    /// Following failed: the client gets `close` after all.
    pub async fn give_up(&mut self, close: Close) {
        self.held = None;
        let _ = self.inner.send(Frame::Close(close)).await;
        self.inner.finish().await;
    }
}

impl<T: FrameTx> FrameTx for HoldMoved<T> {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        match frame {
            Frame::Close(c) if c.code == CloseCode::GuestMoved => {
                self.held = Some(c);
                Ok(())
            }
            other => self.inner.send(other).await,
        }
    }

    async fn finish(&mut self) {
        if self.held.is_none() {
            self.inner.finish().await;
        }
    }
}

/// What following needs of the agent pool: opening a channel on whichever
/// agent the routes name (a seam for the tests below).
pub trait Opener {
    type Opened;
    fn open(
        &self,
        session: u64,
        guest: &str,
        channel: &str,
        mode: Mode,
        force: bool,
    ) -> impl Future<Output = Result<Self::Opened, Close>> + Send;
}

impl Opener for AgentPool {
    type Opened = Opened;
    fn open(
        &self,
        session: u64,
        guest: &str,
        channel: &str,
        mode: Mode,
        force: bool,
    ) -> impl Future<Output = Result<Opened, Close>> + Send {
        AgentPool::open(self, session, guest, channel, mode, force)
    }
}

/// Opens `channel` of `guest` again, on whichever agent reports it now,
/// within [`FOLLOW_WAIT`], in the session's own `mode` and never with
/// `force` (whoever holds the keyboard or the channel on the new node
/// keeps it); `stop` (the session's own end: expiry, an administrator)
/// still ends the wait.
pub async fn reopen<P: Opener + Sync, S: Future<Output = Close>>(
    pool: &P,
    session: u64,
    guest: &str,
    channel: &str,
    mode: Mode,
    stop: &mut Pin<&mut S>,
) -> Result<P::Opened, Close> {
    let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
    loop {
        // While the routes still point at the old node (or at nothing yet)
        // the attempt fails with one of these; anything else is final.
        let last = match pool.open(session, guest, channel, mode, false).await {
            Ok(s) => return Ok(s),
            Err(c)
                if matches!(
                    c.code,
                    CloseCode::UnknownGuest
                        | CloseCode::GuestDown
                        | CloseCode::GuestMoved
                        | CloseCode::AgentUnreachable
                ) =>
            {
                c
            }
            Err(c) => return Err(c),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Close::new(
                CloseCode::GuestMoved,
                format!(
                    "guest {guest} migrated but was not found on another node ({}): reconnect",
                    last.reason
                ),
            ));
        }
        tokio::select! {
            c = stop.as_mut() => return Err(c),
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client side that records what reaches it.
    #[derive(Default)]
    struct Record {
        frames: Vec<Frame>,
        finished: bool,
    }

    impl FrameTx for Record {
        async fn send(&mut self, frame: Frame) -> Result<(), Close> {
            self.frames.push(frame);
            Ok(())
        }
        async fn finish(&mut self) {
            self.finished = true;
        }
    }

    fn moved() -> Close {
        Close::new(
            CloseCode::GuestMoved,
            "guest migrated to another node: reconnect",
        )
    }

    #[tokio::test]
    async fn a_moved_close_is_held_until_followed_or_given_up() {
        let mut tx = HoldMoved::new(Record::default());
        tx.send(Frame::Data("a".into())).await.unwrap();
        tx.send(Frame::Close(moved())).await.unwrap();
        tx.finish().await;
        // Nothing of the end reached the client: the session may go on.
        assert_eq!(tx.inner.frames, vec![Frame::Data("a".into())]);
        assert!(!tx.inner.finished);
        tx.resume("followed".into()).await;
        tx.send(Frame::Data("b".into())).await.unwrap();
        assert_eq!(
            tx.inner.frames[1..],
            [Frame::Notice("followed".into()), Frame::Data("b".into())]
        );
        // Moved again, and this time not found: the client gets the close.
        tx.send(Frame::Close(moved())).await.unwrap();
        tx.finish().await;
        let lost = Close::new(CloseCode::GuestMoved, "not found on another node");
        tx.give_up(lost.clone()).await;
        assert_eq!(tx.inner.frames.last(), Some(&Frame::Close(lost)));
        assert!(tx.inner.finished);
    }

    /// An agent pool that records each open and answers from a script.
    struct Script {
        answers: std::sync::Mutex<Vec<Result<(), Close>>>,
        calls: std::sync::Mutex<Vec<(Mode, bool)>>,
    }

    impl Opener for Script {
        type Opened = ();
        fn open(
            &self,
            _session: u64,
            _guest: &str,
            _channel: &str,
            mode: Mode,
            force: bool,
        ) -> impl Future<Output = Result<(), Close>> + Send {
            self.calls.lock().unwrap().push((mode, force));
            let answer = self.answers.lock().unwrap().remove(0);
            async move { answer }
        }
    }

    /// A followed session opens again in its own mode, never with force,
    /// whatever it takes the routes to catch up; a refusal that is not
    /// about the move ends it.
    #[tokio::test(start_paused = true)]
    async fn a_followed_session_reopens_in_its_own_mode_and_never_forces() {
        let not_yet = Close::new(CloseCode::UnknownGuest, "no agent reports guest demo");
        let in_use = Close::new(CloseCode::ChannelInUse, "channel in use");
        for mode in [Mode::Interactive, Mode::ReadOnly] {
            for last in [Ok(()), Err(in_use.clone())] {
                let pool = Script {
                    answers: vec![Err(not_yet.clone()), Err(moved()), last.clone()].into(),
                    calls: Vec::new().into(),
                };
                let stop = std::future::pending::<Close>();
                tokio::pin!(stop);
                let got = reopen(&pool, 7, "demo", "serial0", mode, &mut stop).await;
                assert_eq!(got, last);
                assert_eq!(*pool.calls.lock().unwrap(), vec![(mode, false); 3]);
            }
        }
    }

    #[tokio::test]
    async fn other_closes_pass_at_once() {
        let mut tx = HoldMoved::new(Record::default());
        let down = Close::new(CloseCode::GuestDown, "guest stopped (destroyed)");
        tx.send(Frame::Close(down.clone())).await.unwrap();
        tx.finish().await;
        assert_eq!(tx.inner.frames, vec![Frame::Close(down)]);
        assert!(tx.inner.finished);
    }
}
