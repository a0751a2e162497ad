//! Frames: what travels on a stream after its header.
//!
//! ```text
//! type u8 | payload length u32 BE | payload
//! 0 Data       raw bytes of the console
//! 1 Eof        the sender will send no more Data (half-close)
//! 2 Notice     UTF-8 text for the user ("keyboard taken over")
//! 3 Close      code u16 BE | UTF-8 reason: the session ends, and why
//! 4 Opened     the agent accepted the request (empty payload)
//! 5 Inventory  JSON of [`crate::Inventory`]
//! ```
//!
//! Data payloads are handed on as `Bytes` slices of the read buffer: the
//! relay never copies console bytes to re-frame them.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Close, CloseCode};

/// type + length.
pub const FRAME_HEADER_LEN: usize = 5;
/// The largest payload accepted; a longer declared length is a protocol
/// error, so a peer can never make us buffer more than this per stream.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data(Bytes),
    Eof,
    Notice(String),
    Close(Close),
    Opened,
    Inventory(Bytes),
}

/// Why bytes on a stream are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame type this build does not know.
    #[error("unknown frame type {0}")]
    Type(u8),
    /// The declared payload is larger than [`MAX_FRAME_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A payload that must be empty is not, or a Close is shorter than its code.
    #[error("frame payload has the wrong length for its type")]
    Length,
    /// Notice or Close text that is not UTF-8.
    #[error("frame text is not UTF-8")]
    Utf8,
}

impl Frame {
    fn type_byte(&self) -> u8 {
        match self {
            Frame::Data(_) => 0,
            Frame::Eof => 1,
            Frame::Notice(_) => 2,
            Frame::Close(_) => 3,
            Frame::Opened => 4,
            Frame::Inventory(_) => 5,
        }
    }

    /// The frame header for a payload of `len` bytes.
    pub fn header(ty: u8, len: usize) -> [u8; FRAME_HEADER_LEN] {
        let l = (len as u32).to_be_bytes();
        [ty, l[0], l[1], l[2], l[3]]
    }

    /// The header and payload as separate buffers, so a writer can send a
    /// Data payload without copying it (`write_all_chunks`).
    pub fn to_chunks(&self) -> [Bytes; 2] {
        let payload = match self {
            Frame::Data(b) | Frame::Inventory(b) => b.clone(),
            Frame::Eof | Frame::Opened => Bytes::new(),
            Frame::Notice(s) => Bytes::copy_from_slice(s.as_bytes()),
            Frame::Close(c) => {
                let mut p = BytesMut::with_capacity(2 + c.reason.len());
                p.put_u16(c.code as u16);
                p.put_slice(c.reason.as_bytes());
                p.freeze()
            }
        };
        let header = Bytes::copy_from_slice(&Self::header(self.type_byte(), payload.len()));
        [header, payload]
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        for chunk in self.to_chunks() {
            out.put_slice(&chunk);
        }
    }

    /// Takes one frame off the front of `buf`: `Ok(None)` when `buf` holds
    /// no whole frame yet (and nothing is consumed).
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let ty = buf[0];
        if ty > 5 {
            return Err(FrameError::Type(ty));
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            // Reserve once for the whole frame instead of growing piecemeal.
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        let text = |p: Bytes| String::from_utf8(p.to_vec()).map_err(|_| FrameError::Utf8);
        Ok(Some(match ty {
            0 => Frame::Data(payload),
            1 | 4 if !payload.is_empty() => return Err(FrameError::Length),
            1 => Frame::Eof,
            2 => Frame::Notice(text(payload)?),
            3 => {
                if payload.len() < 2 {
                    return Err(FrameError::Length);
                }
                let code = CloseCode::from_u16(u16::from_be_bytes([payload[0], payload[1]]));
                Frame::Close(Close::new(code, text(payload.slice(2..))?))
            }
            4 => Frame::Opened,
            _ => Frame::Inventory(payload),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Data(Bytes::from_static(b"hello")),
            Frame::Data(Bytes::new()),
            Frame::Eof,
            Frame::Notice("keyboard taken over".into()),
            Frame::Close(Close::new(CloseCode::GuestDown, "guest stopped")),
            Frame::Opened,
            Frame::Inventory(Bytes::from_static(b"{}")),
        ]
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = BytesMut::new();
        for f in all() {
            f.encode(&mut buf);
        }
        for f in all() {
            assert_eq!(Frame::decode(&mut buf).unwrap(), Some(f));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        Frame::Notice("abc".into()).encode(&mut whole);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(Frame::decode(&mut part), Ok(None));
            assert_eq!(part.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let dec = |b: &[u8]| Frame::decode(&mut BytesMut::from(b));
        assert_eq!(dec(&[9, 0, 0, 0, 0]), Err(FrameError::Type(9)));
        assert_eq!(
            dec(&[0, 0xff, 0, 0, 0]),
            Err(FrameError::TooLarge(0xff00_0000))
        );
        // The bound is exactly MAX_FRAME_PAYLOAD, checked on the declared
        // length before anything is buffered.
        let declared = |n: usize| {
            let mut b = vec![0u8];
            b.extend_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
            b
        };
        assert_eq!(
            dec(&declared(MAX_FRAME_PAYLOAD + 1)),
            Err(FrameError::TooLarge(MAX_FRAME_PAYLOAD + 1))
        );
        assert_eq!(dec(&declared(MAX_FRAME_PAYLOAD)), Ok(None));
        assert_eq!(dec(&[1, 0, 0, 0, 1, 0]), Err(FrameError::Length));
        assert_eq!(dec(&[3, 0, 0, 0, 1, 0]), Err(FrameError::Length));
        assert_eq!(dec(&[2, 0, 0, 0, 1, 0xff]), Err(FrameError::Utf8));
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_consumes_what_it_reports(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Frame::decode(&mut buf) {}
            prop_assert!(buf.len() <= bytes.len());
        }

        #[test]
        fn data_round_trips(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut buf = BytesMut::new();
            Frame::Data(Bytes::from(data.clone())).encode(&mut buf);
            prop_assert_eq!(Frame::decode(&mut buf).unwrap(), Some(Frame::Data(Bytes::from(data))));
        }
    }
}
