//! The client side of an NBD handshake, sans-IO: what the agent runs
//! against a user's server before QEMU connects.
//!
//! [`Handshake::new`] asks nothing yet (the server speaks first); feed the
//! server's bytes to [`Handshake::receive`], send what
//! [`Handshake::take_output`] gives, until it answers [`Negotiated`]: the
//! export's size and transmission flags. Only fixed newstyle and
//! `NBD_OPT_GO` are spoken (the servers vmgate's clients run, the CLI's and
//! the browser's, both have it); no structured replies, so the
//! transmission phase that follows uses simple replies only.
//!
//! Bounded like the server: one option reply buffered at most
//! ([`MAX_OPTION_LEN`](crate::proto::MAX_OPTION_LEN)), at most
//! [`MAX_REPLIES`] replies.

use crate::proto::{self, Fill};

/// The most option replies accepted before the `NBD_REP_ACK`.
pub const MAX_REPLIES: u32 = 16;

/// The export as the server described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub size: u64,
    pub flags: u16,
}

/// Why the handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server's first bytes are not a newstyle NBD greeting.
    #[error("not an NBD server (bad greeting)")]
    Greeting,
    /// The server does not speak fixed newstyle.
    #[error("the NBD server does not speak fixed newstyle")]
    NotFixedNewstyle,
    /// An option reply without the reply magic, or for another option.
    #[error("malformed NBD option reply")]
    Reply,
    /// An option reply longer than the limit.
    #[error("NBD option reply of {0} bytes exceeds the limit")]
    TooLong(u32),
    /// More replies than [`MAX_REPLIES`].
    #[error("too many NBD option replies")]
    TooMany,
    /// The server refused `NBD_OPT_GO` with this error reply type.
    #[error("the NBD server refused the export (reply {0:#x})")]
    Refused(u32),
    /// It acknowledged without describing the export, or described it
    /// without the transmission flags' first bit.
    #[error("the NBD server did not describe the export")]
    NoExport,
}

enum State {
    Greeting(Fill<18>),
    ReplyHeader(Fill<20>),
    ReplyData {
        reply: u32,
        len: usize,
        data: Vec<u8>,
    },
    Done,
}

/// A client handshake asking for one export with `NBD_OPT_GO`.
pub struct Handshake {
    name: String,
    state: State,
    out: Vec<u8>,
    replies: u32,
    export: Option<Negotiated>,
}

impl Handshake {
    /// A handshake that will ask for the export `name` (`""`: the default).
    pub fn new(name: &str) -> Handshake {
        Handshake {
            name: name.into(),
            state: State::Greeting(Fill::new()),
            out: Vec::new(),
            replies: 0,
            export: None,
        }
    }

    /// Bytes to send to the server.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Follows the server's bytes: `Ok(Some(_))` once the export is
    /// negotiated and transmission begins, with how many bytes of `input`
    /// were used (the rest is the server's transmission phase, which it
    /// must not send before a request; the caller decides).
    pub fn receive(&mut self, input: &[u8]) -> Result<Option<(Negotiated, usize)>, ClientError> {
        let total = input.len();
        let mut rest = input;
        loop {
            if let State::Done = self.state {
                let export = self.export.ok_or(ClientError::NoExport)?;
                return Ok(Some((export, total - rest.len())));
            }
            if rest.is_empty() {
                return Ok(None);
            }
            if let Err(e) = self.step(&mut rest) {
                self.state = State::Done;
                self.export = None;
                return Err(e);
            }
        }
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<(), ClientError> {
        match &mut self.state {
            State::Greeting(f) => {
                let Some(b) = f.fill(input) else {
                    return Ok(());
                };
                if b[0..8] != proto::NBD_MAGIC.to_be_bytes()
                    || b[8..16] != proto::OPTS_MAGIC.to_be_bytes()
                {
                    return Err(ClientError::Greeting);
                }
                let flags = u16::from_be_bytes([b[16], b[17]]);
                if flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
                    return Err(ClientError::NotFixedNewstyle);
                }
                let mut client = proto::FLAG_C_FIXED_NEWSTYLE;
                if flags & proto::FLAG_NO_ZEROES != 0 {
                    client |= proto::FLAG_C_NO_ZEROES;
                }
                self.out.extend_from_slice(&client.to_be_bytes());
                self.out.extend(proto::option(
                    proto::OPT_GO,
                    &proto::go_payload(&self.name, &[]),
                ));
                self.state = State::ReplyHeader(Fill::new());
            }
            State::ReplyHeader(f) => {
                let Some(b) = f.fill(input) else {
                    return Ok(());
                };
                let magic = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
                let option = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
                if magic != proto::REPLY_MAGIC || option != proto::OPT_GO {
                    return Err(ClientError::Reply);
                }
                self.replies += 1;
                if self.replies > MAX_REPLIES {
                    return Err(ClientError::TooMany);
                }
                let reply = u32::from_be_bytes(b[12..16].try_into().expect("4 bytes"));
                let len = u32::from_be_bytes(b[16..20].try_into().expect("4 bytes"));
                if len > proto::MAX_OPTION_LEN {
                    return Err(ClientError::TooLong(len));
                }
                self.state = State::ReplyData {
                    reply,
                    len: len as usize,
                    data: Vec::with_capacity(len as usize),
                };
                self.finish_reply()?;
            }
            State::ReplyData { len, data, .. } => {
                let take = (*len - data.len()).min(input.len());
                data.extend_from_slice(&input[..take]);
                *input = &input[take..];
                self.finish_reply()?;
            }
            State::Done => {}
        }
        Ok(())
    }

