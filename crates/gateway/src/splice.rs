//! Keeping a screen open while its guest live-migrates: the RFB splice
//! (docs/migration.md).
//!
//! An RFB stream cannot resume on another QEMU: the new node's VNC server
//! knows nothing of the viewer. So when the guest departs from the node
//! (the routes say so: [`follow::Departure`]; the old stream is cut at the
//! end of the server message under way, [`ServerWatch`]) or the old node's
//! agent says the guest moved (4413), the gateway opens a new VNC connection on the node that
//! now runs the guest ([`crate::follow::reopen`]), plays the client's part
//! of its handshake itself ([`attach`]), gives it the viewer's last pixel
//! format and encodings and asks it for the whole screen, and releases on
//! it every key and button the viewer held down (the guest's keyboard moved
//! with it). The viewer's stream then goes on with the new server's
//! messages; the viewer never sees a second handshake.
//!
//! That is only sound at a server-message boundary, and only if nothing in
//! the new stream depends on the old one. So a spliceable session's
//! server→viewer bytes are followed by [`vmgate_rfb::ServerParser`]
//! ([`ServerWatch`]), and its viewer's SetEncodings keep only the encodings
//! that parser follows and whose compression state a new server can reset
//! ([`vmgate_rfb::server::SPLICEABLE`]: raw, CopyRect, RRE, Hextile, Tight
//! and the pseudo-encodings); zlib and ZRLE are taken out. The viewer's
//! Tight decoder still holds the old server's four zlib streams, so the
//! first Tight rectangle after the cut gets the reset bits set in its
//! control byte ([`ServerWatch`] rewrites that one byte).
//! A stream that ended inside a message, or that the parser could not
//! follow, is not spliced: the viewer gets the 4413 as before, with why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_rfb::{ServerEvent, ServerParser, ViewerState};
use vmgate_wire::{Close, CloseCode, Frame};

use crate::agents::Opened;
use crate::follow::{self, Departure};

/// How long the new node's VNC server may take to finish its handshake.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);
/// How many nodes one splice tries, when the guest leaves the node it is
/// being spliced onto before the handshake is over (moved on at once).
pub const ATTEMPTS: u32 = 3;

/// After the guest departed, how long the old server's stream may take to
/// reach the end of the message it is in. Past that the screen stops
/// trying to move early and waits for the old node to end the session, as
/// without a departure (its stream may then end in the middle of the
/// message, and the viewer gets the 4413).
pub const CUT_WAIT: Duration = Duration::from_secs(2);

/// The guest→viewer side of a spliceable screen, followed by a server
/// parser shared with the viewer side (which tells it the viewer's pixel
/// format). The frames pass as they are (but for the one byte of the first
/// Tight rectangle after a splice that tells the viewer to reset its zlib
/// streams) until the guest departs from the node ([`Departure`]); then
/// they pass up to the end of the server message under way (the rest of
/// that frame is dropped: the new node's full update replaces it), and the
/// stream ends there with [`follow::departed`], without waiting for the old
/// node's 4413.
pub struct ServerWatch<R> {
    inner: R,
    parser: Arc<Mutex<ServerParser>>,
    departure: Departure,
    guest: String,
    cut: Cut,
}

/// Where a [`ServerWatch`] is in leaving its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The guest is here.
    Here,
    /// It departed: looking for the end of the message under way, until
    /// this deadline.
    Seeking(Instant),
    /// At a message boundary: the stream ends.
    Done,
    /// No boundary within [`CUT_WAIT`]: relaying on, as if it had not
    /// departed.
    GaveUp,
}

impl<R> ServerWatch<R> {
    pub fn new(
        inner: R,
        parser: Arc<Mutex<ServerParser>>,
        departure: Departure,
        guest: &str,
    ) -> ServerWatch<R> {
        ServerWatch {
            inner,
            parser,
            departure,
            guest: guest.into(),
            cut: Cut::Here,
        }
    }

    /// The old node's stream, and whether the screen left it on the
    /// departure ([`follow::let_go`]).
    pub fn into_inner(self) -> (R, bool) {
        (self.inner, self.cut == Cut::Done)
    }

    fn parser(&self) -> std::sync::MutexGuard<'_, ServerParser> {
        self.parser.lock().expect("server parser lock")
    }
}

