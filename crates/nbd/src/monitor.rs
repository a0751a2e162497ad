//! A watch over an NBD transmission phase, both ways, sans-IO: the agent
//! passes QEMU's requests and the user's replies on unchanged, and feeds
//! the same bytes here.
//!
//! * From the client (QEMU): only reads, flushes and a disconnect, never
//!   a write or anything else that would change a medium that is
//!   read-only to the guest; at most [`MAX_IN_FLIGHT`] requests in flight,
//!   each with a handle not in flight already; nothing after the
//!   disconnect.
//! * From the server (the user's `vmgate media` or browser): simple replies
//!   only (structured replies are never negotiated), each to a request in
//!   flight; a successful read's data is exactly the length asked for.
//!   Data bytes are counted, never buffered.
//!
//! Any [`MonitorError`] means one side broke the protocol: the agent ends
//! the session with that reason instead of passing the bytes on.
//! [`Monitor::oldest`] tells when the longest-waiting request was sent, so
//! the agent can end a session whose server stopped answering.

use std::collections::HashMap;
use std::time::Instant;

use crate::proto::{self, Fill, Request};

/// The most requests in flight at once (QEMU keeps at most 16).
pub const MAX_IN_FLIGHT: usize = 64;

/// Why the transmission phase cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// QEMU's bytes are not NBD requests.
    #[error("QEMU sent bytes that are not NBD requests ({0})")]
    ClientFraming(proto::FramingError),
    /// QEMU asked to change the medium (write, trim, …).
    #[error("QEMU sent NBD command {0} to a read-only medium")]
    Command(u16),
    /// A handle already in flight.
    #[error("QEMU reused NBD handle {0:#x} while it was in flight")]
    Handle(u64),
    /// More than [`MAX_IN_FLIGHT`] requests.
    #[error("more than {MAX_IN_FLIGHT} NBD requests in flight")]
    InFlight,
    /// A request after `NBD_CMD_DISC`.
    #[error("QEMU sent an NBD request after disconnecting")]
    AfterDisconnect,
    /// The user's server sent a structured reply.
    #[error("the media server sent a structured reply, which was not negotiated")]
    Structured,
    /// The user's bytes are not NBD replies.
    #[error("the media server sent bytes that are not NBD replies ({0})")]
    ServerFraming(proto::FramingError),
    /// A reply to no request in flight.
    #[error("the media server answered NBD handle {0:#x}, which is not in flight")]
    UnknownHandle(u64),
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    command: u16,
    length: u32,
    since: Instant,
}

enum ReplyState {
    Header(Fill<{ proto::REPLY_LEN }>),
    /// A read's data: this many bytes still to come.
    Data(u64),
}

/// Follows one NBD connection's transmission phase.
pub struct Monitor {
    request: Fill<{ proto::REQUEST_LEN }>,
    reply: ReplyState,
    in_flight: HashMap<u64, InFlight>,
    disconnected: bool,
    /// Bytes of read data the server sent.
    pub bytes_read: u64,
    /// Reads answered successfully.
    pub reads: u64,
    /// Requests the server answered with an error.
    pub errors: u64,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new()
    }
}

impl Monitor {
    pub fn new() -> Monitor {
        Monitor {
            request: Fill::new(),
            reply: ReplyState::Header(Fill::new()),
            in_flight: HashMap::new(),
            disconnected: false,
            bytes_read: 0,
            reads: 0,
            errors: 0,
        }
    }

    /// Follows bytes QEMU sent, at `now`.
    pub fn from_client(&mut self, mut input: &[u8], now: Instant) -> Result<(), MonitorError> {
        while !input.is_empty() {
            if self.disconnected {
                return Err(MonitorError::AfterDisconnect);
            }
            let Some(b) = self.request.fill(&mut input) else {
                break;
            };
            let req = Request::decode(&b).map_err(MonitorError::ClientFraming)?;
            match req.command {
                proto::CMD_DISC => {
                    self.disconnected = true;
                    continue;
                }
                proto::CMD_READ | proto::CMD_FLUSH => {}
                c => return Err(MonitorError::Command(c)),
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                return Err(MonitorError::InFlight);
            }
            if self.in_flight.contains_key(&req.handle) {
                return Err(MonitorError::Handle(req.handle));
            }
            self.in_flight.insert(
                req.handle,
                InFlight {
                    command: req.command,
                    length: req.length,
                    since: now,
                },
            );
        }
        Ok(())
    }

