//! The stream of a `media` channel, between a client (`vmgate media`, the
//! browser) and the agent, through the gateway: messages, sans-IO.
//!
//! ```text
//! message: type u8 | payload length u32 BE | payload
//!
//! client → agent
//!   0 NBD       bytes of the client's NBD server (the medium)     ≤ 256 KiB
//!   1 INSERT    UTF-8 name of the medium, 1 to 255 bytes, no control characters
//!   2 EJECT     empty: eject the drive's medium (the session's own, or anyone's)
//!   3 STATUS    empty: what is in the drive?
//! agent → client
//!   0 NBD       bytes of the NBD client (the agent's handshake, then QEMU's requests)
//!  16 INSERTED  JSON {"size": N}: the drive holds the medium, the guest sees it
//!  17 STATUS    JSON Status: the drive and what is in it
//!  18 EJECTED   JSON {"bytes_read": N, "reads": N}: the medium left the drive
//! ```
//!
//! A session's first client message is INSERT, EJECT or STATUS. After an
//! INSERT the client is an NBD server on the NBD messages (docs/media.md);
//! an EJECT later in the same session asks for a clean eject. Message
//! boundaries need not match WebSocket or frame boundaries: [`Decoder`] is
//! incremental and hands NBD payloads on in the pieces they arrived in, so
//! nothing but the small control messages (at most [`MAX_CONTROL`] bytes)
//! is ever buffered.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// type + length.
pub const HEADER_LEN: usize = 5;
/// The largest NBD message payload.
pub const MAX_NBD: usize = 256 * 1024;
/// The largest payload of every other message.
pub const MAX_CONTROL: usize = 4096;
/// The longest medium name.
pub const MAX_NAME: usize = 255;

pub const NBD: u8 = 0;
pub const INSERT: u8 = 1;
pub const EJECT: u8 = 2;
pub const STATUS: u8 = 3;
pub const INSERTED: u8 = 16;
pub const REPORT: u8 = 17;
pub const EJECTED: u8 = 18;

/// Which way a stream goes: each side sends its own types only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToAgent,
    AgentToClient,
}

/// The drive and what is in it, as STATUS answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub guest: String,
    pub drive: String,
    pub medium: Option<Medium>,
}

/// A medium in a drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Medium {
    /// The name its client gave (escaped before it is shown or logged).
    pub name: String,
    pub size: u64,
    /// Bytes the guest read from it so far, and in how many reads.
    pub bytes_read: u64,
    pub reads: u64,
    /// Reads sent to the client and not answered yet.
    #[serde(default)]
    pub in_flight: u64,
    /// Seconds since it was inserted.
    pub inserted_secs: u64,
    /// The session serving it.
    pub session: u64,
}

/// INSERTED's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inserted {
    pub size: u64,
}

/// EJECTED's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ejected {
    pub bytes_read: u64,
    pub reads: u64,
}

/// One decoded message, or a piece of an NBD message's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Part of the NBD stream, in order.
    Nbd(Bytes),
    Insert {
        name: String,
    },
    Eject,
    Status,
    Inserted(Inserted),
    Report(Status),
    Ejected(Ejected),
}

/// Why a media stream cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// A type this build does not know.
    #[error("unknown media message type {0}")]
    Type(u8),
    /// A known type sent the wrong way (a client sending INSERTED).
    #[error("media message type {0} may not be sent this way")]
    Direction(u8),
    /// A payload longer than its type allows.
    #[error("media message type {ty} of {len} bytes exceeds its limit")]
    TooLong { ty: u8, len: u32 },
    /// A payload that must be empty is not.
    #[error("media message type {0} must be empty")]
    NotEmpty(u8),
    /// An INSERT whose name is empty, too long, not UTF-8 or has control
    /// characters.
    #[error("the medium's name must be 1 to {MAX_NAME} bytes of printable UTF-8")]
    Name,
    /// A JSON payload that does not parse as its type.
    #[error("malformed media message type {0}")]
    Json(u8),
}

