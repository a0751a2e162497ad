//! RFB (the VNC protocol, RFC 6143) as a viewer speaks it to a server:
//! where each client→server message starts and ends, and what kind it is.
//!
//! Sans-IO: feed the bytes a viewer sent, in whatever chunks they arrived,
//! and get back [`Span`]s that cover them exactly, each naming the message
//! it belongs to. Nothing is decoded past what finding the boundary needs,
//! and a message body is never buffered: only the few header bytes that
//! give its length are (at most [`MAX_HEADER`]), so a 1 MiB clipboard paste
//! passes through in the chunks it came in.
//!
//! [`ClientFilter`] builds on it what the gateway needs: for a read-only
//! viewer it drops every input message (keys, pointer, clipboard, QEMU key
//! events, desktop resize, power actions); for everyone it forces the
//! ClientInit *shared* flag on, so no viewer can disconnect the others.
//!
//! Scope: the server side is not parsed. The handshake is followed from the
//! client's bytes alone, which works because the server behind a vmgate
//! agent offers security type None (QMP `add_client … skipauth=true`, or a
//! VNC socket without auth); VNC authentication is followed too, any other
//! security type is refused.
#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};

/// The most header bytes buffered to learn a message's length.
pub const MAX_HEADER: usize = 12;
/// The largest clipboard text accepted from a viewer (QEMU's own limit).
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// The largest Fence payload (RFB community extension limit).
const MAX_FENCE: usize = 64;

/// What a stretch of client bytes belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `RFB 003.008\n`.
    ProtocolVersion,
    /// The security type the client chose (RFB 3.7 and later).
    SecurityType,
    /// The 16-byte VNC authentication response.
    VncAuthResponse,
    /// ClientInit: the one-byte shared flag.
    ClientInit,
    /// 0: SetPixelFormat.
    SetPixelFormat,
    /// 2: SetEncodings.
    SetEncodings,
    /// 3: FramebufferUpdateRequest.
    FramebufferUpdateRequest,
    /// 4: KeyEvent.
    KeyEvent,
    /// 5: PointerEvent.
    PointerEvent,
    /// 6: ClientCutText (also the extended clipboard form).
    ClientCutText,
    /// 150: EnableContinuousUpdates.
    EnableContinuousUpdates,
    /// 248: Fence.
    Fence,
    /// 250: xvp (shutdown, reboot, reset the guest).
    Xvp,
    /// 251: SetDesktopSize.
    SetDesktopSize,
    /// 253: gii (General Input Interface: joysticks, tablets).
    Gii,
    /// 255 subtype 0: QEMU extended key event (keysym + scancode).
    QemuExtendedKeyEvent,
    /// 255 subtype 1: QEMU audio control.
    QemuAudio,
}

impl Kind {
    /// Whether the message acts on the guest: a read-only viewer's are dropped.
    pub fn is_input(self) -> bool {
        matches!(
            self,
            Kind::KeyEvent
                | Kind::PointerEvent
                | Kind::ClientCutText
                | Kind::Xvp
                | Kind::SetDesktopSize
                | Kind::Gii
                | Kind::QemuExtendedKeyEvent
                // Not input, but a QEMU message's first byte does not tell
                // which one it is (see `Span::kind`): a read-only viewer
                // gets no QEMU audio over RFB.
                | Kind::QemuAudio
        )
    }
}

/// A stretch of the bytes just fed, all of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The message. A QEMU message (255) is reported as
    /// [`Kind::QemuExtendedKeyEvent`] until its subtype byte is known; both
    /// QEMU kinds are input, so the classification never changes what a
    /// filter does.
    pub kind: Kind,
    /// How many bytes, starting where the previous span ended.
    pub len: usize,
    /// Whether this span completes the message.
    pub end: bool,
}

/// Why a viewer's bytes are not RFB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RfbError {
    /// The first 12 bytes are not `RFB xxx.yyy\n`.
    #[error("not an RFB protocol version: {0:?}")]
    Version(String),
    /// The viewer chose a security type the gateway cannot follow.
    #[error("security type {0} is not supported (use None or VNC authentication)")]
    SecurityType(u8),
    /// A message type this parser does not know.
    #[error("unknown message type {0}")]
    MessageType(u8),
    /// A QEMU (255) message subtype or audio operation this parser does not know.
    #[error("unknown QEMU message subtype {0}")]
    QemuSubtype(u16),
    /// Clipboard text over [`MAX_CUT_TEXT`].
    #[error("clipboard text of {0} bytes exceeds the {MAX_CUT_TEXT}-byte limit")]
    CutTextTooLong(u32),
    /// A Fence payload over 64 bytes.
    #[error("fence payload of {0} bytes exceeds 64")]
    FenceTooLong(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    SecurityType,
    VncAuth,
    ClientInit,
    Messages,
}

/// How much of the current message is known.
enum Need {
    /// This many header bytes are needed to know the length.
    Header(usize),
    /// The message is this long in all.
    Total(usize),
}

