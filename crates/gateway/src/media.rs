//! Media awareness at the gateway: a `media` session's streams are followed
//! with [`vmgate_nbd::media::Decoder`] both ways, passing the same buffers
//! on unchanged.
//!
//! * Client → agent: the media stream must frame, or the session ends with
//!   a reason (4400) before the bytes reach the agent. A read-only session
//!   may only ask STATUS: an INSERT or EJECT ends it with 4403 "a read-only
//!   ticket cannot insert or eject media …", logged and counted
//!   (`vmgate_refusals_total{reason="media_read_only"}`), and NBD bytes
//!   from it (it serves no medium) end it too. The agent refuses the same
//!   on its side.
//! * Agent → client: what the agent says a medium's session read (its
//!   EJECTED message) goes to the session's log line, the audit log's
//!   `bytes_read` and `vmgate_media_bytes_read_total`.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use vmgate_nbd::media::{Decoder, Direction, Ejected, Item};
use vmgate_relay::FrameRx;
use vmgate_wire::{Close, CloseCode, Frame};

use crate::metrics::Metrics;
use crate::untrusted::Escaped;

/// What a read-only session is told when it asks to change a drive.
pub const READ_ONLY_REFUSAL: &str =
    "a read-only ticket cannot insert or eject media: ask for an interactive ticket";

/// The first failure of either direction, which ends the session.
#[derive(Clone, Default)]
struct Failure {
    close: Arc<Mutex<Option<Close>>>,
    fired: CancellationToken,
}

impl Failure {
    fn fail(&self, close: Close) {
        let mut c = self.close.lock().expect("failure lock");
        if c.is_none() {
            *c = Some(close);
        }
        self.fired.cancel();
    }
}

/// One direction of a media session, followed.
pub struct MediaRx<R> {
    inner: R,
    decoder: Decoder,
    read_only: bool,
    failure: Failure,
    ejected: Arc<Mutex<Option<Ejected>>>,
    metrics: Arc<Metrics>,
}

/// What the session learnt, readable after the relay.
pub struct Seen {
    ejected: Arc<Mutex<Option<Ejected>>>,
}

impl Seen {
    /// The agent's count of what the guest read, if a medium was served.
    pub fn ejected(&self) -> Option<Ejected> {
        *self.ejected.lock().expect("ejected lock")
    }
}

/// Wraps both receiving halves of a media session: the client's and the
/// agent's. The future resolves with the Close for both sides when either
/// breaks the rules: pass it as (part of) the relay's `stop`.
pub fn wrap<C: FrameRx, A: FrameRx>(
    client: C,
    agent: A,
    read_only: bool,
    metrics: Arc<Metrics>,
) -> (
    MediaRx<C>,
    MediaRx<A>,
    impl Future<Output = Close> + Send,
    Seen,
) {
    let failure = Failure::default();
    let ejected = Arc::new(Mutex::new(None));
    let c = MediaRx {
        inner: client,
        decoder: Decoder::new(Direction::ClientToAgent),
        read_only,
        failure: failure.clone(),
        ejected: ejected.clone(),
        metrics: metrics.clone(),
    };
    let a = MediaRx {
        inner: agent,
        decoder: Decoder::new(Direction::AgentToClient),
        read_only,
        failure: failure.clone(),
        ejected: ejected.clone(),
        metrics,
    };
    let f = failure.clone();
    let failed = async move {
        f.fired.cancelled().await;
        let close = f.close.lock().expect("failure lock").clone();
        close.unwrap_or_else(|| Close::new(CloseCode::Internal, "media session failed"))
    };
    (c, a, failed, Seen { ejected })
}

