//! A QUIC stream as a side of the relay: frames of [`vmgate_wire`] over a
//! quinn send/receive pair (sending through [`FrameWriter`]).

use bytes::{Buf, Bytes, BytesMut};
use vmgate_wire::{Close, CloseCode, Frame, FrameError, FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};

use crate::writer::{FrameWriter, Sink};
use crate::{bad_frame, decode_whole, ended_mid_frame, lost, still_needed, FrameRx};

/// Receives frames from a QUIC stream.
///
/// It reads quinn's own chunks ([`quinn::RecvStream::read_chunk`]) instead
/// of copying into a buffer of its own: an idle stream holds no buffer at
/// all, and a Data frame that arrives whole inside one chunk is handed on
/// as a slice of it, without a copy. Only a frame split across chunks is
/// gathered in `buf`, sized once for that frame.
pub struct QuicRx {
    stream: quinn::RecvStream,
    frames: Deframer,
    /// Who is on the other end ("agent", "gateway"), for close reasons.
    peer: &'static str,
}

impl QuicRx {
    /// `leftover` holds bytes already read past the stream's header.
    pub fn new(stream: quinn::RecvStream, leftover: BytesMut, peer: &'static str) -> QuicRx {
        QuicRx {
            stream,
            frames: Deframer {
                buf: leftover,
                chunk: Bytes::new(),
            },
            peer,
        }
    }
}

/// Frames out of a sequence of chunks (sans-IO, so it is tested alone).
#[derive(Default)]
struct Deframer {
    /// The frame being gathered across chunks; empty and unallocated
    /// between frames. Bounded by one frame ([`MAX_FRAME_PAYLOAD`]).
    buf: BytesMut,
    /// What is left of the last chunk, not yet decoded.
    chunk: Bytes,
}

impl Deframer {
    /// Hands over the next chunk; the previous one must be used up
    /// ([`Deframer::take_frame`] returned `None`).
    fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.chunk.is_empty());
        self.chunk = chunk;
    }

    /// Whether a frame is partly gathered (the stream may not end here).
    fn mid_frame(&self) -> bool {
        !self.buf.is_empty() || !self.chunk.is_empty()
    }

    /// The next whole frame from what was pushed so far, if there is one.
    fn take_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.buf.is_empty() {
                if let Some(data) = whole_data_frame(&mut self.chunk) {
                    return Ok(Some(Frame::Data(data)));
                }
            }
            if let Some(f) = decode_whole(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.chunk.is_empty() {
                // Release quinn's buffer while we wait.
                self.chunk = Bytes::new();
                return Ok(None);
            }
            // Move over what the frame in progress still needs.
            let n = still_needed(&self.buf).min(self.chunk.len());
            self.buf.extend_from_slice(&self.chunk[..n]);
            self.chunk.advance(n);
        }
    }
}

/// Takes a Data frame off the front of `chunk` when all of it is there,
/// as a slice of the chunk (no copy). Anything else is left for
/// [`Frame::decode`], which also does the checking.
fn whole_data_frame(chunk: &mut Bytes) -> Option<Bytes> {
    if chunk.len() < FRAME_HEADER_LEN || chunk[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]) as usize;
    if len > MAX_FRAME_PAYLOAD || chunk.len() < FRAME_HEADER_LEN + len {
        return None;
    }
    let data = chunk.slice(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len);
    chunk.advance(FRAME_HEADER_LEN + len);
    Some(data)
}

impl FrameRx for QuicRx {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        loop {
            match self.frames.take_frame() {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(bad_frame(self.peer, e)),
            }
            match self.stream.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => self.frames.push(c.bytes),
                Ok(None) if !self.frames.mid_frame() => return Ok(None),
                Ok(None) => return Err(ended_mid_frame(self.peer)),
                Err(quinn::ReadError::Reset(code))
                    if code == quinn::VarInt::from_u32(RESET_MID_FRAME) =>
                {
                    return Err(Close::new(
                        CloseCode::BackendError,
                        format!(
                            "the {} ended the session, and its reason was not read in time",
                            self.peer
                        ),
                    ))
                }
                Err(e) => return Err(lost(self.peer, &e)),
            }
        }
    }
}

/// Sends frames on a QUIC stream ([`FrameWriter`]). Dropped with part of a
/// frame unsent, the stream is reset with [`RESET_MID_FRAME`], which the
/// receiver reports as a session ended before its reason was read.
pub type QuicTx = FrameWriter<quinn::SendStream>;

/// The QUIC stream error code for "reset inside a frame".
const RESET_MID_FRAME: u32 = 1;

