//! Keeping a screen open while its guest live-migrates: the RFB splice
//! (docs/migration.md).
//!
//! An RFB stream cannot resume on another QEMU: the new node's VNC server
//! knows nothing of the viewer. So when the old node's agent says the guest
//! moved (4413), the gateway opens a new VNC connection on the node that
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
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_rfb::{ServerEvent, ServerParser, ViewerState};
use vmgate_wire::{Close, CloseCode, Frame};

use crate::agents::Opened;

/// How long the new node's VNC server may take to finish its handshake.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);
/// How many nodes one splice tries, when the guest leaves the node it is
/// being spliced onto before the handshake is over (moved on at once).
pub const ATTEMPTS: u32 = 3;

/// The guest→viewer side of a spliceable screen, followed by a server
/// parser shared with the viewer side (which tells it the viewer's pixel
/// format). The frames pass as they are, but for the one byte of the first
/// Tight rectangle after a splice that tells the viewer to reset its zlib
/// streams.
pub struct ServerWatch<R> {
    inner: R,
    parser: Arc<Mutex<ServerParser>>,
}

impl<R> ServerWatch<R> {
    pub fn new(inner: R, parser: Arc<Mutex<ServerParser>>) -> ServerWatch<R> {
        ServerWatch { inner, parser }
    }
}

impl<R: FrameRx> FrameRx for ServerWatch<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        let mut r = self.inner.recv().await;
        if let Ok(Some(Frame::Data(d))) = &mut r {
            // A stream the parser cannot follow is still shown; it only
            // cannot be spliced, and the error says why if the guest moves.
            let mut reset = None;
            let _ = self
                .parser
                .lock()
                .expect("server parser lock")
                .feed(d, |e| {
                    if let ServerEvent::TightControl(at) = e {
                        reset = Some(at);
                    }
                });
            if let Some(at) = reset {
                let mut b = bytes::BytesMut::from(&d[..]);
                b[at] |= vmgate_rfb::server::TIGHT_RESET_ALL;
                *d = b.freeze();
                tracing::info!("Tight streams reset in the viewer (the first Tight rectangle since the splice)");
            }
        }
        r
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
        let mut w = ServerWatch::new(Frames(frames.into()), parser.clone());
        let mut got = Vec::new();
        while let Some(Frame::Data(d)) = w.recv().await.unwrap() {
            got.extend_from_slice(&d);
        }
        let mut want = stream.clone();
        want[cc] = 0x8f;
        assert_eq!(got, want);
        assert!(parser.lock().unwrap().at_message_boundary());
    }
}
