//! Following a guest across live migration.
//!
//! A session moves when its guest departs from the session's node: as
//! soon as the routes say so ([`Departure`]: that node says the guest is
//! migrating out, and another runs it), or when the old node's agent ends
//! the session with [`CloseCode::GuestMoved`], whichever comes first. For
//! serial consoles and channels (byte streams that can go on against the
//! guest's new QEMU) the gateway keeps the client's WebSocket, takes what
//! the old node still had on its way ([`Leave`]), opens the same channel
//! on the new node, tells the client in a notice, and relays on. The
//! client's close frame is held back meanwhile ([`HoldMoved`]) and only
//! sent if following fails. A screen is spliced instead
//! ([`crate::splice`]), through the same departure and re-open.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_wire::{Close, CloseCode, Frame, Mode};

use crate::agents::{AgentPool, Opened};

/// How long a moved guest may take to show up on its new node (libvirt
/// reports it there when the migration completes, before it stops here).
pub const FOLLOW_WAIT: Duration = Duration::from_secs(30);
/// Between attempts while the routes catch up with the move (the new
/// node's report and the old node's 4413 race; a screen waits this long).
const RETRY: Duration = Duration::from_millis(50);

/// After the guest departed, how long the old node's stream must have
/// been quiet before a serial session or channel leaves it: the guest is
/// paused there from before the new node resumed it, so what is still on
/// its way is what it wrote before the pause, already sent by the old node.
pub const QUIET: Duration = Duration::from_millis(100);
/// The most a serial session or channel waits for that quiet.
pub const DRAIN_MAX: Duration = Duration::from_secs(1);

/// The close a session's old side gives when the gateway moves the session
/// itself (the old node's own 4413 comes later, to a stream already gone).
pub fn departed(guest: &str) -> Close {
    Close::new(
        CloseCode::GuestMoved,
        format!("guest {guest} migrated to another node"),
    )
}

/// When a session's guest departs from the session's node, as the routes
/// tell it ([`crate::agents::AgentPool::departure`]): the old side's
/// wrapper ([`Leave`], [`crate::splice::ServerWatch`]) waits for it and
/// then says so to the client side's [`Gate`].
pub struct Departure {
    departed: Pin<Box<dyn Future<Output = ()> + Send>>,
    fired: bool,
    left: CancellationToken,
}

impl Departure {
    pub fn new(departed: impl Future<Output = ()> + Send + 'static) -> Departure {
        Departure {
            departed: Box::pin(departed),
            fired: false,
            left: CancellationToken::new(),
        }
    }

    /// A departure that never comes (tests, sessions that do not move).
    pub fn never() -> Departure {
        Departure::new(std::future::pending())
    }

    /// Resolves once, when the guest departed; pending after that.
    pub async fn wait(&mut self) {
        if self.fired {
            return std::future::pending().await;
        }
        self.departed.as_mut().await;
        self.fired = true;
        self.left.cancel();
        tracing::info!("the guest departed from this session's node; moving the session now");
    }

    /// Gates the client's side of the same session.
    pub fn gate<R>(&self, inner: R) -> Gate<R> {
        Gate {
            inner,
            left: self.left.clone(),
        }
    }
}

/// The client's input on its way to the old node: once the guest departed
/// it stops there (what the client sends next waits in the transport's
/// flow control and goes to the new node): input a paused guest would take
/// after its state was sent to the new node would be lost.
pub struct Gate<R> {
    inner: R,
    left: CancellationToken,
}

impl<R: FrameRx> FrameRx for Gate<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        tokio::select! {
            biased;
            _ = self.left.cancelled() => std::future::pending().await,
            r = self.inner.recv() => r,
        }
    }
}

/// The old node's side of a serial session or channel. Frames pass as they
/// are until the guest departs; then what the old node still sends passes
/// until its stream has been quiet for [`QUIET`] (at most [`DRAIN_MAX`]),
/// and the session leaves it with [`departed`]. Whatever ends the old
/// stream meanwhile (its agent's 4413, say) ends it the same way. Nothing
/// the gateway took from the old node is dropped, and nothing is taken
/// twice: the new node's console only has what the guest wrote there.
pub struct Leave<R> {
    inner: R,
    departure: Departure,
    guest: String,
    /// Set once the guest departed: (the bound, the quiet deadline).
    draining: Option<(Instant, Instant)>,
}