impl<R: FrameRx> FrameRx for ServerWatch<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            let r = match self.cut {
                Cut::Done => return Ok(Some(Frame::Close(follow::departed(&self.guest)))),
                Cut::Here => tokio::select! {
                    biased;
                    r = self.inner.recv() => r,
                    _ = self.departure.wait() => {
                        // At a boundary, or never spliceable (before the
                        // handshake's end, a stream not followed): now.
                        let p = self.parser();
                        let now = p.at_message_boundary() || !p.past_handshake() || p.error().is_some();
                        drop(p);
                        self.cut = if now {
                            Cut::Done
                        } else {
                            Cut::Seeking(Instant::now() + CUT_WAIT)
                        };
                        continue;
                    }
                },
                Cut::Seeking(until) => tokio::select! {
                    biased;
                    r = self.inner.recv() => r,
                    _ = tokio::time::sleep_until(until) => {
                        tracing::info!(wait_ms = CUT_WAIT.as_millis() as u64,
                            "the old node's screen did not reach a message boundary; waiting for it to end the session");
                        self.cut = Cut::GaveUp;
                        continue;
                    }
                },
                Cut::GaveUp => self.inner.recv().await,
            };
            let Ok(Some(Frame::Data(d))) = &r else {
                return r;
            };
            let mut d = d.clone();
            let mut reset = None;
            let on_event = |e| {
                if let ServerEvent::TightControl(at) = e {
                    reset = Some(at);
                }
            };
            if let Cut::Seeking(_) = self.cut {
                let taken = self.parser().feed_to_boundary(&d, on_event);
                match taken {
                    Ok(Some(n)) => {
                        self.cut = Cut::Done;
                        if n == 0 {
                            continue;
                        }
                        d = d.slice(..n);
                    }
                    Ok(None) => {}
                    // Not followable: only shown, never spliced.
                    Err(_) => self.cut = Cut::GaveUp,
                }
            } else {
                // A stream the parser cannot follow is still shown; it only
                // cannot be spliced, and the error says why if the guest
                // moves.
                let _ = self.parser().feed(&d, on_event);
            }
            if let Some(at) = reset.filter(|at| *at < d.len()) {
                let mut b = bytes::BytesMut::from(&d[..]);
                b[at] |= vmgate_rfb::server::TIGHT_RESET_ALL;
                d = b.freeze();
                tracing::info!("Tight streams reset in the viewer (the first Tight rectangle since the splice)");
            }
            return Ok(Some(Frame::Data(d)));
        }
    }
}

/// Why a screen does not move with its guest: the reason its viewer is
/// given (with the 4413), and the metric's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSpliced {
    pub label: &'static str,
    pub reason: String,
    /// The guest left the new node (moved on, or stopped) during the
    /// handshake: following it again may work.
    pub again: bool,
}

impl NotSpliced {
    pub fn new(label: &'static str, reason: impl Into<String>) -> NotSpliced {
        NotSpliced {
            label,
            reason: reason.into(),
            again: false,
        }
    }
}

/// Whether the old server's stream may be left where it ended: between two
/// messages of a stream the parser followed. The screen's size there.
pub fn can_leave(old: &ServerParser) -> Result<(u16, u16), NotSpliced> {
    if let Some(e) = old.error() {
        return Err(NotSpliced::new(
            "server_stream",
            format!("the screen could not be followed ({e}): reconnect"),
        ));
    }
    if !old.past_handshake() {
        return Err(NotSpliced::new(
            "handshake",
            "the viewer had not finished its RFB handshake: reconnect",
        ));
    }
    if !old.at_message_boundary() {
        return Err(NotSpliced::new(
            "mid_message",
            "the guest moved in the middle of a screen update: reconnect",
        ));
    }
    Ok(old.size())
}

/// Makes the new node's VNC connection (just opened, nothing sent yet)
/// ready to take the viewer's place: the client's side of the handshake
/// (RFB 3.8, None, shared), then the viewer's pixel format and encodings, a
/// request for the whole screen, and the release of what the viewer held
/// down. Returns the parser that follows the new stream from there, and
/// the new screen's size.
pub async fn attach(
    o: &mut Opened,
    viewer: &mut ViewerState,
) -> Result<(ServerParser, (u16, u16)), NotSpliced> {
    tokio::time::timeout(HANDSHAKE_WAIT, handshake(o, viewer))
        .await
        .unwrap_or_else(|_| {
            Err(NotSpliced::new(
                "handshake",
                format!(
                    "the new node's screen did not answer within {} s: reconnect",
                    HANDSHAKE_WAIT.as_secs()
                ),
            ))
        })
}