fn allowed(dir: Direction, ty: u8) -> Result<usize, MediaError> {
    let client = matches!(ty, NBD | INSERT | EJECT | STATUS);
    let agent = matches!(ty, NBD | INSERTED | REPORT | EJECTED);
    if !client && !agent {
        return Err(MediaError::Type(ty));
    }
    let ok = match dir {
        Direction::ClientToAgent => client,
        Direction::AgentToClient => agent,
    };
    if !ok {
        return Err(MediaError::Direction(ty));
    }
    Ok(match ty {
        NBD => MAX_NBD,
        INSERT => MAX_NAME,
        EJECT | STATUS => 0,
        _ => MAX_CONTROL,
    })
}

/// Whether `name` may name a medium: what logs and status show.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(char::is_control)
}

enum State {
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    /// Inside an NBD payload: this many bytes left.
    Nbd(usize),
    /// A control message's payload, buffered (at most [`MAX_CONTROL`]).
    Control {
        ty: u8,
        len: usize,
        data: BytesMut,
    },
}

/// Follows one direction of a media stream.
pub struct Decoder {
    dir: Direction,
    state: State,
}

impl Decoder {
    pub fn new(dir: Direction) -> Decoder {
        Decoder {
            dir,
            state: State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
        }
    }

    /// Which way this decoder reads.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Whether the stream is between messages.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Decodes what `input` holds, appending items to `out`. NBD pieces are
    /// slices of `input`, never copies.
    pub fn feed(&mut self, mut input: Bytes, out: &mut Vec<Item>) -> Result<(), MediaError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Header { buf, have } => {
                    let take = (HEADER_LEN - *have).min(input.len());
                    buf[*have..*have + take].copy_from_slice(&input[..take]);
                    *have += take;
                    input.advance(take);
                    if *have < HEADER_LEN {
                        break;
                    }
                    let ty = buf[0];
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                    let max = allowed(self.dir, ty)?;
                    if len as usize > max {
                        return Err(if max == 0 {
                            MediaError::NotEmpty(ty)
                        } else {
                            MediaError::TooLong { ty, len }
                        });
                    }
                    let len = len as usize;
                    self.state = if ty == NBD {
                        State::Nbd(len)
                    } else {
                        State::Control {
                            ty,
                            len,
                            data: BytesMut::with_capacity(len),
                        }
                    };
                    self.finish(out)?;
                }
                State::Nbd(left) => {
                    let take = (*left).min(input.len());
                    out.push(Item::Nbd(input.split_to(take)));
                    *left -= take;
                    self.finish(out)?;
                }
                State::Control { len, data, .. } => {
                    let take = (*len - data.len()).min(input.len());
                    data.extend_from_slice(&input[..take]);
                    input.advance(take);
                    self.finish(out)?;
                }
            }
        }
        Ok(())
    }

    /// Completes the message being read, if it is whole.
    fn finish(&mut self, out: &mut Vec<Item>) -> Result<(), MediaError> {
        let header = State::Header {
            buf: [0; HEADER_LEN],
            have: 0,
        };
        match &mut self.state {
            State::Nbd(0) => self.state = header,
            State::Control { ty, len, data } if data.len() == *len => {
                let (ty, data) = (*ty, std::mem::take(data));
                self.state = header;
                out.push(decode_control(ty, &data)?);
            }
            _ => {}
        }
        Ok(())
    }
}