    fn finish_reply(&mut self) -> Result<(), ClientError> {
        let State::ReplyData { reply, len, data } = &mut self.state else {
            return Ok(());
        };
        if data.len() < *len {
            return Ok(());
        }
        let (reply, data) = (*reply, std::mem::take(data));
        self.state = State::ReplyHeader(Fill::new());
        match reply {
            proto::REP_ACK => {
                match self.export {
                    Some(e) if e.flags & proto::TFLAG_HAS_FLAGS != 0 => {}
                    _ => return Err(ClientError::NoExport),
                }
                self.state = State::Done;
            }
            // Other information types are ignored, as the spec asks.
            proto::REP_INFO
                if data.len() >= 2
                    && u16::from_be_bytes([data[0], data[1]]) == proto::INFO_EXPORT =>
            {
                if data.len() != 12 {
                    return Err(ClientError::Reply);
                }
                self.export = Some(Negotiated {
                    size: u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")),
                    flags: u16::from_be_bytes([data[10], data[11]]),
                });
            }
            r if r & (1 << 31) != 0 => return Err(ClientError::Refused(r)),
            // Reply types this client does not know are ignored.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Event, Export, Server};
    use proptest::prelude::*;

    /// Runs a client against a server in memory, in pieces of `cut` bytes.
    fn pair(size: u64, cut: usize) -> (Result<Negotiated, ClientError>, Server) {
        let mut server = Server::new(Export {
            name: "m".into(),
            size,
        });
        let mut client = Handshake::new("");
        for _ in 0..100 {
            let to_client = server.take_output();
            for piece in to_client.chunks(cut) {
                match client.receive(piece) {
                    Ok(Some((n, used))) => {
                        assert_eq!(used, piece.len());
                        return (Ok(n), server);
                    }
                    Ok(None) => {}
                    Err(e) => return (Err(e), server),
                }
            }
            let to_server = client.take_output();
            server.receive(&to_server).unwrap();
        }
        panic!("no end")
    }

    #[test]
    fn negotiates_with_this_crate_s_server_in_any_pieces() {
        for cut in [1, 3, 7, 1000] {
            let (n, mut s) = pair(4 << 30, cut);
            assert_eq!(
                n,
                Ok(Negotiated {
                    size: 4 << 30,
                    flags: proto::TRANSMISSION_FLAGS
                })
            );
            assert_eq!(s.next_event(), Some(Event::Transmission));
        }
    }

    fn greeting(flags: u16) -> Vec<u8> {
        let mut g = proto::NBD_MAGIC.to_be_bytes().to_vec();
        g.extend(proto::OPTS_MAGIC.to_be_bytes());
        g.extend(flags.to_be_bytes());
        g
    }

    #[test]
    fn bad_servers_are_refused_each_with_its_reason() {
        let mut c = Handshake::new("");
        assert_eq!(
            c.receive(b"SSH-2.0-OpenSSH_9.2 hi"),
            Err(ClientError::Greeting)
        );
        let mut c = Handshake::new("");
        assert_eq!(c.receive(&greeting(0)), Err(ClientError::NotFixedNewstyle));
        // Refused GO.
        let mut c = Handshake::new("");
        let mut input = greeting(1);
        input.extend(proto::option_reply(
            proto::OPT_GO,
            proto::REP_ERR_UNSUP,
            b"",
        ));
        assert_eq!(
            c.receive(&input),
            Err(ClientError::Refused(proto::REP_ERR_UNSUP))
        );
        assert_eq!(c.take_output()[0..4], 1u32.to_be_bytes(), "no NO_ZEROES");
        // ACK without the export.
        let mut c = Handshake::new("");
        let mut input = greeting(3);
        input.extend(proto::option_reply(proto::OPT_GO, proto::REP_ACK, b""));
        assert_eq!(c.receive(&input), Err(ClientError::NoExport));
        // A reply for another option, a too long one, too many.
        let mut c = Handshake::new("");
        let mut input = greeting(3);
        input.extend(proto::option_reply(proto::OPT_LIST, proto::REP_ACK, b""));
        assert_eq!(c.receive(&input), Err(ClientError::Reply));
        let mut c = Handshake::new("");
        let mut input = greeting(3);
        let mut long = proto::option_reply(proto::OPT_GO, proto::REP_INFO, b"");
        long[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        input.extend(long);
        assert_eq!(c.receive(&input), Err(ClientError::TooLong(u32::MAX)));
        let mut c = Handshake::new("");
        let mut input = greeting(3);
        for _ in 0..=MAX_REPLIES {
            input.extend(proto::option_reply(proto::OPT_GO, 77, b""));
        }
        assert_eq!(c.receive(&input), Err(ClientError::TooMany));
    }

    proptest! {
        #[test]
        fn any_server_bytes_negotiate_or_fail_without_panicking(
            flags in any::<u16>(),
            replies in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..6),
            noise in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut input = greeting(flags);
            for (ty, data) in &replies {
                input.extend(proto::option_reply(proto::OPT_GO, *ty, data));
            }
            input.extend(noise);
            let mut c = Handshake::new("");
            if let Ok(Some((_, used))) = c.receive(&input) {
                prop_assert!(used <= input.len());
            }
        }
    }
}