impl<R> Leave<R> {
    pub fn new(inner: R, departure: Departure, guest: &str) -> Leave<R> {
        Leave {
            inner,
            departure,
            guest: guest.into(),
            draining: None,
        }
    }

    /// The old node's stream, and whether the session left it on the
    /// departure (then the old node has not ended it yet: [`let_go`]).
    pub fn into_inner(self) -> (R, bool) {
        (self.inner, self.draining.is_some())
    }
}

/// How long a session's old stream is still read after the session left
/// it: until the old node ends it (its 4413 when the migration completes),
/// at most this long.
pub const LET_GO_WAIT: Duration = FOLLOW_WAIT;

/// Lets go of a stream the session left on the departure: what the old
/// node still sends is read and dropped until it ends the stream (the
/// gateway has sent it the end of the session's input), so the old node
/// ends the session in its own time, with its own reason, and never sees
/// the gateway stop reading. Bounded by [`LET_GO_WAIT`].
pub fn let_go<R: FrameRx + 'static>(mut old: R) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LET_GO_WAIT, async {
            while let Ok(Some(f)) = old.recv().await {
                if let Frame::Close(_) = f {
                    break;
                }
            }
        })
        .await;
    });
}

impl<R: FrameRx> FrameRx for Leave<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            let Some((bound, quiet)) = self.draining else {
                tokio::select! {
                    biased;
                    r = self.inner.recv() => return r,
                    _ = self.departure.wait() => {
                        let now = Instant::now();
                        self.draining = Some((now + DRAIN_MAX, now + QUIET));
                        continue;
                    }
                }
            };
            let moved = Ok(Some(Frame::Close(departed(&self.guest))));
            return tokio::select! {
                biased;
                r = self.inner.recv() => match r {
                    Ok(Some(f @ (Frame::Data(_) | Frame::Notice(_)))) => {
                        self.draining = Some((bound, Instant::now() + QUIET));
                        Ok(Some(f))
                    }
                    _ => moved,
                },
                _ = tokio::time::sleep_until(bound.min(quiet)) => moved,
            };
        }
    }
}

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
pub(crate) mod tests {
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

    /// An old node's side the test feeds, and a departure it fires.
    pub(crate) struct Feed(pub tokio::sync::mpsc::UnboundedReceiver<Result<Frame, Close>>);

    impl FrameRx for Feed {
        async fn recv(&mut self) -> Result<Option<Frame>, Close> {
            match self.0.recv().await {
                Some(r) => r.map(Some),
                None => std::future::pending().await,
            }
        }
    }

    pub(crate) type Sender = tokio::sync::mpsc::UnboundedSender<Result<Frame, Close>>;