fn decode_control(ty: u8, data: &[u8]) -> Result<Item, MediaError> {
    fn json<T: serde::de::DeserializeOwned>(ty: u8, data: &[u8]) -> Result<T, MediaError> {
        serde_json::from_slice(data).map_err(|_| MediaError::Json(ty))
    }
    Ok(match ty {
        INSERT => {
            let name = std::str::from_utf8(data).map_err(|_| MediaError::Name)?;
            if !valid_name(name) {
                return Err(MediaError::Name);
            }
            Item::Insert { name: name.into() }
        }
        EJECT => Item::Eject,
        STATUS => Item::Status,
        INSERTED => Item::Inserted(json(ty, data)?),
        REPORT => Item::Report(json(ty, data)?),
        EJECTED => Item::Ejected(json(ty, data)?),
        other => return Err(MediaError::Type(other)),
    })
}

/// A message's header for a payload of `len` bytes.
pub fn header(ty: u8, len: usize) -> [u8; HEADER_LEN] {
    let l = (len as u32).to_be_bytes();
    [ty, l[0], l[1], l[2], l[3]]
}

/// Encodes an item as one message (an NBD item longer than [`MAX_NBD`]
/// must be cut first: see [`nbd_messages`]).
pub fn encode(item: &Item) -> Bytes {
    let (ty, payload): (u8, Vec<u8>) = match item {
        Item::Nbd(b) => (NBD, b.to_vec()),
        Item::Insert { name } => (INSERT, name.as_bytes().to_vec()),
        Item::Eject => (EJECT, Vec::new()),
        Item::Status => (STATUS, Vec::new()),
        Item::Inserted(i) => (INSERTED, serde_json::to_vec(i).expect("serializes")),
        Item::Report(s) => (REPORT, serde_json::to_vec(s).expect("serializes")),
        Item::Ejected(e) => (EJECTED, serde_json::to_vec(e).expect("serializes")),
    };
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(ty, payload.len()));
    out.extend_from_slice(&payload);
    out.freeze()
}

