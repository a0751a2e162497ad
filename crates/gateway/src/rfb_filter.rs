//! RFB awareness at the gateway: a viewer's bytes go through
//! [`vmgate_rfb::ClientFilter`] before they reach the agent.
//!
//! Every `vnc` session is parsed for message boundaries only, so malformed
//! RFB ends that session with a reason instead of reaching QEMU, and the
//! ClientInit *shared* flag is forced on (one viewer cannot disconnect the
//! others). An interactive viewer's data frames pass as the same buffers,
//! untouched. A read-only viewer's input messages (keys, pointer,
//! clipboard, QEMU key events, resize, power) are dropped here: the guest
//! never sees them, whatever the viewer is. Without the `audio` scope the
//! viewer's SetEncodings go on without QEMU's audio pseudo-encoding (−259)
//! and its QEMU audio messages (255/1) are dropped.
//!
//! The server→viewer direction (the framebuffer, nearly all the bytes) is
//! not touched at all. It needs no audio filter: QEMU sends audio on a VNC
//! connection only after that connection's client acknowledged −259 and
//! sent *enable*, and both come from this side (docs/audio.md).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use vmgate_relay::FrameRx;
use vmgate_rfb::{ClientFilter, Dropped, Policy, ServerParser, ViewerState};
use vmgate_wire::{Close, CloseCode, Frame};

/// The viewer side of a `vnc` session, filtered.
pub struct RfbRx<R> {
    inner: R,
    filter: ClientFilter,
    /// A spliceable session's server parser, told the viewer's pixel
    /// format as it goes to the server ([`crate::splice`]).
    server: Option<Arc<Mutex<ServerParser>>>,
    /// The pixel format last told to `server`.
    told: Option<[u8; 16]>,
    /// Tells the session to end (both sides, with the reason) on bad RFB.
    failed: Option<oneshot::Sender<Close>>,
    session: u64,
    /// What was dropped so far, readable after the relay took `self`.
    dropped: Arc<Mutex<Dropped>>,
}

/// Wraps a viewer's receiving half. The future resolves with the Close to
/// give both sides when the viewer sent something that is not RFB: pass it
/// as (part of) the relay's `stop`.
pub fn wrap<R: FrameRx>(
    inner: R,
    policy: Policy,
    session: u64,
) -> (RfbRx<R>, impl Future<Output = Close> + Send) {
    let (tx, told) = oneshot::channel();
    let rx = RfbRx {
        inner,
        filter: ClientFilter::new(policy),
        server: None,
        told: None,
        failed: Some(tx),
        session,
        dropped: Arc::default(),
    };
    let failed = async move {
        match told.await {
            Ok(close) => close,
            // The session ended without a parse error.
            Err(_) => std::future::pending().await,
        }
    };
    (rx, failed)
}

impl<R: FrameRx> FrameRx for RfbRx<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            let data = match self.inner.recv().await? {
                Some(Frame::Data(d)) => d,
                other => return Ok(other),
            };
            let filtered = self.filter.filter(data);
            *self.dropped.lock().expect("dropped lock") = self.filter.dropped;
            let format = self.filter.viewer.as_ref().and_then(|v| v.pixel_format());
            if let (Some(server), Some(pf)) = (&self.server, format) {
                if self.told != Some(pf) {
                    self.told = Some(pf);
                    server
                        .lock()
                        .expect("server parser lock")
                        .set_pixel_format(&pf);
                }
            }
            match filtered {
                // All of it was input from a read-only viewer.
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Ok(Some(Frame::Data(out))),
                Err(e) => {
                    let close = Close::new(
                        CloseCode::ProtocolError,
                        format!("malformed RFB from the viewer: {e}"),
                    );
                    tracing::warn!(session = self.session, reason = %close, "ending a VNC session");
                    if let Some(tx) = self.failed.take() {
                        let _ = tx.send(close);
                    }
                    // The relay's stop ends the session with that reason.
                    return std::future::pending().await;
                }
            }
        }
    }
}

impl<R> RfbRx<R> {
    /// Makes the session spliceable ([`ClientFilter::spliceable`]; `tight`:
    /// the viewer resets its Tight streams when told); its viewer's pixel
    /// format is told to `server`, the parser that follows the other
    /// direction.
    pub fn spliceable(mut self, server: Arc<Mutex<ServerParser>>, tight: bool) -> RfbRx<R> {
        self.filter = self.filter.spliceable(tight);
        self.server = Some(server);
        self
    }

    /// The session moves to a new server ([`ClientFilter::cut`]); what the
    /// new one must be told of the viewer.
    pub fn cut(&mut self) -> Option<&mut ViewerState> {
        self.filter.cut();
        self.filter.viewer.as_deref_mut()
    }

    /// The unfiltered receiver, for a session that is not RFB.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.filter.dropped
    }

    /// A live view of what was dropped, for the session's log.
    pub fn dropped_count(&self) -> Arc<Mutex<Dropped>> {
        self.dropped.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::sync::mpsc;

    struct ChanRx(mpsc::Receiver<Frame>);
    impl FrameRx for ChanRx {
        async fn recv(&mut self) -> Result<Option<Frame>, Close> {
            Ok(self.0.recv().await)
        }
    }

    #[tokio::test]
    async fn read_only_input_is_dropped_and_bad_rfb_ends_the_session() {
        let (tx, rx) = mpsc::channel(8);
        let policy = Policy {
            read_only: true,
            audio: false,
        };
        let (mut rfb, failed) = wrap(ChanRx(rx), policy, 1);
        tx.send(Frame::Data(Bytes::from_static(b"RFB 003.008\n\x01\x00")))
            .await
            .unwrap();
        assert_eq!(
            rfb.recv().await.unwrap(),
            Some(Frame::Data(Bytes::from_static(b"RFB 003.008\n\x01\x01")))
        );
        // A key press alone is swallowed; the update request after it passes.
        tx.send(Frame::Data(Bytes::from_static(&[
            4, 1, 0, 0, 0, 0, 0, 0x61,
        ])))
        .await
        .unwrap();
        let fur: &[u8] = &[3, 1, 0, 0, 0, 0, 0, 10, 0, 10];
        tx.send(Frame::Data(Bytes::from_static(fur))).await.unwrap();
        assert_eq!(
            rfb.recv().await.unwrap(),
            Some(Frame::Data(Bytes::from_static(fur)))
        );
        assert_eq!(rfb.dropped().input, 1);
        tx.send(Frame::Data(Bytes::from_static(&[99])))
            .await
            .unwrap();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), rfb.recv()).await;
        assert!(
            pending.is_err(),
            "recv waits for the stop to end the session"
        );
        let close = failed.await;
        assert_eq!(close.code, CloseCode::ProtocolError);
        assert!(close.reason.contains("unknown message type 99"), "{close}");
    }
}