    /// Follows bytes the server sent.
    pub fn from_server(&mut self, mut input: &[u8]) -> Result<(), MonitorError> {
        while !input.is_empty() {
            match &mut self.reply {
                ReplyState::Data(left) => {
                    let take = (*left).min(input.len() as u64);
                    *left -= take;
                    input = &input[take as usize..];
                    if *left == 0 {
                        self.reply = ReplyState::Header(Fill::new());
                    }
                }
                ReplyState::Header(f) => {
                    let Some(b) = f.fill(&mut input) else {
                        break;
                    };
                    if b[0..4] == proto::STRUCTURED_REPLY_MAGIC.to_be_bytes() {
                        return Err(MonitorError::Structured);
                    }
                    let (error, handle) =
                        proto::decode_simple_reply(&b).map_err(MonitorError::ServerFraming)?;
                    let req = self
                        .in_flight
                        .remove(&handle)
                        .ok_or(MonitorError::UnknownHandle(handle))?;
                    if error != 0 {
                        self.errors = self.errors.saturating_add(1);
                    } else if req.command == proto::CMD_READ {
                        self.reads = self.reads.saturating_add(1);
                        self.bytes_read = self.bytes_read.saturating_add(u64::from(req.length));
                        if req.length > 0 {
                            self.reply = ReplyState::Data(u64::from(req.length));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// When the longest-waiting request in flight was sent, if any.
    pub fn oldest(&self) -> Option<Instant> {
        self.in_flight.values().map(|r| r.since).min()
    }

    /// Requests waiting for their reply.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether QEMU sent `NBD_CMD_DISC`.
    pub fn disconnected(&self) -> bool {
        self.disconnected
    }

    /// Whether the server's stream is between replies (not inside a read's
    /// data or a reply header).
    pub fn between_replies(&self) -> bool {
        matches!(&self.reply, ReplyState::Header(f) if f.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;
    use crate::server::{read_reply, Event, Export, Server};
    use proptest::prelude::*;

    fn req(command: u16, handle: u64, offset: u64, length: u32) -> [u8; REQUEST_LEN] {
        Request {
            flags: 0,
            command,
            handle,
            offset,
            length,
        }
        .encode()
    }

    #[test]
    fn reads_and_replies_are_followed_and_counted_in_any_pieces() {
        let now = Instant::now();
        let mut m = Monitor::new();
        let mut q = Vec::new();
        q.extend(req(CMD_READ, 1, 0, 4096));
        q.extend(req(CMD_READ, 2, 4096, 100));
        q.extend(req(CMD_READ, 3, 1 << 40, 10));
        for b in &q {
            m.from_client(std::slice::from_ref(b), now).unwrap();
        }
        assert_eq!(m.in_flight(), 3);
        assert_eq!(m.oldest(), Some(now));
        let mut r = Vec::new();
        // Out of order, as the spec allows.
        r.extend(read_reply(2));
        r.extend([7u8; 100]);
        r.extend(simple_reply(3, EINVAL));
        r.extend(read_reply(1));
        r.extend([9u8; 4096]);
        for piece in r.chunks(13) {
            m.from_server(piece).unwrap();
        }
        assert_eq!((m.bytes_read, m.reads, m.errors), (4196, 2, 1));
        assert_eq!(m.in_flight(), 0);
        assert!(m.between_replies());
        m.from_client(&req(CMD_DISC, 4, 0, 0), now).unwrap();
        assert!(m.disconnected());
        assert_eq!(
            m.from_client(&req(CMD_READ, 5, 0, 1), now),
            Err(MonitorError::AfterDisconnect)
        );
    }

    #[test]
    fn each_breach_is_named() {
        let now = Instant::now();
        let mut m = Monitor::new();
        assert_eq!(
            m.from_client(&req(CMD_WRITE, 1, 0, 1), now),
            Err(MonitorError::Command(CMD_WRITE))
        );
        let mut m = Monitor::new();
        assert!(matches!(
            m.from_client(&[0u8; REQUEST_LEN], now),
            Err(MonitorError::ClientFraming(_))
        ));
        let mut m = Monitor::new();
        m.from_client(&req(CMD_READ, 1, 0, 1), now).unwrap();
        assert_eq!(
            m.from_client(&req(CMD_READ, 1, 0, 1), now),
            Err(MonitorError::Handle(1))
        );
        let mut m = Monitor::new();
        for h in 0..MAX_IN_FLIGHT as u64 {
            m.from_client(&req(CMD_READ, h, 0, 1), now).unwrap();
        }
        assert_eq!(
            m.from_client(&req(CMD_READ, 999, 0, 1), now),
            Err(MonitorError::InFlight)
        );
        assert_eq!(
            m.from_server(&read_reply(12345)),
            Err(MonitorError::UnknownHandle(12345))
        );
        let mut structured = read_reply(1);
        structured[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(m.from_server(&structured), Err(MonitorError::Structured));
        assert!(matches!(
            m.from_server(&[1u8; REPLY_LEN]),
            Err(MonitorError::ServerFraming(_))
        ));
    }

    proptest! {
        /// The server of this crate, fed QEMU-like reads, always produces
        /// what the monitor accepts, and the monitor counts exactly the
        /// bytes read.
        #[test]
        fn this_crate_s_server_always_satisfies_the_monitor(
            reads in proptest::collection::vec((0u64..20_000, 1u32..5000), 1..30),
            cut in 1usize..100,
        ) {
            let size = 16_384u64;
            let now = Instant::now();
            let mut s = Server::new(Export { name: String::new(), size });
            s.receive(&3u32.to_be_bytes()).unwrap();
            s.receive(&option(OPT_GO, &go_payload("", &[]))).unwrap();
            s.take_output();
            prop_assert_eq!(s.next_event(), Some(Event::Transmission));
            let mut m = Monitor::new();
            let mut want = 0u64;
            for (h, (off, len)) in reads.iter().enumerate() {
                let q = req(CMD_READ, h as u64, *off, *len);
                m.from_client(&q, now).unwrap();
                s.receive(&q).unwrap();
                let mut out = s.take_output();
                while let Some(e) = s.next_event() {
                    if let Event::Read { handle, length, .. } = e {
                        out.extend(read_reply(handle));
                        out.extend(std::iter::repeat_n(0u8, length as usize));
                        want += u64::from(length);
                    }
                }
                for piece in out.chunks(cut) {
                    m.from_server(piece).unwrap();
                }
            }
            prop_assert_eq!(m.bytes_read, want);
            prop_assert_eq!(m.in_flight(), 0);
        }

        #[test]
        fn any_bytes_either_way_never_panic(
            a in proptest::collection::vec(any::<u8>(), 0..200),
            b in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut m = Monitor::new();
            let _ = m.from_client(&a, Instant::now());
            let _ = m.from_server(&b);
        }
    }
}
