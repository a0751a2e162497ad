//! The header that opens every gateway–agent stream.
//!
//! ```text
//! "VMG" | version u8 (=1) | body length u16 BE | body
//! body: kind u8 | flags u8 | session id u64 BE | guest len u8 | guest | channel len u8 | channel
//! flags: bit 0 read-only, bit 1 force (take the keyboard / the channel over)
//! ```
//!
//! Decoding is incremental ([`OpenRequest::decode`] says how many bytes it
//! used, or that it needs more) and bounded by [`MAX_HEADER_LEN`].

use crate::valid_name;

const MAGIC: &[u8; 3] = b"VMG";
const VERSION: u8 = 1;
const FLAG_READ_ONLY: u8 = 1;
const FLAG_FORCE: u8 = 2;
/// magic + version + body length.
const PREFIX_LEN: usize = 6;

/// The longest guest or channel name.
pub const MAX_NAME_LEN: usize = 128;
/// The longest header on the wire; anything longer is refused before it is
/// buffered.
pub const MAX_HEADER_LEN: usize = PREFIX_LEN + 12 + 2 * MAX_NAME_LEN;

/// What a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The agent pushes its guest inventory on this stream.
    Inventory,
    /// A console session on one channel of one guest.
    Console,
}

/// Whether a session may send input to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Interactive,
    ReadOnly,
}

/// The request that opens a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub kind: StreamKind,
    /// Gateway-assigned id, so the agent's logs name the same session.
    pub session: u64,
    /// Empty for [`StreamKind::Inventory`].
    pub guest: String,
    /// Empty for [`StreamKind::Inventory`].
    pub channel: String,
    pub mode: Mode,
    /// Take the keyboard (serial) or the channel over from its holder.
    pub force: bool,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The stream does not start with `VMG`.
    #[error("not a vmgate stream (bad magic)")]
    BadMagic,
    /// A version this build does not speak.
    #[error("unsupported stream header version {0}")]
    Version(u8),
    /// The declared body length exceeds the limit.
    #[error("stream header too long ({0} bytes)")]
    TooLong(usize),
    /// The body ends early or has bytes left over.
    #[error("stream header length does not match its fields")]
    Length,
    /// A stream kind this build does not know.
    #[error("unknown stream kind {0}")]
    Kind(u8),
    /// Flag bits this build does not know.
    #[error("unknown stream header flags {0:#x}")]
    Flags(u8),
    /// A guest or channel name outside `[A-Za-z0-9._:-]{1,128}`.
    #[error("invalid guest or channel name")]
    Name,
}

impl OpenRequest {
    /// A request for the inventory stream.
    pub fn inventory() -> OpenRequest {
        OpenRequest {
            kind: StreamKind::Inventory,
            session: 0,
            guest: String::new(),
            channel: String::new(),
            mode: Mode::ReadOnly,
            force: false,
        }
    }