/// NBD bytes as messages of at most [`MAX_NBD`] bytes each.
pub fn nbd_messages(bytes: &[u8]) -> impl Iterator<Item = Bytes> + '_ {
    bytes.chunks(MAX_NBD).map(|c| {
        let mut out = BytesMut::with_capacity(HEADER_LEN + c.len());
        out.extend_from_slice(&header(NBD, c.len()));
        out.extend_from_slice(c);
        out.freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(dir: Direction, bytes: &[u8], cut: usize) -> Result<Vec<Item>, MediaError> {
        let mut d = Decoder::new(dir);
        let mut out = Vec::new();
        for piece in bytes.chunks(cut.max(1)) {
            d.feed(Bytes::copy_from_slice(piece), &mut out)?;
        }
        // Join the NBD pieces, to compare with what was sent.
        let mut joined: Vec<Item> = Vec::new();
        for item in out {
            match (joined.last_mut(), item) {
                (Some(Item::Nbd(prev)), Item::Nbd(more)) => {
                    let mut b = BytesMut::from(&prev[..]);
                    b.extend_from_slice(&more);
                    *prev = b.freeze();
                }
                (_, item) => joined.push(item),
            }
        }
        Ok(joined)
    }

    #[test]
    fn the_wire_bytes_are_what_docs_media_md_says() {
        assert_eq!(
            &encode(&Item::Insert {
                name: "x.iso".into()
            })[..],
            b"\x01\0\0\0\x05x.iso"
        );
        assert_eq!(&encode(&Item::Eject)[..], b"\x02\0\0\0\0");
        assert_eq!(
            &encode(&Item::Inserted(Inserted { size: 2048 }))[..],
            b"\x10\0\0\0\x0d{\"size\":2048}"
        );
        let s = Status {
            guest: "demo".into(),
            drive: "media".into(),
            medium: None,
        };
        assert_eq!(
            &encode(&Item::Report(s))[5..],
            br#"{"guest":"demo","drive":"media","medium":null}"#
        );
    }

    #[test]
    fn items_round_trip_in_any_pieces() {
        let items = vec![
            Item::Insert {
                name: "débian 12.iso".into(),
            },
            Item::Nbd(Bytes::from(vec![7u8; 1000])),
            Item::Eject,
            Item::Status,
        ];
        let wire: Vec<u8> = items.iter().flat_map(|i| encode(i).to_vec()).collect();
        for cut in [1, 2, 5, 6, 999, 5000] {
            assert_eq!(
                decode_all(Direction::ClientToAgent, &wire, cut).unwrap(),
                items
            );
        }
        let back = vec![
            Item::Nbd(Bytes::from_static(b"NBDMAGIC")),
            Item::Inserted(Inserted { size: 1 }),
            Item::Ejected(Ejected {
                bytes_read: 5,
                reads: 1,
            }),
        ];
        let wire: Vec<u8> = back.iter().flat_map(|i| encode(i).to_vec()).collect();
        assert_eq!(
            decode_all(Direction::AgentToClient, &wire, 3).unwrap(),
            back
        );
    }

    #[test]
    fn nbd_bytes_are_cut_into_messages_and_passed_on_unbuffered() {
        let big = vec![1u8; 2 * MAX_NBD + 3];
        let msgs: Vec<Bytes> = nbd_messages(&big).collect();
        assert_eq!(msgs.len(), 3);
        let mut d = Decoder::new(Direction::ClientToAgent);
        let mut out = Vec::new();
        d.feed(msgs[0].slice(0..HEADER_LEN + 10), &mut out).unwrap();
        // The ten bytes that came are handed on at once.
        assert_eq!(out, vec![Item::Nbd(Bytes::from(vec![1u8; 10]))]);
        assert!(!d.at_boundary());
    }

    #[test]
    fn bad_messages_are_refused_each_with_its_reason() {
        let refuse = |dir, bytes: &[u8]| decode_all(dir, bytes, 100).unwrap_err();
        use Direction::*;
        assert_eq!(refuse(ClientToAgent, b"\x09\0\0\0\0"), MediaError::Type(9));
        assert_eq!(
            refuse(ClientToAgent, b"\x10\0\0\0\x02{}"),
            MediaError::Direction(16)
        );
        assert_eq!(
            refuse(AgentToClient, b"\x01\0\0\0\x01a"),
            MediaError::Direction(1)
        );
        assert_eq!(
            refuse(ClientToAgent, b"\0\xff\xff\xff\xff"),
            MediaError::TooLong {
                ty: 0,
                len: u32::MAX
            }
        );
        assert_eq!(
            refuse(ClientToAgent, b"\x02\0\0\0\x01x"),
            MediaError::NotEmpty(2)
        );
        assert_eq!(refuse(ClientToAgent, b"\x01\0\0\0\0"), MediaError::Name);
        assert_eq!(
            refuse(ClientToAgent, b"\x01\0\0\0\x03a\x1bb"),
            MediaError::Name
        );
        assert_eq!(
            refuse(ClientToAgent, b"\x01\0\0\0\x02\xff\xfe"),
            MediaError::Name
        );
        assert_eq!(
            refuse(AgentToClient, b"\x10\0\0\0\x02[]"),
            MediaError::Json(16)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused_and_nbd_passes_whole(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 1usize..40,
            client in any::<bool>(),
        ) {
            let dir = if client { Direction::ClientToAgent } else { Direction::AgentToClient };
            let _ = decode_all(dir, &bytes, cut);
        }

        #[test]
        fn nbd_payloads_come_out_as_they_went_in(
            payload in proptest::collection::vec(any::<u8>(), 0..3000),
            cut in 1usize..500,
        ) {
            let wire: Vec<u8> = nbd_messages(&payload).flat_map(|m| m.to_vec()).collect();
            let items = decode_all(Direction::AgentToClient, &wire, cut).unwrap();
            let got: Vec<u8> = items.iter().flat_map(|i| match i {
                Item::Nbd(b) => b.to_vec(),
                other => panic!("{other:?}"),
            }).collect();
            prop_assert_eq!(got, payload);
        }
    }
}