impl Sink for quinn::SendStream {
    /// quinn takes the chunks themselves (no copy) and empties what it
    /// wrote.
    async fn write_some(&mut self, pending: &mut [Bytes; 2]) -> std::io::Result<()> {
        if let Some(i) = pending.iter().position(|b| !b.is_empty()) {
            self.write_chunks(&mut pending[i..]).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn end(&mut self) {
        let _ = self.finish();
    }

    fn abandon(&mut self) {
        let _ = self.reset(quinn::VarInt::from_u32(RESET_MID_FRAME));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{collect, sample_frames};
    use crate::FrameTx;

    /// A real QUIC stream pair over loopback (mutual TLS, the project's
    /// transport settings).
    async fn stream_pair() -> (QuicTx, quinn::RecvStream, impl Sized) {
        let dir = tempfile::tempdir().unwrap();
        let link = vmgate_tls::pki::write_link(dir.path(), &["localhost"], &["gateway"]).unwrap();
        let server = vmgate_tls::quic_server(
            "127.0.0.1:0".parse().unwrap(),
            vmgate_tls::agent_server_config(&link.agent, &link.gateway_ca, &[], &[b"t"]).unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let client = vmgate_tls::quic_client(
            vmgate_tls::gateway_client_config(&link.gateway, &link.agent_ca, &[b"t"]).unwrap(),
        )
        .unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (_tx, rx) = conn.accept_bi().await.unwrap();
            (rx, conn, server)
        });
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut tx, _rx) = conn.open_bi().await.unwrap();
        // A stream exists for its peer once something is sent on it.
        tx.write_all(&[]).await.unwrap();
        let mut tx = QuicTx::new(tx, "test");
        tx.send(Frame::Opened).await.unwrap();
        let (rx, server_conn, server) = accept.await.unwrap();
        (tx, rx, (dir, conn, client, server_conn, server))
    }

    /// The relay drops a pump mid-send when a session ends; its Close must
    /// still come out as a whole frame after the whole Data frame, never
    /// inside it.
    #[tokio::test]
    async fn a_send_cancelled_mid_frame_is_completed_before_the_next_frame() {
        let (mut tx, recv, _keep) = stream_pair().await;
        // With nobody reading, sends stop once the stream's flow-control
        // window is full, part way into a frame.
        let mut sent = vec![Frame::Opened];
        loop {
            let data = Frame::Data(Bytes::from(vec![sent.len() as u8; MAX_FRAME_PAYLOAD - 1]));
            sent.push(data.clone());
            let send = tx.send(data);
            if tokio::time::timeout(std::time::Duration::from_millis(300), send)
                .await
                .is_err()
            {
                break;
            }
            assert!(sent.len() < 64, "the window never filled");
        }
        assert!(tx.pending.iter().any(|b| !b.is_empty()), "a frame was cut");
        let close = Close::new(CloseCode::BackendError, "ended while busy");
        let reader = tokio::spawn(collect(QuicRx::new(recv, BytesMut::new(), "test")));
        tx.send(Frame::Close(close.clone())).await.unwrap();
        tx.finish().await;
        let frames = reader.await.unwrap();
        sent.push(Frame::Close(close));
        assert_eq!(frames, sent);
    }

    /// Feeds `wire` in chunks of `size` and collects every frame.
    fn deframe(wire: &Bytes, size: usize) -> Vec<Frame> {
        let mut d = Deframer::default();
        let mut out = Vec::new();
        for start in (0..wire.len()).step_by(size) {
            d.push(wire.slice(start..(start + size).min(wire.len())));
            while let Some(f) = d.take_frame().unwrap() {
                out.push(f);
            }
        }
        assert!(!d.mid_frame(), "every byte was used");
        out
    }

    #[test]
    fn frames_survive_any_chunking() {
        let mut wire = BytesMut::new();
        for f in sample_frames() {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        for size in [1, 2, 4, 5, 6, 7, 64, 1000, 1200, 4096, wire.len()] {
            assert_eq!(deframe(&wire, size), sample_frames(), "chunks of {size}");
        }
    }

    #[test]
    fn a_whole_data_frame_in_a_chunk_is_not_copied() {
        let mut wire = BytesMut::new();
        Frame::Data(Bytes::from_static(b"0123456789")).encode(&mut wire);
        let wire = wire.freeze();
        let mut d = Deframer::default();
        d.push(wire.clone());
        let Some(Frame::Data(data)) = d.take_frame().unwrap() else {
            panic!("expected data");
        };
        assert_eq!(&data[..], b"0123456789");
        // The payload points into the chunk itself.
        assert_eq!(data.as_ptr(), wire[FRAME_HEADER_LEN..].as_ptr());
        assert_eq!(d.take_frame().unwrap(), None);
        assert!(!d.mid_frame());
    }

    #[test]
    fn malformed_frames_are_refused_on_either_path() {
        let mut d = Deframer::default();
        d.push(Bytes::from_static(&[9, 0, 0, 0, 0]));
        assert_eq!(d.take_frame(), Err(FrameError::Type(9)));
        let mut d = Deframer::default();
        d.push(Bytes::from_static(&[0, 0xff, 0, 0, 0]));
        assert_eq!(d.take_frame(), Err(FrameError::TooLarge(0xff00_0000)));
    }
}