    /// The header's bytes. Names must already be valid ([`crate::valid_name`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(12 + self.guest.len() + self.channel.len());
        body.push(match self.kind {
            StreamKind::Inventory => 0,
            StreamKind::Console => 1,
        });
        let mut flags = 0;
        if self.mode == Mode::ReadOnly {
            flags |= FLAG_READ_ONLY;
        }
        if self.force {
            flags |= FLAG_FORCE;
        }
        body.push(flags);
        body.extend_from_slice(&self.session.to_be_bytes());
        for name in [&self.guest, &self.channel] {
            let n = name.len().min(MAX_NAME_LEN);
            body.push(n as u8);
            body.extend_from_slice(&name.as_bytes()[..n]);
        }
        let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a header from the start of `buf`: `Ok(None)` when more bytes
    /// are needed, else the request and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(OpenRequest, usize)>, HeaderError> {
        // Check what is already there, so garbage is refused early.
        let have = buf.len().min(MAGIC.len());
        if buf[..have] != MAGIC[..have] {
            return Err(HeaderError::BadMagic);
        }
        if buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        if buf[3] != VERSION {
            return Err(HeaderError::Version(buf[3]));
        }
        let body_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
        if PREFIX_LEN + body_len > MAX_HEADER_LEN {
            return Err(HeaderError::TooLong(PREFIX_LEN + body_len));
        }
        if buf.len() < PREFIX_LEN + body_len {
            return Ok(None);
        }
        let body = &buf[PREFIX_LEN..PREFIX_LEN + body_len];
        let req = Self::decode_body(body)?;
        Ok(Some((req, PREFIX_LEN + body_len)))
    }

    fn decode_body(body: &[u8]) -> Result<OpenRequest, HeaderError> {
        if body.len() < 12 {
            return Err(HeaderError::Length);
        }
        let kind = match body[0] {
            0 => StreamKind::Inventory,
            1 => StreamKind::Console,
            k => return Err(HeaderError::Kind(k)),
        };
        let flags = body[1];
        if flags & !(FLAG_READ_ONLY | FLAG_FORCE) != 0 {
            return Err(HeaderError::Flags(flags));
        }
        let session = u64::from_be_bytes(body[2..10].try_into().expect("8 bytes"));
        let mut rest = &body[10..];
        let mut names = [String::new(), String::new()];
        for name in &mut names {
            let (&len, tail) = rest.split_first().ok_or(HeaderError::Length)?;
            let len = len as usize;
            if tail.len() < len {
                return Err(HeaderError::Length);
            }
            let s = std::str::from_utf8(&tail[..len]).map_err(|_| HeaderError::Name)?;
            *name = s.to_owned();
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Err(HeaderError::Length);
        }
        let [guest, channel] = names;
        if kind == StreamKind::Console && !(valid_name(&guest) && valid_name(&channel)) {
            return Err(HeaderError::Name);
        }
        Ok(OpenRequest {
            kind,
            session,
            guest,
            channel,
            mode: if flags & FLAG_READ_ONLY != 0 {
                Mode::ReadOnly
            } else {
                Mode::Interactive
            },
            force: flags & FLAG_FORCE != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> OpenRequest {
        OpenRequest {
            kind: StreamKind::Console,
            session: 42,
            guest: "demo".into(),
            channel: "serial0".into(),
            mode: Mode::ReadOnly,
            force: true,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = sample().encode();
        let (req, used) = OpenRequest::decode(&bytes).unwrap().unwrap();
        assert_eq!(req, sample());
        assert_eq!(used, bytes.len());
        let inv = OpenRequest::inventory();
        let (back, _) = OpenRequest::decode(&inv.encode()).unwrap().unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn partial_input_asks_for_more_and_trailing_bytes_are_left() {
        let mut bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert_eq!(OpenRequest::decode(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        let n = bytes.len();
        bytes.extend_from_slice(b"payload");
        assert_eq!(OpenRequest::decode(&bytes).unwrap().unwrap().1, n);
    }

    #[test]
    fn malformed_headers_are_refused_each_with_its_reason() {
        assert_eq!(
            OpenRequest::decode(b"GET / HTTP/1.1"),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(OpenRequest::decode(b"VX"), Err(HeaderError::BadMagic));
        assert_eq!(
            OpenRequest::decode(b"VMG\x02\0\0"),
            Err(HeaderError::Version(2))
        );
        assert!(matches!(
            OpenRequest::decode(b"VMG\x01\xff\xff"),
            Err(HeaderError::TooLong(_))
        ));
        let good = sample().encode();
        let mut kind = good.clone();
        kind[6] = 9;
        assert_eq!(OpenRequest::decode(&kind), Err(HeaderError::Kind(9)));
        let mut flags = good.clone();
        flags[7] = 0x80;
        assert_eq!(OpenRequest::decode(&flags), Err(HeaderError::Flags(0x80)));
        let mut name = good.clone();
        name[17] = b'/';
        assert_eq!(OpenRequest::decode(&name), Err(HeaderError::Name));
        // Body length one longer than the fields: leftover byte.
        let mut long = good.clone();
        long[5] += 1;
        long.push(0);
        assert_eq!(OpenRequest::decode(&long), Err(HeaderError::Length));
        // Body length one shorter: a name runs past the end.
        let mut short = good.clone();
        short[5] -= 1;
        assert_eq!(OpenRequest::decode(&short), Err(HeaderError::Length));
    }

    /// A gateway can open two kinds of stream on an agent, and no other:
    /// the guest inventory and a console's bytes. No kind byte reaches QMP,
    /// libvirt or anything else on the node.
    #[test]
    fn only_inventory_and_console_streams_can_be_opened() {
        let good = sample().encode();
        let opened: Vec<(u8, StreamKind)> = (0..=u8::MAX)
            .filter_map(|k| {
                let mut h = good.clone();
                h[6] = k;
                match OpenRequest::decode(&h) {
                    Ok(Some((req, _))) => Some((k, req.kind)),
                    Err(e) => {
                        assert_eq!(e, HeaderError::Kind(k));
                        None
                    }
                    Ok(None) => panic!("kind {k}: a whole header asked for more"),
                }
            })
            .collect();
        assert_eq!(
            opened,
            [(0, StreamKind::Inventory), (1, StreamKind::Console)]
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = OpenRequest::decode(&bytes);
            let mut prefixed = b"VMG\x01".to_vec();
            prefixed.extend_from_slice(&bytes);
            if let Ok(Some((_, used))) = OpenRequest::decode(&prefixed) {
                prop_assert!(used <= prefixed.len());
            }
        }

        #[test]
        fn valid_requests_round_trip(guest in "[a-z0-9._:-]{1,128}", channel in "[a-z0-9.]{1,20}",
                                     session: u64, ro: bool, force: bool) {
            let req = OpenRequest { kind: StreamKind::Console, session, guest, channel,
                mode: if ro { Mode::ReadOnly } else { Mode::Interactive }, force };
            let bytes = req.encode();
            prop_assert!(bytes.len() <= MAX_HEADER_LEN);
            prop_assert_eq!(OpenRequest::decode(&bytes).unwrap().unwrap().0, req);
        }
    }
}