/// Follows a viewer's byte stream: the handshake, then message after message.
#[derive(Debug, Clone)]
pub struct ClientParser {
    phase: Phase,
    /// The current message, once its first byte came.
    kind: Option<Kind>,
    hdr: [u8; MAX_HEADER],
    /// Bytes of the current message seen so far (header bytes are also in `hdr`).
    seen: usize,
    /// The current message's length, once known.
    total: Option<usize>,
    /// Set on the first error: a broken stream stays broken.
    failed: Option<RfbError>,
}

impl Default for ClientParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientParser {
    pub fn new() -> ClientParser {
        ClientParser {
            phase: Phase::Version,
            kind: None,
            hdr: [0; MAX_HEADER],
            seen: 0,
            total: None,
            failed: None,
        }
    }

    /// Whether the handshake is over and messages flow.
    pub fn in_messages(&self) -> bool {
        self.phase == Phase::Messages
    }

    /// Splits `data` into spans, in order, calling `out` for each; they add
    /// up to `data.len()` unless an error stops it.
    pub fn feed(&mut self, mut data: &[u8], mut out: impl FnMut(Span)) -> Result<(), RfbError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !data.is_empty() {
            match self.step(data) {
                Ok(span) => {
                    data = &data[span.len..];
                    out(span);
                }
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Takes one span off the front of non-empty `data`.
    fn step(&mut self, data: &[u8]) -> Result<Span, RfbError> {
        let kind = match self.kind {
            Some(k) => k,
            None => {
                let k = match self.phase {
                    Phase::Version => Kind::ProtocolVersion,
                    Phase::SecurityType => Kind::SecurityType,
                    Phase::VncAuth => Kind::VncAuthResponse,
                    Phase::ClientInit => Kind::ClientInit,
                    Phase::Messages => message_kind(data[0])?,
                };
                self.kind = Some(k);
                k
            }
        };
        // Learn the length, header byte by header byte, without buffering
        // more than the header.
        let mut used = 0;
        while self.total.is_none() {
            match need(kind, &self.hdr[..self.seen])? {
                Need::Total(n) => self.total = Some(n),
                Need::Header(n) => {
                    debug_assert!(n <= MAX_HEADER && n > self.seen);
                    let take = (n - self.seen).min(data.len() - used);
                    self.hdr[self.seen..self.seen + take].copy_from_slice(&data[used..used + take]);
                    self.seen += take;
                    used += take;
                    if self.seen < n {
                        // The chunk ended inside the header.
                        return Ok(Span {
                            kind,
                            len: used,
                            end: false,
                        });
                    }
                }
            }
        }
        let total = self.total.expect("length known");
        let body = (total - self.seen).min(data.len() - used);
        self.seen += body;
        used += body;
        let end = self.seen == total;
        // A QEMU message's header told which one it is.
        let kind = if kind == Kind::QemuExtendedKeyEvent && self.hdr[1] == 1 {
            Kind::QemuAudio
        } else {
            kind
        };
        if end {
            self.finish_message(kind)?;
        }
        Ok(Span {
            kind,
            len: used,
            end,
        })
    }

    fn finish_message(&mut self, kind: Kind) -> Result<(), RfbError> {
        self.phase = match kind {
            Kind::ProtocolVersion => {
                let (major, minor) = parse_version(&self.hdr)?;
                // 3.3 (and the unofficial 3.4–3.6, read as 3.3): the server
                // picks the security type and the client answers nothing.
                if major == 3 && minor < 7 {
                    Phase::ClientInit
                } else {
                    Phase::SecurityType
                }
            }
            Kind::SecurityType => match self.hdr[0] {
                1 => Phase::ClientInit,
                2 => Phase::VncAuth,
                t => return Err(RfbError::SecurityType(t)),
            },
            Kind::VncAuthResponse => Phase::ClientInit,
            _ => Phase::Messages,
        };
        self.kind = None;
        self.seen = 0;
        self.total = None;
        Ok(())
    }
}

fn message_kind(ty: u8) -> Result<Kind, RfbError> {
    Ok(match ty {
        0 => Kind::SetPixelFormat,
        2 => Kind::SetEncodings,
        3 => Kind::FramebufferUpdateRequest,
        4 => Kind::KeyEvent,
        5 => Kind::PointerEvent,
        6 => Kind::ClientCutText,
        150 => Kind::EnableContinuousUpdates,
        248 => Kind::Fence,
        250 => Kind::Xvp,
        251 => Kind::SetDesktopSize,
        253 => Kind::Gii,
        255 => Kind::QemuExtendedKeyEvent,
        t => return Err(RfbError::MessageType(t)),
    })
}

fn be16(h: &[u8], at: usize) -> usize {
    u16::from_be_bytes([h[at], h[at + 1]]) as usize
}

/// The message's length, or how many header bytes it takes to know it.
fn need(kind: Kind, h: &[u8]) -> Result<Need, RfbError> {
    use Need::{Header, Total};
    Ok(match kind {
        // Handshake bytes that decide the next phase are kept in `hdr`.
        Kind::ProtocolVersion if h.len() < 12 => Header(12),
        Kind::ProtocolVersion => Total(12),
        Kind::SecurityType if h.is_empty() => Header(1),
        Kind::SecurityType | Kind::ClientInit => Total(1),
        Kind::VncAuthResponse => Total(16),
        Kind::SetPixelFormat => Total(20),
        Kind::FramebufferUpdateRequest | Kind::EnableContinuousUpdates => Total(10),
        Kind::KeyEvent => Total(8),
        Kind::PointerEvent => Total(6),
        Kind::Xvp => Total(4),
        Kind::SetEncodings if h.len() < 4 => Header(4),
        Kind::SetEncodings => Total(4 + 4 * be16(h, 2)),
        Kind::ClientCutText if h.len() < 8 => Header(8),
        Kind::ClientCutText => {
            // Negative: the extended clipboard form, |length| bytes follow.
            let len = i32::from_be_bytes([h[4], h[5], h[6], h[7]]).unsigned_abs();
            if len > MAX_CUT_TEXT {
                return Err(RfbError::CutTextTooLong(len));
            }
            Total(8 + len as usize)
        }
        Kind::Fence if h.len() < 9 => Header(9),
        Kind::Fence => {
            let len = h[8] as usize;
            if len > MAX_FENCE {
                return Err(RfbError::FenceTooLong(len));
            }
            Total(9 + len)
        }
        Kind::SetDesktopSize if h.len() < 8 => Header(8),
        Kind::SetDesktopSize => Total(8 + 16 * h[6] as usize),
        Kind::Gii if h.len() < 4 => Header(4),
        Kind::Gii => {
            let len = if h[1] & 0x80 != 0 {
                u16::from_be_bytes([h[2], h[3]])
            } else {
                u16::from_le_bytes([h[2], h[3]])
            };
            Total(4 + len as usize)
        }
        Kind::QemuExtendedKeyEvent | Kind::QemuAudio if h.len() < 2 => Header(2),
        Kind::QemuExtendedKeyEvent | Kind::QemuAudio => match h[1] {
            0 => Total(12),
            1 if h.len() < 4 => Header(4),
            1 => match be16(h, 2) {
                0 | 1 => Total(4),
                2 => Total(10),
                op => return Err(RfbError::QemuSubtype(0x100 | op as u16)),
            },
            s => return Err(RfbError::QemuSubtype(s as u16)),
        },
    })
}

fn parse_version(v: &[u8]) -> Result<(u32, u32), RfbError> {
    let bad = || RfbError::Version(String::from_utf8_lossy(&v[..12]).into_owned());
    if &v[..4] != b"RFB " || v[7] != b'.' || v[11] != b'\n' {
        return Err(bad());
    }
    let num = |s: &[u8]| -> Result<u32, RfbError> {
        if !s.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(s.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let (major, minor) = (num(&v[4..7])?, num(&v[8..11])?);
    if major != 3 {
        return Err(bad());
    }
    Ok((major, minor))
}

/// What the gateway does to a viewer's bytes before they go to the guest.
#[derive(Debug, Clone)]
pub struct ClientFilter {
    parser: ClientParser,
    read_only: bool,
    /// Input messages dropped so far (read-only viewers).
    pub dropped: u64,
}

impl ClientFilter {
    /// `read_only`: drop every input message ([`Kind::is_input`]).
    pub fn new(read_only: bool) -> ClientFilter {
        ClientFilter {
            parser: ClientParser::new(),
            read_only,
            dropped: 0,
        }
    }

    /// The bytes of `data` to pass on (possibly none). An interactive
    /// viewer's bytes come back as the same buffer, untouched, except the
    /// one ClientInit byte, which is forced to *shared*.
    pub fn filter(&mut self, data: Bytes) -> Result<Bytes, RfbError> {
        let read_only = self.read_only;
        // Built only once a span must change; until then `data` goes as is.
        let mut out: Option<BytesMut> = None;
        let (mut at, mut dropped) = (0, 0);
        self.parser.feed(&data, |s| {
            let start = at;
            at += s.len;
            let rewrite = s.kind == Kind::ClientInit;
            let drop = read_only && s.kind.is_input();
            if rewrite || drop {
                let o = out.get_or_insert_with(|| {
                    let mut o = BytesMut::with_capacity(data.len());
                    o.extend_from_slice(&data[..start]);
                    o
                });
                if rewrite {
                    o.extend_from_slice(&[1]);
                } else {
                    dropped += u64::from(s.end);
                }
            } else if let Some(o) = &mut out {
                o.extend_from_slice(&data[start..at]);
            }
        })?;
        self.dropped += dropped;
        Ok(match out {
            Some(o) => o.freeze(),
            None => data,
        })
    }
}

#[cfg(test)]
mod tests;
