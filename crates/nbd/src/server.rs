//! A read-only NBD server, sans-IO.
//!
//! [`Server::new`] queues the greeting; feed what the client sends to
//! [`Server::receive`], send what [`Server::take_output`] gives back, and
//! serve the [`Event::Read`]s it hands out with [`read_reply`] followed by
//! the data (or [`error_reply`]). Everything else is answered here:
//!
//! * handshake (fixed newstyle only): `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO`
//!   and `NBD_OPT_INFO` (the export's size, read-only, and on request its
//!   block sizes), `NBD_OPT_LIST`, `NBD_OPT_ABORT`; any other option is
//!   answered `NBD_REP_ERR_UNSUP`, which is what makes QEMU fall back to
//!   simple replies and, for a server without `NBD_OPT_GO`, to
//!   `NBD_OPT_EXPORT_NAME`. At most [`MAX_OPTIONS`] options, each at most
//!   [`MAX_OPTION_LEN`] bytes.
//! * transmission: a read inside the export and at most [`MAX_REQUEST`]
//!   bytes long becomes an event; a read past the end or longer gets
//!   `EINVAL`; writes, trims and write-zeroes get `EPERM` (a write's
//!   payload is skipped as it arrives, never buffered); a flush succeeds;
//!   anything else gets `EINVAL`; `NBD_CMD_DISC` ends the connection.
//!
//! The input buffer holds at most one option (bounded) or one request
//! header: memory does not grow with what a client sends. Offsets and
//! lengths are checked with checked arithmetic. A [`ServerError`] means the
//! stream cannot be followed: send the output, then close.

use std::collections::VecDeque;

use crate::proto::{self, Fill, Request};
pub use crate::proto::{MAX_OPTION_LEN, MAX_REQUEST};

/// The most options a client may send before transmission.
pub const MAX_OPTIONS: u32 = 32;

/// What is served: one read-only export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Its name for `NBD_OPT_LIST`; a client may also ask for `""`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What the caller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The handshake is over: requests follow.
    Transmission,
    /// Read `length` bytes at `offset` (both checked: inside the export)
    /// and answer with [`read_reply`] and the data, or [`error_reply`].
    Read {
        handle: u64,
        offset: u64,
        length: u32,
    },
    /// The client said goodbye (`NBD_CMD_DISC`, `NBD_OPT_ABORT`): send the
    /// output, then close.
    Disconnect,
}

/// Why the server stops following the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// The client's flags lack fixed newstyle, or carry unknown bits.
    #[error("client flags {0:#x}: only fixed newstyle is served")]
    ClientFlags(u32),
    /// An option did not start with `IHAVEOPT`.
    #[error("bad NBD option magic {0:#018x}")]
    OptionMagic(u64),
    /// An option's declared payload exceeds [`MAX_OPTION_LEN`].
    #[error("NBD option of {0} bytes exceeds the limit")]
    OptionTooLong(u32),
    /// More than [`MAX_OPTIONS`] options.
    #[error("more than {MAX_OPTIONS} NBD options")]
    TooManyOptions,
    /// A request or reply that does not frame.
    #[error(transparent)]
    Framing(#[from] proto::FramingError),
}

enum State {
    ClientFlags(Fill<4>),
    OptionHeader(Fill<16>),
    /// An option's payload, `len` bytes (at most [`MAX_OPTION_LEN`]).
    OptionData {
        option: u32,
        len: usize,
        data: Vec<u8>,
    },
    Request(Fill<{ proto::REQUEST_LEN }>),
    /// A refused write's payload: this many bytes to drop.
    Skip(u64),
    /// After a disconnect or an error: input is ignored.
    Done,
}

/// A read-only NBD server for one connection.
pub struct Server {
    export: Export,
    state: State,
    /// Stop at [`Event::Transmission`] and leave the rest of the input to
    /// the caller (the agent hands the transmission phase over).
    handshake_only: bool,
    no_zeroes: bool,
    options: u32,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// Requests this server answered with an error, for the caller's log.
    pub refused: u64,
}

/// The header of a successful read's reply; the data follows.
pub fn read_reply(handle: u64) -> [u8; proto::REPLY_LEN] {
    proto::simple_reply(handle, 0)
}

/// A reply that fails a request with `errno` (e.g. [`proto::EIO`] when the
/// image cannot be read).
pub fn error_reply(handle: u64, errno: u32) -> [u8; proto::REPLY_LEN] {
    proto::simple_reply(handle, errno)
}