async fn handshake(
    o: &mut Opened,
    viewer: &mut ViewerState,
) -> Result<(ServerParser, (u16, u16)), NotSpliced> {
    let broken = |why: String| NotSpliced::new("handshake", format!("{why}: reconnect"));
    let sent = |r: Result<(), Close>| {
        r.map_err(|c| broken(format!("the new node's screen: {}", c.reason)))
    };
    let hello = Bytes::from_static(ServerParser::CLIENT_HANDSHAKE);
    sent(o.tx.send(Frame::Data(hello)).await)?;
    let mut p = ServerParser::new();
    let mut size = None;
    while size.is_none() {
        let data = match o.rx.recv().await {
            Ok(Some(Frame::Data(d))) => d,
            Ok(Some(Frame::Close(c))) | Err(c) => {
                let mut n = broken(format!("the new node's screen: {}", c.reason));
                n.again = matches!(c.code, CloseCode::GuestMoved | CloseCode::GuestDown);
                return Err(n);
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                let mut n = broken("the new node's screen ended".into());
                n.again = true;
                return Err(n);
            }
        };
        // Byte by byte (a handshake is a few dozen bytes): the server says
        // nothing after ServerInit until asked, so nothing may follow it.
        for (i, b) in data.iter().enumerate() {
            if size.is_some() {
                return Err(broken(format!(
                    "the new node's VNC server sent {} bytes nobody asked for",
                    data.len() - i
                )));
            }
            p.feed(std::slice::from_ref(b), |e| {
                if let ServerEvent::Ready { width, height } = e {
                    size = Some((width, height));
                }
            })
            .map_err(|e| broken(format!("the new node's VNC server: {e}")))?;
        }
    }
    let (w, h) = size.expect("ready");
    if let Some(pf) = viewer.pixel_format() {
        p.set_pixel_format(&pf);
    }
    // The viewer's Tight decoder carries the old server's zlib streams on.
    p.reset_tight_streams();
    let mut first = viewer.replay(w, h);
    first.extend(viewer.release());
    sent(o.tx.send(Frame::Data(first.into())).await)?;
    Ok((p, (w, h)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::tests::{departure, feed};
    use std::collections::VecDeque;

    struct Frames(VecDeque<Frame>);
    impl FrameRx for Frames {
        async fn recv(&mut self) -> Result<Option<Frame>, Close> {
            Ok(self.0.pop_front())
        }
    }

    /// A Tight fill rectangle in an update of its own, with these reset
    /// bits (3-byte pixel).
    fn tight_fill(reset: u8) -> Vec<u8> {
        let mut m = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 8, 0, 8, 0, 0, 0, 7];
        m.extend_from_slice(&[0x80 | reset, 1, 2, 3]);
        m
    }

    /// After a splice, the first Tight rectangle tells the viewer to reset
    /// all four zlib streams, wherever the frames cut it; the rest pass
    /// byte for byte.
    #[tokio::test]
    async fn the_first_tight_rectangle_after_a_splice_resets_the_viewers_streams() {
        let mut server = b"RFB 003.008\n\x01\x01\0\0\0\0\x02\xd0\x01\x90".to_vec();
        server.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        server.extend_from_slice(&[0, 0, 0, 0]);
        let mut p = ServerParser::new();
        p.feed(&server, |_| {}).unwrap();
        p.reset_tight_streams();
        let bell = [2u8];
        let stream = [&bell[..], &tight_fill(0x02), &tight_fill(0)].concat();
        let cc = bell.len() + 16;
        let (a, b) = stream.split_at(cc - 3);
        let frames = [a, b].map(|c| Frame::Data(Bytes::copy_from_slice(c)));
        let parser = Arc::new(Mutex::new(p));
        let mut w = ServerWatch::new(
            Frames(frames.into()),
            parser.clone(),
            Departure::never(),
            "demo",
        );
        let mut got = Vec::new();
        while let Some(Frame::Data(d)) = w.recv().await.unwrap() {
            got.extend_from_slice(&d);
        }
        let mut want = stream.clone();
        want[cc] = 0x8f;
        assert_eq!(got, want);
        assert!(parser.lock().unwrap().at_message_boundary());
    }

    /// A server's handshake for a 4x2 screen at 32 bits per pixel.
    fn handshake() -> Vec<u8> {
        let mut v = b"RFB 003.008\n\x01\x01\0\0\0\0".to_vec();
        v.extend_from_slice(&[0, 4, 0, 2, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0]);
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        v
    }

    /// A FramebufferUpdate with one raw rectangle of the whole screen.
    fn update(fill: u8) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 2, 0, 0, 0, 0];
        v.resize(v.len() + 4 * 2 * 4, fill);
        v
    }

    fn data(b: &[u8]) -> Frame {
        Frame::Data(Bytes::copy_from_slice(b))
    }

    /// Once the guest departed, the old server's bytes pass up to the end
    /// of the message under way and no further, and the stream ends there
    /// with a 4413 of the gateway's own: the parser is at a boundary, so
    /// the splice can go on. The viewer's input stops at once.
    #[tokio::test(start_paused = true)]
    async fn a_departed_screen_ends_at_the_end_of_the_message_under_way() {
        let (old, rx) = feed();
        let (fire, dep) = departure();
        let (viewer, viewer_rx) = feed();
        let mut input = dep.gate(viewer_rx);
        let parser = Arc::new(Mutex::new(ServerParser::new()));
        let mut w = ServerWatch::new(rx, parser.clone(), dep, "demo");
        let (hs, first, second) = (handshake(), update(1), update(2));
        old.send(Ok(data(&hs))).unwrap();
        assert_eq!(w.recv().await, Ok(Some(data(&hs))));
        // The first update, half of it.
        old.send(Ok(data(&first[..20]))).unwrap();
        assert_eq!(w.recv().await, Ok(Some(data(&first[..20]))));
        fire.send(()).unwrap();
        // The rest comes with the start of the next update in one frame:
        // only the rest passes.
        let mut rest = first[20..].to_vec();
        rest.extend_from_slice(&second[..10]);
        let late = {
            let old = old.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                old.send(Ok(data(&rest))).unwrap();
            })
        };
        assert_eq!(w.recv().await, Ok(Some(data(&first[20..]))));
        late.await.unwrap();
        let Ok(Some(Frame::Close(c))) = w.recv().await else {
            panic!("not ended")
        };
        assert_eq!(c.code, CloseCode::GuestMoved);
        assert!(parser.lock().unwrap().at_message_boundary());
        assert!(can_leave(&parser.lock().unwrap()).is_ok());
        assert!(w.into_inner().1, "left on the departure");
        viewer.send(Ok(data(b"\x04"))).unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), input.recv()).await;
        assert!(waited.is_err(), "{waited:?}");
    }

    /// Between two messages when the guest departs: the stream ends at
    /// once. In a message that never ends: after CUT_WAIT the frames pass
    /// whole again, and the old node's own end (its 4413) ends it.
    #[tokio::test(start_paused = true)]
    async fn a_screen_between_messages_leaves_at_once_and_one_stuck_inside_waits_for_the_old_node()
    {
        let (old, rx) = feed();
        let (fire, dep) = departure();
        let parser = Arc::new(Mutex::new(ServerParser::new()));
        let mut w = ServerWatch::new(rx, parser.clone(), dep, "demo");
        let mut hs = handshake();
        hs.extend(update(1));
        old.send(Ok(data(&hs))).unwrap();
        assert_eq!(w.recv().await, Ok(Some(data(&hs))));
        fire.send(()).unwrap();
        let start = Instant::now();
        let Ok(Some(Frame::Close(c))) = w.recv().await else {
            panic!("not ended")
        };
        assert_eq!(
            (c.code, start.elapsed()),
            (CloseCode::GuestMoved, Duration::ZERO)
        );

        let (old, rx) = feed();
        let (fire, dep) = departure();
        let parser = Arc::new(Mutex::new(ServerParser::new()));
        let mut w = ServerWatch::new(rx, parser.clone(), dep, "demo");
        let mut hs = handshake();
        hs.extend(&update(1)[..8]);
        old.send(Ok(data(&hs))).unwrap();
        assert_eq!(w.recv().await, Ok(Some(data(&hs))));
        fire.send(()).unwrap();
        let late = {
            let old = old.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CUT_WAIT + Duration::from_millis(10)).await;
                // The rest and the next message's start: all of it passes.
                let mut rest = update(1)[8..].to_vec();
                rest.extend_from_slice(&update(2)[..5]);
                old.send(Ok(data(&rest))).unwrap();
                let gone = Close::new(
                    CloseCode::GuestMoved,
                    "guest migrated to another node: reconnect",
                );
                old.send(Ok(Frame::Close(gone))).unwrap();
            })
        };
        let Ok(Some(Frame::Data(d))) = w.recv().await else {
            panic!("no data")
        };
        assert_eq!(d.len(), update(1).len() - 8 + 5);
        let Ok(Some(Frame::Close(c))) = w.recv().await else {
            panic!("not ended")
        };
        assert_eq!(c.reason, "guest migrated to another node: reconnect");
        assert_eq!(
            can_leave(&parser.lock().unwrap()).unwrap_err().label,
            "mid_message"
        );
        assert!(!w.into_inner().1, "the old node ended it");
        late.await.unwrap();
    }
}