    pub(crate) fn feed() -> (Sender, Feed) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Feed(rx))
    }

    pub(crate) fn departure() -> (tokio::sync::oneshot::Sender<()>, Departure) {
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let d = Departure::new(async move {
            if fired.await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        (fire, d)
    }

    fn data(s: &'static str) -> Frame {
        Frame::Data(bytes::Bytes::from_static(s.as_bytes()))
    }

    /// Once the guest departed, a serial session takes what the old node
    /// still sends until it has been quiet for QUIET, then leaves it with
    /// a 4413 of its own; the client's input stops going there at once.
    #[tokio::test(start_paused = true)]
    async fn a_departed_session_takes_the_old_nodes_last_bytes_then_leaves_and_its_input_waits() {
        let (old, feed_rx) = feed();
        let (fire, dep) = departure();
        let (client, client_rx) = feed();
        let mut input = dep.gate(client_rx);
        let mut leave = Leave::new(feed_rx, dep, "demo");
        old.send(Ok(data("a"))).unwrap();
        assert_eq!(leave.recv().await, Ok(Some(data("a"))));
        client.send(Ok(data("k1"))).unwrap();
        assert_eq!(input.recv().await, Ok(Some(data("k1"))));
        fire.send(()).unwrap();
        let start = Instant::now();
        let late = {
            let old = old.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(60)).await;
                old.send(Ok(data("b"))).unwrap();
            })
        };
        assert_eq!(leave.recv().await, Ok(Some(data("b"))));
        late.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(60));
        let end = leave.recv().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(60) + QUIET);
        let Some(Frame::Close(c)) = end else {
            panic!("{end:?}")
        };
        assert_eq!(c.code, CloseCode::GuestMoved);
        // Input typed after the departure is not taken for the old node.
        client.send(Ok(data("k2"))).unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), input.recv()).await;
        assert!(waited.is_err(), "{waited:?}");
        // The old stream is still open: the gateway lets it go (let_go).
        assert!(leave.into_inner().1);
    }

    /// An old node that keeps talking is left after DRAIN_MAX; one whose
    /// stream ends meanwhile (its agent's 4413, or anything else) is left
    /// at once, with the same 4413.
    #[tokio::test(start_paused = true)]
    async fn leaving_is_bounded_and_the_old_nodes_own_end_is_a_departure_too() {
        let (old, feed_rx) = feed();
        let (fire, dep) = departure();
        let mut leave = Leave::new(feed_rx, dep, "demo");
        fire.send(()).unwrap();
        let start = Instant::now();
        let chatty = tokio::spawn(async move {
            loop {
                if old.send(Ok(data("x"))).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        loop {
            match leave.recv().await.unwrap() {
                Some(Frame::Data(_)) => {}
                Some(Frame::Close(c)) => {
                    assert_eq!(c.code, CloseCode::GuestMoved);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(start.elapsed() <= DRAIN_MAX + Duration::from_millis(50));
        assert!(start.elapsed() >= DRAIN_MAX);
        drop(leave);
        chatty.await.unwrap();

        let (old, feed_rx) = feed();
        let (fire, dep) = departure();
        let mut leave = Leave::new(feed_rx, dep, "demo");
        fire.send(()).unwrap();
        // Seen departed (nothing came from the old node for 10 ms) ...
        let quiet = tokio::time::timeout(Duration::from_millis(10), leave.recv()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        // ... and then its stream ends, whatever the reason.
        let down = Close::new(CloseCode::GuestDown, "guest stopped (migrated away)");
        old.send(Ok(Frame::Close(down))).unwrap();
        let start = Instant::now();
        let Ok(Some(Frame::Close(c))) = leave.recv().await else {
            panic!("not closed")
        };
        assert_eq!(
            (c.code, start.elapsed()),
            (CloseCode::GuestMoved, Duration::ZERO)
        );
    }

    /// A stream the session left is read (and dropped) until the old node
    /// ends it with its own 4413, so that close reaches a reader and goes
    /// nowhere else; a stream the old node never ends is let go after
    /// LET_GO_WAIT.
    #[tokio::test(start_paused = true)]
    async fn a_left_stream_is_read_until_the_old_nodes_own_end_and_no_longer() {
        let (old, rx) = feed();
        let_go(rx);
        old.send(Ok(data("late"))).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!old.is_closed(), "still read");
        old.send(Ok(Frame::Close(moved()))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(old.is_closed(), "let go after its close");

        let (old, rx) = feed();
        let_go(rx);
        tokio::time::sleep(LET_GO_WAIT - Duration::from_millis(1)).await;
        assert!(!old.is_closed());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(old.is_closed(), "bounded");
    }

    /// Without a departure nothing changes: the old node's own close passes.
    #[tokio::test(start_paused = true)]
    async fn without_a_departure_the_old_nodes_frames_pass_as_they_are() {
        let (old, feed_rx) = feed();
        let mut leave = Leave::new(feed_rx, Departure::never(), "demo");
        old.send(Ok(data("a"))).unwrap();
        old.send(Ok(Frame::Close(moved()))).unwrap();
        assert_eq!(leave.recv().await, Ok(Some(data("a"))));
        assert_eq!(leave.recv().await, Ok(Some(Frame::Close(moved()))));
        assert!(!leave.into_inner().1);
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
