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
//! [`ClientFilter`] builds on it what the gateway needs, as a [`Policy`]
//! says: for a read-only viewer it drops every input message (keys,
//! pointer, clipboard, QEMU key events, desktop resize, power actions);
//! without the `audio` scope it strips QEMU's audio pseudo-encoding (−259)
//! from SetEncodings and drops QEMU audio messages (255/1), so the server
//! never acknowledges audio and never starts it; for everyone it forces the
//! ClientInit *shared* flag on, so no viewer can disconnect the others.
//!
//! The viewer side's handshake is followed from the client's bytes alone,
//! which works because the server behind a vmgate agent offers security
//! type None (QMP `add_client … skipauth=true`, or a VNC socket without
//! auth); VNC authentication is followed too, any other security type is
//! refused.
//!
//! [`server`] follows the other direction for a client that asked for
//! audio only (the agent's dedicated audio connection): the handshake,
//! pseudo-encoding rectangles and QEMU's audio messages, with the PCM
//! handed out as it arrives. [`audio`] holds QEMU's audio formats and the
//! client messages that ask for them.
#![forbid(unsafe_code)]

pub mod audio;
pub mod server;
pub mod splice;

use bytes::{Bytes, BytesMut};

pub use audio::{AudioFormat, SampleFormat, AUDIO_ENCODING};
pub use server::{ServerEvent, ServerParser};
pub use splice::ViewerState;

/// The most header bytes buffered to learn a message's length.
pub const MAX_HEADER: usize = 12;
/// The largest clipboard text accepted from a viewer (QEMU's own limit).
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// The largest Fence payload (RFB community extension limit).
const MAX_FENCE: usize = 64;
/// The most encodings a SetEncodings may list. Viewers send a few dozen;
/// the bound keeps the one message the filter may hold back (to strip
/// −259 from it) at 4 KiB.
pub const MAX_ENCODINGS: usize = 1024;

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
    /// 255 before its subtype byte arrived: a QEMU message, not yet known
    /// to be a key event or audio control. Only ever the kind of a span
    /// that does not end its message (at most the one type byte).
    Qemu,
    /// 255 subtype 0: QEMU extended key event (keysym + scancode).
    QemuExtendedKeyEvent,
    /// 255 subtype 1: QEMU audio control (enable, disable, set format).
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
        )
    }
}