impl Server {
    /// A server for `export`, its greeting queued in the output.
    pub fn new(export: Export) -> Server {
        let mut out = Vec::with_capacity(18);
        out.extend_from_slice(&proto::NBD_MAGIC.to_be_bytes());
        out.extend_from_slice(&proto::OPTS_MAGIC.to_be_bytes());
        out.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
        Server {
            export,
            state: State::ClientFlags(Fill::new()),
            handshake_only: false,
            no_zeroes: false,
            options: 0,
            out,
            events: VecDeque::new(),
            refused: 0,
        }
    }

    /// A server that answers the handshake only: [`Server::receive`] stops
    /// right after it and says how much input it used.
    pub fn handshake_only(export: Export) -> Server {
        Server {
            handshake_only: true,
            ..Server::new(export)
        }
    }

    /// Bytes to send to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The next thing to act on.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the connection is over (disconnect, abort, or an error).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Follows what the client sent. Returns how many bytes were used: all
    /// of them, except for a [`Server::handshake_only`] server, which stops
    /// after the handshake.
    pub fn receive(&mut self, input: &[u8]) -> Result<usize, ServerError> {
        let total = input.len();
        let mut rest = input;
        while !rest.is_empty() {
            if self.handshake_only && matches!(self.state, State::Request(_)) {
                return Ok(total - rest.len());
            }
            if let Err(e) = self.step(&mut rest) {
                self.state = State::Done;
                return Err(e);
            }
        }
        Ok(total)
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<(), ServerError> {
        match &mut self.state {
            State::ClientFlags(f) => {
                if let Some(b) = f.fill(input) {
                    let flags = u32::from_be_bytes(b);
                    let known = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
                    if flags & proto::FLAG_C_FIXED_NEWSTYLE == 0 || flags & !known != 0 {
                        return Err(ServerError::ClientFlags(flags));
                    }
                    self.no_zeroes = flags & proto::FLAG_C_NO_ZEROES != 0;
                    self.state = State::OptionHeader(Fill::new());
                }
            }
            State::OptionHeader(f) => {
                if let Some(b) = f.fill(input) {
                    let magic = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
                    if magic != proto::OPTS_MAGIC {
                        return Err(ServerError::OptionMagic(magic));
                    }
                    self.options += 1;
                    if self.options > MAX_OPTIONS {
                        return Err(ServerError::TooManyOptions);
                    }
                    let option = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
                    let len = u32::from_be_bytes(b[12..16].try_into().expect("4 bytes"));
                    if len > MAX_OPTION_LEN {
                        return Err(ServerError::OptionTooLong(len));
                    }
                    self.state = State::OptionData {
                        option,
                        len: len as usize,
                        data: Vec::with_capacity(len as usize),
                    };
                    // An empty payload is complete at once.
                    self.finish_option();
                }
            }
            State::OptionData { len, data, .. } => {
                let take = (*len - data.len()).min(input.len());
                data.extend_from_slice(&input[..take]);
                *input = &input[take..];
                self.finish_option();
            }
            State::Request(f) => {
                if let Some(b) = f.fill(input) {
                    let req = Request::decode(&b)?;
                    self.request(req);
                }
            }
            State::Skip(n) => {
                let take = (*n).min(input.len() as u64);
                *n -= take;
                *input = &input[take as usize..];
                if *n == 0 {
                    self.state = State::Request(Fill::new());
                }
            }
            State::Done => *input = &[],
        }
        Ok(())
    }

    /// Answers the option being read once its payload is complete.
    fn finish_option(&mut self) {
        let State::OptionData { option, len, data } = &mut self.state else {
            return;
        };
        if data.len() < *len {
            return;
        }
        let (option, data) = (*option, std::mem::take(data));
        self.state = State::OptionHeader(Fill::new());
        match option {
            proto::OPT_EXPORT_NAME => {
                if !self.name_served(&data) {
                    // No error reply exists for this option: the spec says
                    // to close.
                    self.state = State::Done;
                    self.events.push_back(Event::Disconnect);
                    return;
                }
                self.out.extend_from_slice(&self.export.size.to_be_bytes());
                self.out
                    .extend_from_slice(&proto::TRANSMISSION_FLAGS.to_be_bytes());
                if !self.no_zeroes {
                    self.out.extend_from_slice(&[0u8; 124]);
                }
                self.start_transmission();
            }
            proto::OPT_GO | proto::OPT_INFO => self.go_or_info(option, &data),
            proto::OPT_LIST => {
                if !data.is_empty() {
                    self.reply_error(option, proto::REP_ERR_INVALID, "LIST takes no data");
                    return;
                }
                let name = self.export.name.as_bytes();
                let mut p = Vec::with_capacity(4 + name.len());
                p.extend_from_slice(&(name.len() as u32).to_be_bytes());
                p.extend_from_slice(name);
                self.out
                    .extend(proto::option_reply(option, proto::REP_SERVER, &p));
                self.out
                    .extend(proto::option_reply(option, proto::REP_ACK, &[]));
            }
            proto::OPT_ABORT => {
                self.out
                    .extend(proto::option_reply(option, proto::REP_ACK, &[]));
                self.state = State::Done;
                self.events.push_back(Event::Disconnect);
            }
            proto::OPT_STARTTLS => self.reply_error(
                option,
                proto::REP_ERR_POLICY,
                "no TLS here: the link is vmgate's",
            ),
            _ => self.reply_error(option, proto::REP_ERR_UNSUP, ""),
        }
    }

    /// Whether a client asking for `name` gets the export: its own name, or
    /// the default `""`.
    fn name_served(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.export.name.as_bytes()
    }

    fn go_or_info(&mut self, option: u32, data: &[u8]) {
        // name length u32 | name | count u16 | count × info type u16
        let parsed = (|| {
            let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
            let name_end = 4usize.checked_add(name_len)?;
            let name = data.get(4..name_end)?;
            let count_end = name_end.checked_add(2)?;
            let count =
                u16::from_be_bytes(data.get(name_end..count_end)?.try_into().ok()?) as usize;
            let infos = data.get(count_end..)?;
            if infos.len() != count.checked_mul(2)? {
                return None;
            }
            let infos: Vec<u16> = infos
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Some((name, infos))
        })();
        let Some((name, infos)) = parsed else {
            self.reply_error(option, proto::REP_ERR_INVALID, "malformed GO/INFO");
            return;
        };
        if !self.name_served(name) {
            self.reply_error(option, proto::REP_ERR_UNKNOWN, "no such export");
            return;
        }
        let mut export = Vec::with_capacity(12);
        export.extend_from_slice(&proto::INFO_EXPORT.to_be_bytes());
        export.extend_from_slice(&self.export.size.to_be_bytes());
        export.extend_from_slice(&proto::TRANSMISSION_FLAGS.to_be_bytes());
        self.out
            .extend(proto::option_reply(option, proto::REP_INFO, &export));
        if infos.contains(&proto::INFO_BLOCK_SIZE) {
            let mut sizes = Vec::with_capacity(14);
            sizes.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
            sizes.extend_from_slice(&1u32.to_be_bytes());
            sizes.extend_from_slice(&proto::PREFERRED_BLOCK.to_be_bytes());
            sizes.extend_from_slice(&MAX_REQUEST.to_be_bytes());
            self.out
                .extend(proto::option_reply(option, proto::REP_INFO, &sizes));
        }
        self.out
            .extend(proto::option_reply(option, proto::REP_ACK, &[]));
        if option == proto::OPT_GO {
            self.start_transmission();
        }
    }

    fn reply_error(&mut self, option: u32, error: u32, text: &str) {
        self.out
            .extend(proto::option_reply(option, error, text.as_bytes()));
    }

    fn start_transmission(&mut self) {
        self.state = State::Request(Fill::new());
        self.events.push_back(Event::Transmission);
    }

    fn refuse(&mut self, handle: u64, errno: u32) {
        self.refused = self.refused.saturating_add(1);
        self.out.extend_from_slice(&error_reply(handle, errno));
    }

    fn request(&mut self, req: Request) {
        self.state = State::Request(Fill::new());
        if req.flags & !proto::CMD_FLAGS_KNOWN != 0 {
            self.refuse(req.handle, proto::EINVAL);
        } else {
            match req.command {
                proto::CMD_READ => {
                    let inside = req
                        .offset
                        .checked_add(u64::from(req.length))
                        .is_some_and(|end| end <= self.export.size);
                    if req.length == 0 || req.length > MAX_REQUEST || !inside {
                        self.refuse(req.handle, proto::EINVAL);
                    } else {
                        self.events.push_back(Event::Read {
                            handle: req.handle,
                            offset: req.offset,
                            length: req.length,
                        });
                    }
                }
                proto::CMD_WRITE | proto::CMD_TRIM | proto::CMD_WRITE_ZEROES => {
                    self.refuse(req.handle, proto::EPERM)
                }
                proto::CMD_FLUSH => self
                    .out
                    .extend_from_slice(&proto::simple_reply(req.handle, 0)),
                proto::CMD_DISC => {
                    self.state = State::Done;
                    self.events.push_back(Event::Disconnect);
                    return;
                }
                _ => self.refuse(req.handle, proto::EINVAL),
            }
        }
        if req.has_payload() && req.length > 0 {
            self.state = State::Skip(u64::from(req.length));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;
    use proptest::prelude::*;

    const SIZE: u64 = 10 * 2048 + 100;

    fn export() -> Export {
        Export {
            name: "x.iso".into(),
            size: SIZE,
        }
    }

    /// A server past the client flags.
    fn negotiating(flags: u32) -> Server {
        let mut s = Server::new(export());
        let greeting = s.take_output();
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        assert_eq!(&greeting[16..18], &[0, 3]);
        assert_eq!(s.receive(&flags.to_be_bytes()), Ok(4));
        s
    }

    /// Splits option replies: (option, type, payload).
    fn replies(mut out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            assert_eq!(&out[0..8], &REPLY_MAGIC.to_be_bytes());
            let opt = u32::from_be_bytes(out[8..12].try_into().unwrap());
            let ty = u32::from_be_bytes(out[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
            v.push((opt, ty, out[20..20 + len].to_vec()));
            out = &out[20 + len..];
        }
        v
    }

    /// A server in transmission, its output taken.
    fn transmitting() -> Server {
        let mut s = negotiating(3);
        s.receive(&option(OPT_GO, &go_payload("", &[]))).unwrap();
        s.take_output();
        assert_eq!(s.next_event(), Some(Event::Transmission));
        s
    }

    fn read(handle: u64, offset: u64, length: u32) -> [u8; REQUEST_LEN] {
        Request {
            flags: 0,
            command: CMD_READ,
            handle,
            offset,
            length,
        }
        .encode()
    }

    #[test]
    fn qemu_s_handshake_structured_replies_refused_then_go_with_block_sizes() {
        let mut s = negotiating(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        let mut input = option(OPT_STRUCTURED_REPLY, &[]);
        input.extend(option(OPT_GO, &go_payload("", &[INFO_BLOCK_SIZE])));
        // In one piece or byte by byte, the same answer.
        for split in [false, true] {
            let mut s2 = negotiating(3);
            if split {
                for b in &input {
                    s2.receive(std::slice::from_ref(b)).unwrap();
                }
            } else {
                s2.receive(&input).unwrap();
            }
            let r = replies(&s2.take_output());
            assert_eq!(r[0].0, OPT_STRUCTURED_REPLY);
            assert_eq!(r[0].1, REP_ERR_UNSUP);
            assert_eq!(r[1].1, REP_INFO);
            let mut want = vec![0, 0];
            want.extend_from_slice(&SIZE.to_be_bytes());
            want.extend_from_slice(&[0, 3]);
            assert_eq!(r[1].2, want, "size and read-only");
            assert_eq!(r[2].1, REP_INFO);
            assert_eq!(&r[2].2[0..2], &[0, 3], "block sizes");
            assert_eq!(
                u32::from_be_bytes(r[2].2[10..14].try_into().unwrap()),
                MAX_REQUEST
            );
            assert_eq!((r[3].0, r[3].1), (OPT_GO, REP_ACK));
            assert_eq!(s2.next_event(), Some(Event::Transmission));
        }
        s.receive(&input).unwrap();
        assert_eq!(s.next_event(), Some(Event::Transmission));
    }

    #[test]
    fn export_name_answers_with_or_without_the_zeroes() {
        for (flags, len) in [(1u32, 8 + 2 + 124), (3, 8 + 2)] {
            let mut s = negotiating(flags);
            s.receive(&option(OPT_EXPORT_NAME, b"x.iso")).unwrap();
            let out = s.take_output();
            assert_eq!(out.len(), len);
            assert_eq!(&out[0..8], &SIZE.to_be_bytes());
            assert_eq!(&out[8..10], &TRANSMISSION_FLAGS.to_be_bytes());
            assert_eq!(s.next_event(), Some(Event::Transmission));
        }
        // Another name: no error reply exists for this option, so it ends.
        let mut s = negotiating(3);
        s.receive(&option(OPT_EXPORT_NAME, b"other")).unwrap();
        assert!(s.take_output().is_empty());
        assert_eq!(s.next_event(), Some(Event::Disconnect));
        assert!(s.is_done());
    }

    #[test]
    fn list_info_abort_and_unknown_options() {
        let mut s = negotiating(3);
        s.receive(&option(OPT_LIST, &[])).unwrap();
        s.receive(&option(OPT_INFO, &go_payload("x.iso", &[])))
            .unwrap();
        s.receive(&option(OPT_INFO, &go_payload("nope", &[])))
            .unwrap();
        s.receive(&option(OPT_INFO, &[0, 0, 0, 9, b'a'])).unwrap();
        s.receive(&option(99, b"whatever")).unwrap();
        s.receive(&option(OPT_STARTTLS, &[])).unwrap();
        let r = replies(&s.take_output());
        let types: Vec<u32> = r.iter().map(|r| r.1).collect();
        assert_eq!(
            types,
            [
                REP_SERVER,
                REP_ACK,
                REP_INFO,
                REP_ACK,
                REP_ERR_UNKNOWN,
                REP_ERR_INVALID,
                REP_ERR_UNSUP,
                REP_ERR_POLICY
            ]
        );
        assert_eq!(&r[0].2[4..], b"x.iso");
        // INFO does not start transmission.
        assert_eq!(s.next_event(), None);
        s.receive(&option(OPT_ABORT, &[])).unwrap();
        assert_eq!(replies(&s.take_output())[0].1, REP_ACK);
        assert_eq!(s.next_event(), Some(Event::Disconnect));
    }

    #[test]
    fn bad_handshakes_are_refused_each_with_its_reason() {
        let mut s = Server::new(export());
        assert_eq!(
            s.receive(&0u32.to_be_bytes()),
            Err(ServerError::ClientFlags(0))
        );
        assert!(s.is_done());
        let mut s = Server::new(export());
        assert_eq!(
            s.receive(&5u32.to_be_bytes()),
            Err(ServerError::ClientFlags(5))
        );
        let mut s = negotiating(1);
        assert!(matches!(
            s.receive(&[0u8; 16]),
            Err(ServerError::OptionMagic(0))
        ));
        let mut s = negotiating(1);
        let mut long = option(OPT_GO, &[]);
        long[12..16].copy_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert_eq!(
            s.receive(&long),
            Err(ServerError::OptionTooLong(MAX_OPTION_LEN + 1))
        );
        let mut s = negotiating(1);
        let mut many = Vec::new();
        for _ in 0..=MAX_OPTIONS {
            many.extend(option(99, &[]));
        }
        assert_eq!(s.receive(&many), Err(ServerError::TooManyOptions));
    }

    #[test]
    fn reads_inside_become_events_and_the_rest_is_refused() {
        let mut s = transmitting();
        let mut input = Vec::new();
        input.extend(read(1, 0, 2048));
        input.extend(read(2, SIZE - 100, 100)); // the last bytes
        input.extend(read(3, SIZE - 100, 101)); // one past the end
        input.extend(read(4, u64::MAX - 10, 100)); // overflows
        input.extend(read(5, 0, MAX_REQUEST + 1)); // too long
        input.extend(read(6, 0, 0));
        s.receive(&input).unwrap();
        assert_eq!(
            s.next_event(),
            Some(Event::Read {
                handle: 1,
                offset: 0,
                length: 2048
            })
        );
        assert_eq!(
            s.next_event(),
            Some(Event::Read {
                handle: 2,
                offset: SIZE - 100,
                length: 100
            })
        );
        assert_eq!(s.next_event(), None);
        let out = s.take_output();
        let errs: Vec<(u32, u64)> = out
            .chunks(REPLY_LEN)
            .map(|c| decode_simple_reply(c.try_into().unwrap()).unwrap())
            .collect();
        assert_eq!(errs, [(EINVAL, 3), (EINVAL, 4), (EINVAL, 5), (EINVAL, 6)]);
        assert_eq!(s.refused, 4);
    }

    #[test]
    fn writes_are_refused_with_eperm_and_their_payload_skipped() {
        let mut s = transmitting();
        let write = Request {
            flags: 0,
            command: CMD_WRITE,
            handle: 9,
            offset: 0,
            length: 5000,
        };
        let mut input = write.encode().to_vec();
        input.extend(std::iter::repeat_n(0xAAu8, 5000));
        input.extend(read(10, 0, 512));
        // Split inside the payload.
        s.receive(&input[..100]).unwrap();
        s.receive(&input[100..]).unwrap();
        let mut trim = write;
        trim.command = CMD_TRIM;
        trim.handle = 11;
        let mut flush = write;
        flush.command = CMD_FLUSH;
        flush.handle = 12;
        flush.length = 0;
        let mut cache = flush;
        cache.command = CMD_CACHE;
        cache.handle = 13;
        let mut flagged = flush;
        flagged.command = CMD_READ;
        flagged.flags = 0x100;
        flagged.handle = 14;
        for r in [trim, flush, cache, flagged] {
            s.receive(&r.encode()).unwrap();
        }
        let out = s.take_output();
        let replies: Vec<(u32, u64)> = out
            .chunks(REPLY_LEN)
            .map(|c| decode_simple_reply(c.try_into().unwrap()).unwrap())
            .collect();
        assert_eq!(
            replies,
            [(EPERM, 9), (EPERM, 11), (0, 12), (EINVAL, 13), (EINVAL, 14)]
        );
        assert_eq!(
            s.next_event(),
            Some(Event::Read {
                handle: 10,
                offset: 0,
                length: 512
            })
        );
        // A disconnect ends it; what follows is ignored.
        let mut disc = flush;
        disc.command = CMD_DISC;
        s.receive(&disc.encode()).unwrap();
        s.receive(&read(20, 0, 1)).unwrap();
        assert_eq!(s.next_event(), Some(Event::Disconnect));
        assert_eq!(s.next_event(), None);
        assert!(s.is_done());
        // A bad magic is the end of the stream.
        let mut s = transmitting();
        assert!(matches!(
            s.receive(&[0u8; REQUEST_LEN]),
            Err(ServerError::Framing(_))
        ));
    }

    #[test]
    fn a_handshake_only_server_leaves_the_requests_to_its_caller() {
        let mut s = Server::handshake_only(export());
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(option(OPT_GO, &go_payload("", &[])));
        let hs = input.len();
        input.extend(read(1, 0, 10));
        assert_eq!(s.receive(&input), Ok(hs));
        assert_eq!(s.next_event(), Some(Event::Transmission));
        assert_eq!(s.next_event(), None);
    }

    proptest! {
        /// Whatever a client sends, in whatever pieces: no panic, reads
        /// handed out are inside the export and not too long, and the
        /// output holds only whole replies once in transmission.
        #[test]
        fn any_input_is_followed_or_refused(
            flags in 0u32..4,
            options in proptest::collection::vec((0u32..12, proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
            requests in proptest::collection::vec((0u16..9, any::<u16>(), any::<u64>(), any::<u32>()), 0..20),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(1usize..50, 1..10),
        ) {
            let mut input = flags.to_be_bytes().to_vec();
            for (o, data) in &options {
                input.extend(option(*o, data));
            }
            input.extend(option(OPT_GO, &go_payload("", &[])));
            for (cmd, fl, off, len) in &requests {
                let r = Request { flags: *fl & 0x1f, command: *cmd, handle: 1, offset: *off % (SIZE * 2), length: *len % (MAX_REQUEST + 2) };
                input.extend(r.encode());
                if *cmd == CMD_WRITE {
                    input.extend(std::iter::repeat_n(0u8, (r.length as usize).min(100)));
                }
            }
            input.extend(noise);
            let mut s = Server::new(export());
            let mut at = 0;
            let mut i = 0;
            while at < input.len() {
                let end = (at + cuts[i % cuts.len()]).min(input.len());
                i += 1;
                if s.receive(&input[at..end]).is_err() {
                    prop_assert!(s.is_done());
                    break;
                }
                at = end;
            }
            while let Some(e) = s.next_event() {
                if let Event::Read { offset, length, .. } = e {
                    prop_assert!(length > 0 && length <= MAX_REQUEST);
                    prop_assert!(offset + u64::from(length) <= SIZE);
                }
            }
        }
    }
}
