//! NBD's numbers, and the two fixed-size messages of the transmission
//! phase (a request, a simple reply) as plain functions over bytes.

/// `NBDMAGIC`: the server's first eight bytes.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: after the magic in a newstyle greeting, and before every
/// option the client sends.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Before every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Before every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Before every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Before every structured reply (never negotiated here).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server): fixed newstyle, and may omit the 124 zeroes.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags: the same two, as the client's answer.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// What every export here advertises: read-only, nothing else to send.
pub const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) | 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;

/// Information types of `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags this server knows (FUA, NO_HOLE, DF, REQ_ONE,
/// FAST_ZERO); others are refused with `EINVAL`.
pub const CMD_FLAGS_KNOWN: u16 = 0x1f;

/// Errors a reply carries (Linux errno values, as NBD defines them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

/// The longest read served in one request: QEMU's own maximum (32 MiB),
/// advertised as the maximum block size. Longer requests get `EINVAL`.
pub const MAX_REQUEST: u32 = 32 << 20;
/// The preferred block size advertised: a CD-ROM's sector.
pub const PREFERRED_BLOCK: u32 = 2048;

/// The longest option payload accepted (the spec's export name limit is
/// 4096 bytes; `NBD_OPT_GO` adds a few).
pub const MAX_OPTION_LEN: u32 = 4096 + 64;

/// A request's size on the wire.
pub const REQUEST_LEN: usize = 28;
/// A simple reply's size on the wire (without read data).
pub const REPLY_LEN: usize = 16;

/// One transmission request, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    /// The client's cookie, echoed in the reply.
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

/// Why bytes are not a request or a reply. The stream cannot be followed
/// after any of these: the connection must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("bad NBD request magic {0:#010x}")]
    RequestMagic(u32),
    #[error("bad NBD reply magic {0:#010x}")]
    ReplyMagic(u32),
}

impl Request {
    /// Decodes a request from exactly [`REQUEST_LEN`] bytes.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, FramingError> {
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != REQUEST_MAGIC {
            return Err(FramingError::RequestMagic(magic));
        }
        Ok(Request {
            flags: u16::from_be_bytes([b[4], b[5]]),
            command: u16::from_be_bytes([b[6], b[7]]),
            handle: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            length: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Whether a payload of `length` bytes follows the request.
    pub fn has_payload(&self) -> bool {
        self.command == CMD_WRITE
    }
}

/// A simple reply's header: `error` 0 for success (a read's data follows).
pub fn simple_reply(handle: u64, error: u32) -> [u8; REPLY_LEN] {
    let mut out = [0u8; REPLY_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out
}

/// Decodes a simple reply's header: `(error, handle)`.
pub fn decode_simple_reply(b: &[u8; REPLY_LEN]) -> Result<(u32, u64), FramingError> {
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(FramingError::ReplyMagic(magic));
    }
    Ok((
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
    ))
}

/// An option reply: header and payload.
pub fn option_reply(option: u32, reply: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An option as a client sends it.
pub fn option(option: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of `NBD_OPT_GO` / `NBD_OPT_INFO`: the export name and the
/// information types asked for.
pub fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + name.len() + 2 * infos.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

/// A byte buffer that fills up to a fixed size: the pieces of a message
/// that arrive in several reads.
#[derive(Debug)]
pub(crate) struct Fill<const N: usize> {
    buf: [u8; N],
    have: usize,
}

impl<const N: usize> Fill<N> {
    pub(crate) fn new() -> Self {
        Fill {
            buf: [0; N],
            have: 0,
        }
    }

    /// Takes what it needs from the front of `input`; `Some` once full
    /// (and empty again).
    pub(crate) fn fill(&mut self, input: &mut &[u8]) -> Option<[u8; N]> {
        let take = (N - self.have).min(input.len());
        self.buf[self.have..self.have + take].copy_from_slice(&input[..take]);
        self.have += take;
        *input = &input[take..];
        if self.have == N {
            self.have = 0;
            Some(self.buf)
        } else {
            None
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.have == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_a_bad_magic_is_named() {
        let r = Request {
            flags: 1,
            command: CMD_READ,
            handle: 0xdead_beef,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[0] = 0;
        assert_eq!(
            Request::decode(&bad),
            Err(FramingError::RequestMagic(0x0060_9513))
        );
        assert_eq!(
            decode_simple_reply(&simple_reply(7, EINVAL)),
            Ok((EINVAL, 7))
        );
    }

    #[test]
    fn fill_collects_across_pieces() {
        let mut f = Fill::<4>::new();
        let mut a: &[u8] = &[1, 2];
        assert_eq!(f.fill(&mut a), None);
        assert!(a.is_empty() && !f.is_empty());
        let mut b: &[u8] = &[3, 4, 5];
        assert_eq!(f.fill(&mut b), Some([1, 2, 3, 4]));
        assert_eq!(b, &[5]);
        assert!(f.is_empty());
    }
}