/// A stretch of the bytes just fed, all of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The message. A QEMU message (255) is [`Kind::Qemu`] until its
    /// subtype byte is known: a filter holds such bytes back until it can
    /// tell a key event (input) from audio control (not input).
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
    /// A QEMU (255) message subtype this parser does not know.
    #[error("unknown QEMU message subtype {0}")]
    QemuSubtype(u8),
    /// A QEMU audio operation (255/1) this parser does not know.
    #[error("unknown QEMU audio operation {0}")]
    AudioOp(u16),
    /// A QEMU audio set-format with a sample format QEMU does not have.
    #[error("QEMU audio sample format {0} does not exist (0-5)")]
    AudioSampleFormat(u8),
    /// A QEMU audio set-format with other than 1 or 2 channels.
    #[error("QEMU audio with {0} channels (1 or 2)")]
    AudioChannels(u8),
    /// A QEMU audio set-format with a rate QEMU refuses.
    #[error("QEMU audio rate of {0} Hz (1 to {max} Hz)", max = audio::MAX_RATE)]
    AudioRate(u32),
    /// A server message type the audio client does not follow.
    #[error("unknown server message type {0}")]
    ServerMessageType(u8),
    /// The server refused the connection before security (no types offered).
    #[error("the VNC server refused the connection")]
    SecurityRefused,
    /// The server did not offer security type None.
    #[error("the VNC server does not offer security type None (is the client handed over with skipauth?)")]
    NoSecurityNone,
    /// The server's security result was a failure.
    #[error("the VNC server's security handshake failed (result {0})")]
    SecurityFailed(u32),
    /// A desktop name over [`server::MAX_NAME`].
    #[error("desktop name of {0} bytes is too long")]
    NameTooLong(u32),
    /// A rectangle encoding the parser does not follow (the client never
    /// asked for it, or it keeps state across rectangles).
    #[error("rectangle encoding {0} was not asked for")]
    Encoding(i32),
    /// A pixel format with other than 8, 16 or 32 bits per pixel.
    #[error("{0} bits per pixel (8, 16 or 32)")]
    BitsPerPixel(u8),
    /// An audio data message over [`server::MAX_AUDIO_DATA`].
    #[error("audio data message of {0} bytes exceeds {max}", max = server::MAX_AUDIO_DATA)]
    AudioDataTooLong(u32),
    /// A SetEncodings listing more than [`MAX_ENCODINGS`].
    #[error("SetEncodings lists {0} encodings, more than {MAX_ENCODINGS}")]
    TooManyEncodings(usize),
    /// Clipboard text over [`MAX_CUT_TEXT`].
    #[error("clipboard text of {0} bytes exceeds the {MAX_CUT_TEXT}-byte limit")]
    CutTextTooLong(u32),
    /// A Fence payload over 64 bytes.
    #[error("fence payload of {0} bytes exceeds 64")]
    FenceTooLong(usize),
    /// A Tight compression-control byte that is neither fill, JPEG nor
    /// basic compression (PNG comes only to TightPNG clients).
    #[error("Tight compression control {0:#04x} is not fill, JPEG or basic")]
    TightControl(u8),
    /// A Tight filter other than copy, palette and gradient.
    #[error("Tight filter {0} does not exist (0-2)")]
    TightFilter(u8),
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
    /// The header bytes so far tell the message's kind (a QEMU subtype).
    Kind(Kind),
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
        let mut kind = kind;
        let mut used = 0;
        while self.total.is_none() {
            match need(kind, &self.hdr[..self.seen])? {
                Need::Total(n) => self.total = Some(n),
                Need::Kind(k) => {
                    kind = k;
                    self.kind = Some(k);
                }
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
        255 => Kind::Qemu,
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
        Kind::SetEncodings => {
            let n = be16(h, 2);
            if n > MAX_ENCODINGS {
                return Err(RfbError::TooManyEncodings(n));
            }
            Total(4 + 4 * n)
        }
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
        Kind::Qemu if h.len() < 2 => Header(2),
        Kind::Qemu => match h[1] {
            0 => Need::Kind(Kind::QemuExtendedKeyEvent),
            1 => Need::Kind(Kind::QemuAudio),
            s => return Err(RfbError::QemuSubtype(s)),
        },
        Kind::QemuExtendedKeyEvent => Total(12),
        Kind::QemuAudio if h.len() < 4 => Header(4),
        Kind::QemuAudio => match be16(h, 2) as u16 {
            audio::OP_ENABLE | audio::OP_DISABLE => Total(4),
            audio::OP_SET_FORMAT if h.len() < 10 => Header(10),
            audio::OP_SET_FORMAT => {
                let rate = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
                AudioFormat::check(h[4], h[5], rate)?;
                Total(10)
            }
            op => return Err(RfbError::AudioOp(op)),
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

/// What a viewer's session may do, as its credential says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Drop every input message ([`Kind::is_input`]).
    pub read_only: bool,
    /// Let QEMU audio through: −259 in SetEncodings and the audio control
    /// messages (255/1). Listening is not input: a read-only viewer with
    /// this scope hears the guest.
    pub audio: bool,
}

/// What the filter did to a viewer's messages, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Input messages of a read-only viewer.
    pub input: u64,
    /// QEMU audio control messages (255/1) without the audio scope.
    pub audio: u64,
    /// SetEncodings messages that listed −259 without the audio scope and
    /// went on without it.
    pub audio_encodings: u64,
    /// SetEncodings messages of a spliceable session that listed an
    /// encoding the splice cannot follow (zlib, ZRLE, Tight unless the
    /// viewer resets its streams, …) and went on without it.
    pub unspliceable_encodings: u64,
    /// Bytes of a message cut in two by a splice: the start went to the old
    /// server, the rest is dropped.
    pub cut: u64,
}

/// What happens to the message being filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Passed on as it is.
    Pass,
    /// ClientInit: passed on as *shared*.
    Shared,
    /// Dropped whole.
    Drop,
    /// Held back whole, then passed on rewritten (SetEncodings without −259).
    Rewrite,
    /// Held back until its kind is known (a QEMU message before its subtype).
    Undecided,
    /// Held back whole, remembered for a splice, then passed on.
    Record,
    /// The rest of a message cut in two by a splice: dropped.
    Cut,
}

fn verdict(policy: Policy, splice: bool, kind: Kind) -> Verdict {
    match kind {
        Kind::ClientInit => Verdict::Shared,
        Kind::Qemu => Verdict::Undecided,
        k if policy.read_only && k.is_input() => Verdict::Drop,
        Kind::QemuAudio if !policy.audio => Verdict::Drop,
        Kind::SetEncodings if !policy.audio || splice => Verdict::Rewrite,
        Kind::SetPixelFormat | Kind::KeyEvent | Kind::PointerEvent | Kind::QemuExtendedKeyEvent
            if splice =>
        {
            Verdict::Record
        }
        _ => Verdict::Pass,
    }
}

/// What the gateway does to a viewer's bytes before they go to the guest.
#[derive(Debug, Clone)]
pub struct ClientFilter {
    parser: ClientParser,
    policy: Policy,
    /// Bytes of the current message held back: a QEMU message's type byte
    /// until its subtype arrives, or a SetEncodings being rewritten. At most
    /// `4 + 4 * MAX_ENCODINGS` bytes.
    held: BytesMut,
    /// What was dropped so far.
    pub dropped: Dropped,
    /// A spliceable session's viewer, as far as a new server must know it
    /// ([`ClientFilter::spliceable`]).
    pub viewer: Option<Box<ViewerState>>,
    /// Drop the rest of the current message: its start went to the server
    /// the session was spliced away from.
    cut: bool,
    /// A spliceable viewer whose Tight decoder resets its zlib streams when
    /// told keeps Tight ([`server::spliceable`]).
    tight: bool,
}