impl<R> MediaRx<R> {
    /// Checks what `data` holds; `Err` is the Close for the session.
    fn check(&mut self, data: &bytes::Bytes) -> Result<(), Close> {
        let mut items = Vec::new();
        let from_client = self.decoder_direction() == Direction::ClientToAgent;
        if let Err(e) = self.decoder.feed(data.clone(), &mut items) {
            let who = if from_client {
                "the client"
            } else {
                "the agent"
            };
            return Err(Close::new(
                CloseCode::ProtocolError,
                format!("malformed media stream from {who}: {e}"),
            ));
        }
        for item in items {
            match item {
                Item::Insert { .. } | Item::Eject if self.read_only => {
                    self.metrics.refused("media_read_only");
                    return Err(Close::new(CloseCode::TicketScope, READ_ONLY_REFUSAL));
                }
                Item::Nbd(_) if self.read_only && from_client => {
                    return Err(Close::new(
                        CloseCode::ProtocolError,
                        "a read-only media session serves no medium",
                    ));
                }
                Item::Insert { name } => {
                    tracing::info!(medium = %Escaped(&name), "medium offered for insertion");
                }
                Item::Ejected(e) => {
                    self.metrics.media_read(e.bytes_read);
                    *self.ejected.lock().expect("ejected lock") = Some(e);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn decoder_direction(&self) -> Direction {
        self.decoder.direction()
    }
}

impl<R: FrameRx> FrameRx for MediaRx<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        let frame = self.inner.recv().await?;
        if let Some(Frame::Data(d)) = &frame {
            if let Err(close) = self.check(d) {
                tracing::warn!(reason = %close, "ending a media session");
                self.failure.fail(close);
                // The relay's stop ends the session with that reason.
                return std::future::pending().await;
            }
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::sync::mpsc;
    use vmgate_nbd::media::encode;

    struct ChanRx(mpsc::Receiver<Frame>);
    impl FrameRx for ChanRx {
        async fn recv(&mut self) -> Result<Option<Frame>, Close> {
            Ok(self.0.recv().await)
        }
    }

    fn side() -> (mpsc::Sender<Frame>, ChanRx) {
        let (tx, rx) = mpsc::channel(8);
        (tx, ChanRx(rx))
    }

    #[tokio::test]
    async fn a_read_only_session_may_ask_status_and_nothing_else() {
        for (msg, code) in [
            (
                encode(&Item::Insert {
                    name: "x.iso".into(),
                }),
                CloseCode::TicketScope,
            ),
            (encode(&Item::Eject), CloseCode::TicketScope),
            (
                Bytes::from_static(b"\0\0\0\0\x02ab"),
                CloseCode::ProtocolError,
            ),
        ] {
            let metrics = Arc::new(Metrics::default());
            let (ctx, crx) = side();
            let (_atx, arx) = side();
            let (mut c, _a, failed, _) = wrap(crx, arx, true, metrics.clone());
            ctx.send(Frame::Data(encode(&Item::Status))).await.unwrap();
            assert!(matches!(c.recv().await, Ok(Some(Frame::Data(_)))));
            ctx.send(Frame::Data(msg)).await.unwrap();
            tokio::select! {
                _ = c.recv() => panic!("passed"),
                close = failed => {
                    assert_eq!(close.code, code);
                    if code == CloseCode::TicketScope {
                        assert_eq!(close.reason, READ_ONLY_REFUSAL);
                        assert!(metrics.render().contains("vmgate_refusals_total{reason=\"media_read_only\"} 1"));
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn an_interactive_session_passes_and_the_agent_s_count_is_kept() {
        let metrics = Arc::new(Metrics::default());
        let (ctx, crx) = side();
        let (atx, arx) = side();
        let (mut c, mut a, _failed, seen) = wrap(crx, arx, false, metrics.clone());
        let insert = encode(&Item::Insert {
            name: "x.iso".into(),
        });
        // Split inside the message: the same buffers pass on.
        ctx.send(Frame::Data(insert.slice(..3))).await.unwrap();
        ctx.send(Frame::Data(insert.slice(3..))).await.unwrap();
        assert_eq!(
            c.recv().await.unwrap(),
            Some(Frame::Data(insert.slice(..3)))
        );
        assert_eq!(
            c.recv().await.unwrap(),
            Some(Frame::Data(insert.slice(3..)))
        );
        let ejected = Ejected {
            bytes_read: 8 << 20,
            reads: 64,
        };
        atx.send(Frame::Data(encode(&Item::Ejected(ejected))))
            .await
            .unwrap();
        a.recv().await.unwrap();
        assert_eq!(seen.ejected(), Some(ejected));
        assert!(metrics
            .render()
            .contains(&format!("vmgate_media_bytes_read_total {}", 8 << 20)));
    }

    #[tokio::test]
    async fn garbage_from_either_side_ends_the_session_with_a_reason() {
        let (ctx, crx) = side();
        let (_atx, arx) = side();
        let (mut c, _a, failed, _) = wrap(crx, arx, false, Arc::default());
        ctx.send(Frame::Data(Bytes::from_static(b"GET / HTTP/1.1")))
            .await
            .unwrap();
        tokio::select! {
            _ = c.recv() => panic!("passed"),
            close = failed => {
                assert_eq!(close.code, CloseCode::ProtocolError);
                assert!(close.reason.contains("from the client"), "{close}");
            }
        }
    }
}