impl ClientFilter {
    pub fn new(policy: Policy) -> ClientFilter {
        ClientFilter {
            parser: ClientParser::new(),
            policy,
            held: BytesMut::new(),
            dropped: Dropped::default(),
            viewer: None,
            cut: false,
            tight: false,
        }
    }

    /// Makes the session spliceable: SetEncodings goes on with only the
    /// encodings [`server::spliceable`] admits, and [`Self::viewer`] keeps
    /// what a new server must be told (SetPixelFormat, SetEncodings and
    /// key, button and pointer messages are held until whole for that).
    /// `tight`: the viewer's Tight decoder honours the reset bits.
    pub fn spliceable(mut self, tight: bool) -> ClientFilter {
        self.viewer = Some(Box::default());
        self.tight = tight;
        self
    }

    /// The session moves to a new server: a message whose start was
    /// passed on to the old one loses its rest. (A message held back whole
    /// reaches the new server whole.)
    pub fn cut(&mut self) {
        self.cut = self.parser.kind.is_some() && self.held.is_empty();
    }

    /// The bytes of `data` to pass on (possibly none). An interactive
    /// viewer's bytes come back as the same buffer, untouched, except the
    /// one ClientInit byte, which is forced to *shared*, and, without the
    /// audio scope, SetEncodings, which is held until complete and passed
    /// on without −259.
    pub fn filter(&mut self, data: Bytes) -> Result<Bytes, RfbError> {
        let ClientFilter {
            parser,
            policy,
            held,
            dropped,
            viewer,
            cut,
            tight,
        } = self;
        // Built only once a span must change; until then `data` goes as is.
        let mut out: Option<BytesMut> = None;
        let mut at = 0;
        parser.feed(&data, |s| {
            let (start, bytes) = (at, &data[at..at + s.len]);
            at += s.len;
            let verdict = if *cut {
                dropped.cut += s.len as u64;
                *cut = !s.end;
                Verdict::Cut
            } else {
                verdict(*policy, viewer.is_some(), s.kind)
            };
            if verdict == Verdict::Pass && held.is_empty() {
                if let Some(o) = &mut out {
                    o.extend_from_slice(bytes);
                }
                return;
            }
            let o = out.get_or_insert_with(|| {
                let mut o = BytesMut::with_capacity(data.len());
                o.extend_from_slice(&data[..start]);
                o
            });
            match verdict {
                Verdict::Shared => o.extend_from_slice(&[1]),
                Verdict::Pass => {
                    o.extend_from_slice(&held.split());
                    o.extend_from_slice(bytes);
                }
                Verdict::Undecided => held.extend_from_slice(bytes),
                Verdict::Cut => {}
                Verdict::Drop => {
                    held.clear();
                    match (s.end, s.kind) {
                        (false, _) => {}
                        (true, Kind::QemuAudio) => dropped.audio += 1,
                        (true, _) => dropped.input += 1,
                    }
                }
                Verdict::Rewrite => {
                    held.extend_from_slice(bytes);
                    if s.end {
                        let from = o.len();
                        let (audio, other) = strip_encodings(&held.split(), o, |e| {
                            (e != AUDIO_ENCODING || policy.audio)
                                && (viewer.is_none() || server::spliceable(e, *tight))
                        });
                        dropped.audio_encodings += u64::from(audio);
                        dropped.unspliceable_encodings += u64::from(other);
                        if let Some(v) = viewer {
                            v.record(s.kind, &o[from..]);
                        }
                    }
                }
                Verdict::Record => {
                    held.extend_from_slice(bytes);
                    if s.end {
                        let msg = held.split();
                        if let Some(v) = viewer {
                            v.record(s.kind, &msg);
                        }
                        o.extend_from_slice(&msg);
                    }
                }
            }
        })?;
        Ok(match out {
            Some(o) => o.freeze(),
            None => data,
        })
    }
}

/// Appends SetEncodings `msg` (whole) to `out` with only the encodings
/// `keep` admits; whether it took out −259, and whether anything else.
fn strip_encodings(msg: &[u8], out: &mut BytesMut, keep: impl Fn(i32) -> bool) -> (bool, bool) {
    let (mut audio, mut other) = (false, false);
    let kept: Vec<&[u8]> = msg[4..]
        .chunks_exact(4)
        .filter(|e| {
            let e = i32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            let k = keep(e);
            if !k {
                *if e == AUDIO_ENCODING {
                    &mut audio
                } else {
                    &mut other
                } = true;
            }
            k
        })
        .collect();
    // At most MAX_ENCODINGS, checked by the parser: fits in a u16.
    let n = u16::try_from(kept.len()).expect("bounded by MAX_ENCODINGS");
    out.extend_from_slice(&msg[..2]);
    out.extend_from_slice(&n.to_be_bytes());
    for e in &kept {
        out.extend_from_slice(e);
    }
    (audio, other)
}

#[cfg(test)]
mod tests;
