//! What an RFB server sends: the agent's dedicated audio connection to QEMU
//! (docs/audio.md), and the screen a gateway splices from one node's QEMU
//! to another's when the guest live-migrates (docs/migration.md), where it
//! must know where each server message ends.
//!
//! Sans-IO like the client parser: feed the server's bytes in whatever
//! chunks they came, get [`ServerEvent`]s back; PCM is handed out as slices
//! of what was fed, never buffered, and only header bytes are kept (at most
//! [`MAX_SERVER_HEADER`]).
//!
//! It follows the RFB 3.8 handshake for security type None (what QEMU offers
//! a client it was handed with `add_client … skipauth=true`, and what
//! libvirt's `virDomainOpenGraphicsFD` with `SKIPAUTH` gives), ServerInit,
//! and then the messages such a client can get: FramebufferUpdates made of
//! pseudo-encoding rectangles (the −259 acknowledgement, the cursor, the
//! desktop size and name among them) or pixels in one of the encodings that
//! a splice can follow ([`SPLICEABLE`]: raw, CopyRect, RRE, Hextile, and
//! Tight, whose four zlib streams a splice resets with the control byte's
//! reset bits: [`ServerParser::reset_tight_streams`]), colour map entries,
//! bell, server clipboard, fences, end of continuous updates, and QEMU's
//! audio messages (255/1: begin, end, data). A client that lists no other
//! encoding gets nothing else; anything else is an error that says what
//! came (zlib and ZRLE keep one compression stream per connection with no
//! way to reset it: a splice strips them from SetEncodings).

use crate::{parse_version, RfbError, AUDIO_ENCODING, MAX_CUT_TEXT};

/// The most header bytes kept to learn a unit's length (ServerInit's 24).
pub const MAX_SERVER_HEADER: usize = 24;
/// The largest audio data message accepted (QEMU sends what its mixer gave
/// it at once, a few kilobytes).
pub const MAX_AUDIO_DATA: u32 = 1 << 20;
/// The longest desktop name accepted in ServerInit.
pub const MAX_NAME: u32 = 64 * 1024;
/// The largest Fence payload.
const MAX_FENCE: usize = 64;

/// Pseudo-encodings whose rectangles carry no data.
const EMPTY_PSEUDO: &[i32] = &[
    AUDIO_ENCODING,
    -258, // QEMU extended key event acknowledged
    -257, // QEMU pointer motion change
    DESKTOP_SIZE,
    LAST_RECT,
];
/// LastRect: the update has no more rectangles.
const LAST_RECT: i32 = -224;
/// QEMU LED state: one byte.
const LED_STATE: i32 = -261;
/// DesktopSize: the framebuffer is now the rectangle's width and height.
pub const DESKTOP_SIZE: i32 = -223;
/// ExtendedDesktopSize: the size, and a list of screens.
pub const EXTENDED_DESKTOP_SIZE: i32 = -308;
/// DesktopName: a length and the name.
const DESKTOP_NAME: i32 = -307;
/// Cursor: pixels and a bit mask.
const CURSOR: i32 = -239;
/// XCursor: two colours and two bit masks.
const X_CURSOR: i32 = -240;
const RAW: i32 = 0;
const COPY_RECT: i32 = 1;
const RRE: i32 = 2;
const HEXTILE: i32 = 5;
/// Tight: a compression-control byte per rectangle, then a fill colour, a
/// JPEG image, or (optionally filtered) pixels, zlib-compressed on one of
/// four streams when 12 bytes or more.
pub const TIGHT: i32 = 7;
/// Below this many bytes Tight sends pixel data uncompressed.
const TIGHT_MIN_TO_COMPRESS: usize = 12;
/// The reset bits of a Tight compression-control byte: streams 0 to 3.
pub const TIGHT_RESET_ALL: u8 = 0x0f;
/// Tight's quality (JPEG) and compression levels: they tune Tight only.
const TIGHT_LEVELS: [std::ops::RangeInclusive<i32>; 2] = [-32..=-23, -256..=-247];

/// The encodings this parser follows, pixel and pseudo, whose rectangles
/// decode without anything a previous connection sent: a client that lists
/// no other gets a stream whose every message boundary is known. What a
/// splice keeps of a viewer's SetEncodings; Tight (which the parser follows
/// too) only for a viewer that resets its zlib streams when told
/// ([`spliceable`]).
pub const SPLICEABLE: &[i32] = &[
    RAW,
    COPY_RECT,
    RRE,
    HEXTILE,
    AUDIO_ENCODING,
    -258,
    -257,
    DESKTOP_SIZE,
    LAST_RECT,
    LED_STATE,
    EXTENDED_DESKTOP_SIZE,
    DESKTOP_NAME,
    CURSOR,
    X_CURSOR,
];

/// Whether a splice keeps `encoding` in a viewer's SetEncodings: one of
/// [`SPLICEABLE`], or, if the viewer's Tight decoder honours the reset bits
/// (`tight`), Tight and its quality and compression levels (−32…−23,
/// −256…−247). Stock noVNC's does not: its reset (pako's `inflateReset`)
/// leaves the window empty for good, and the next rectangle that refers
/// back fails ("zlib inflate failed").
pub fn spliceable(encoding: i32, tight: bool) -> bool {
    SPLICEABLE.contains(&encoding)
        || tight && (encoding == TIGHT || TIGHT_LEVELS.iter().any(|r| r.contains(&encoding)))
}

/// Something the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// The handshake is over (ServerInit read): messages follow.
    Ready { width: u16, height: u16 },
    /// A rectangle of this encoding (a pseudo-encoding, or raw pixels that
    /// were skipped); [`AUDIO_ENCODING`] acknowledges audio.
    Rect { encoding: i32 },
    /// An audio stream begins: the guest plays.
    AudioBegin,
    /// The stream ended: the guest went quiet.
    AudioEnd,
    /// PCM bytes of an audio data message, in order, in the format the
    /// client set (a message may come in several slices; a slice may end
    /// inside a frame).
    AudioData(&'a [u8]),
    /// A message the audio client has no use for, skipped: bell, clipboard,
    /// colour map, fence, end of continuous updates.
    Other(&'static str),
    /// The compression-control byte of the first Tight rectangle since
    /// [`ServerParser::reset_tight_streams`] is at this offset of the bytes
    /// just fed: whoever passes them on sets its [`TIGHT_RESET_ALL`] bits.
    TightControl(usize),
}

/// What the header bytes in `hdr` belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Version,
    SecurityCount,
    SecurityResult,
    ServerInit,
    /// A message, its type byte first.
    Message,
    /// A rectangle header inside a FramebufferUpdate.
    Rect,
    /// A header inside a rectangle's data, whose length it gives.
    Sub(Sub),
}

/// Headers inside a rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// RRE: the number of subrectangles and the background pixel.
    Rre,
    /// Hextile: a tile's subencoding, colours and subrectangle count.
    Tile,
    /// ExtendedDesktopSize: the number of screens and padding.
    Screens,
    /// DesktopName: the name's length.
    Name,
    /// Tight: the compression-control byte, and what it says comes next
    /// in the header (a fill colour; a filter id and a palette size).
    TightControl,
    /// Tight: a compact length (1 to 3 bytes) of JPEG or zlib data.
    TightLength,
}

/// Where a Hextile rectangle is: its size and the current tile's corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Tiles {
    w: u16,
    h: u16,
    x: u16,
    y: u16,
}

impl Tiles {
    /// The current tile's width and height.
    fn tile(&self) -> (usize, usize) {
        (
            usize::from((self.w - self.x).min(16)),
            usize::from((self.h - self.y).min(16)),
        )
    }

    /// Moves to the next tile; false after the last.
    fn advance(&mut self) -> bool {
        let step = (self.w - self.x).min(16);
        self.x += step;
        if self.x < self.w {
            return true;
        }
        self.x = 0;
        self.y += (self.h - self.y).min(16);
        self.y < self.h
    }
}

/// What a body's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// The security types offered; None (1) must be among them.
    SecurityTypes,
    /// The desktop name.
    Name,
    /// A rectangle's data.
    RectData,
    /// A Hextile tile's data.
    Tile,
    /// A Tight palette; the pixel data follows.
    Palette,
    /// Audio PCM.
    Pcm,
    /// A message's payload nobody needs.
    Skip,
}

/// Follows a server's byte stream.
#[derive(Debug, Clone)]
pub struct ServerParser {
    unit: Unit,
    hdr: [u8; MAX_SERVER_HEADER],
    /// Header bytes of the current unit seen so far.
    seen: usize,
    /// The body being read, and how many bytes of it are left.
    body: Option<(Body, usize)>,
    /// Rectangles left in the current FramebufferUpdate.
    rects_left: u16,
    /// Bytes per pixel, from ServerInit or the client's SetPixelFormat.
    bpp: usize,
    /// Bytes per Tight pixel: 3 for 32-bit true colour of depth 24 with
    /// 8-bit channels, else `bpp`.
    tpixel: usize,
    /// The client's new `bpp` and `tpixel`, from the next update on.
    next_format: Option<(usize, usize)>,
    /// The Hextile rectangle being read.
    tiles: Tiles,
    /// The Tight rectangle being read: its width and height, and then its
    /// pixel data's uncompressed length.
    tight: (usize, usize, usize),
    /// Whether the next Tight rectangle's control byte is to be reported
    /// ([`ServerEvent::TightControl`]).
    reset_tight: bool,
    /// Where the bytes `step` is given begin in what `feed` was given.
    fed: usize,
    /// Whether the security types seen so far include None.
    none_offered: bool,
    /// The framebuffer's size, from ServerInit, DesktopSize or
    /// ExtendedDesktopSize.
    size: (u16, u16),
    /// Set on the first error: a broken stream stays broken.
    failed: Option<RfbError>,
}

impl Default for ServerParser {
    fn default() -> Self {
        Self::new()
    }
}

/// Tight's filters.
const TIGHT_COPY: u8 = 0;
const TIGHT_PALETTE: u8 = 1;
const TIGHT_GRADIENT: u8 = 2;

/// A pixel format's bytes per pixel and bytes per Tight pixel (3 for
/// 32-bit true colour of depth 24 whose channels' maxima are all 255).
fn sizes(format: &[u8; 16]) -> (usize, usize) {
    let bpp = usize::from(format[0]).div_ceil(8);
    let max = |at: usize| u16::from_be_bytes([format[at], format[at + 1]]);
    let rgb888 =
        format[0] == 32 && format[1] == 24 && format[3] != 0 && [4, 6, 8].map(max) == [255; 3];
    (bpp, if rgb888 { 3 } else { bpp })
}

/// A Tight compact length: 7 bits a byte, low first, a set high bit saying
/// another byte follows (the third takes all 8 bits): at most 2^22 − 1.
fn compact_length(b: &[u8]) -> usize {
    let mut len = usize::from(b[0] & 0x7f);
    if let Some(&b1) = b.get(1) {
        len |= usize::from(b1 & 0x7f) << 7;
    }
    if let Some(&b2) = b.get(2) {
        len |= usize::from(b2) << 14;
    }
    len
}

fn be16(h: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

fn be32(h: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

impl ServerParser {
    pub fn new() -> ServerParser {
        ServerParser {
            unit: Unit::Version,
            hdr: [0; MAX_SERVER_HEADER],
            seen: 0,
            body: None,
            rects_left: 0,
            bpp: 4,
            tpixel: 4,
            next_format: None,
            tiles: Tiles::default(),
            tight: (0, 0, 0),
            reset_tight: false,
            fed: 0,
            none_offered: false,
            size: (0, 0),
            failed: None,
        }
    }

    /// What a client sends to get through the handshake this parser
    /// follows: RFB 3.8, security type None, ClientInit *shared*. A client
    /// may send it at once, before the server's bytes arrive (QEMU reads
    /// pipelined handshakes).
    pub const CLIENT_HANDSHAKE: &'static [u8] = b"RFB 003.008\n\x01\x01";

    /// The client's SetPixelFormat (its 16-byte pixel format, after the
    /// type and padding), as it goes to the server: the next
    /// FramebufferUpdate that begins uses it. (An update the server had
    /// begun before it read the message, but whose header comes later,
    /// would be misread: the same ambiguity every viewer that changes its
    /// format mid-session lives with; viewers set it before their first
    /// update request.) Servers take 8, 16 and 32 bits per pixel only;
    /// anything else breaks the stream for good.
    pub fn set_pixel_format(&mut self, format: &[u8; 16]) {
        match format[0] {
            8 | 16 | 32 => self.next_format = Some(sizes(format)),
            bits => {
                self.failed.get_or_insert(RfbError::BitsPerPixel(bits));
            }
        }
    }

    /// From now on, the first Tight rectangle's control byte is reported
    /// ([`ServerEvent::TightControl`]), once: a viewer whose stream is
    /// spliced onto a new server keeps its Tight decoder's zlib streams,
    /// and the new server's are fresh, so that rectangle must tell the
    /// viewer to reset all four (the reset bits, which noVNC and TigerVNC
    /// honour).
    pub fn reset_tight_streams(&mut self) {
        self.reset_tight = true;
    }

    /// Whether the bytes fed so far end exactly between two server messages,
    /// after the handshake: where another server's stream may take over.
    pub fn at_message_boundary(&self) -> bool {
        self.failed.is_none() && self.unit == Unit::Message && self.seen == 0 && self.body.is_none()
    }

    /// Whether the handshake is over (ServerInit read).
    pub fn past_handshake(&self) -> bool {
        let in_handshake = matches!(
            self.unit,
            Unit::Version | Unit::SecurityCount | Unit::SecurityResult | Unit::ServerInit
        );
        let in_name = self.body.is_some_and(|(b, _)| b == Body::Name);
        !in_handshake && !in_name
    }

    /// The framebuffer's size as the server last said it (ServerInit,
    /// DesktopSize, ExtendedDesktopSize).
    pub fn size(&self) -> (u16, u16) {
        self.size
    }

    /// What broke the stream, if anything did.
    pub fn error(&self) -> Option<&RfbError> {
        self.failed.as_ref()
    }

    /// Reads `data`, calling `out` for each event; stops at the first error.
    pub fn feed<'a>(
        &mut self,
        mut data: &'a [u8],
        mut out: impl FnMut(ServerEvent<'a>),
    ) -> Result<(), RfbError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.fed = 0;
        while !data.is_empty() {
            match self.step(data, &mut out) {
                Ok(used) => {
                    data = &data[used..];
                    self.fed += used;
                }
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Reads `data` only as far as the next message boundary, calling `out`
    /// for each event on the way (as [`ServerParser::feed`] does): how many
    /// of its bytes that took (0 if the stream is between two messages
    /// now), or `None` if all of `data` was read without reaching one (the
    /// rest of the message comes later). Where a stream that must stop at a
    /// boundary is cut: the bytes after it are not read. An error leaves
    /// the parser broken, as [`ServerParser::feed`] does.
    pub fn feed_to_boundary<'a>(
        &mut self,
        data: &'a [u8],
        mut out: impl FnMut(ServerEvent<'a>),
    ) -> Result<Option<usize>, RfbError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.fed = 0;
        while !self.at_message_boundary() {
            if self.fed == data.len() {
                return Ok(None);
            }
            // One step never crosses a boundary: it ends at one at most.
            match self.step(&data[self.fed..], &mut out) {
                Ok(n) => self.fed += n,
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(Some(self.fed))
    }

    /// Takes some bytes off the front of non-empty `data`; how many.
    fn step<'a>(
        &mut self,
        data: &'a [u8],
        out: &mut impl FnMut(ServerEvent<'a>),
    ) -> Result<usize, RfbError> {
        if let Some((body, left)) = self.body {
            let take = left.min(data.len());
            let chunk = &data[..take];
            match body {
                Body::Pcm => out(ServerEvent::AudioData(chunk)),
                Body::SecurityTypes => self.none_offered |= chunk.contains(&1),
                Body::Name | Body::RectData | Body::Tile | Body::Palette | Body::Skip => {}
            }
            if take == left {
                self.body = None;
                self.after_body(body, out)?;
            } else {
                self.body = Some((body, left - take));
            }
            return Ok(take);
        }
        let mut used = 0;
        loop {
            let need = self.need()?;
            if self.seen >= need {
                break;
            }
            let take = (need - self.seen).min(data.len() - used);
            if self.unit == Unit::Sub(Sub::TightControl) && self.seen == 0 && self.reset_tight {
                self.reset_tight = false;
                out(ServerEvent::TightControl(self.fed + used));
            }
            self.hdr[self.seen..self.seen + take].copy_from_slice(&data[used..used + take]);
            self.seen += take;
            used += take;
            if self.seen < need {
                // The chunk ended inside the header.
                return Ok(used);
            }
        }
        self.after_header(out)?;
        Ok(used)
    }

    /// Header bytes the current unit needs, as far as `hdr` tells.
    fn need(&self) -> Result<usize, RfbError> {
        let h = &self.hdr[..self.seen];
        Ok(match self.unit {
            Unit::Version => 12,
            Unit::SecurityCount => 1,
            Unit::SecurityResult => 4,
            Unit::ServerInit => 24,
            Unit::Rect => 12,
            Unit::Sub(Sub::Rre) => 4 + self.bpp,
            Unit::Sub(Sub::Screens | Sub::Name) => 4,
            Unit::Sub(Sub::Tile) if h.is_empty() => 1,
            Unit::Sub(Sub::Tile) if h[0] & 1 != 0 => 1,
            Unit::Sub(Sub::Tile) => {
                let s = h[0];
                1 + if s & 2 != 0 { self.bpp } else { 0 }
                    + if s & 4 != 0 { self.bpp } else { 0 }
                    + usize::from(s & 8 != 0)
            }
            Unit::Sub(Sub::TightControl) if h.is_empty() => 1,
            Unit::Sub(Sub::TightControl) => match h[0] >> 4 {
                // Fill: one colour.
                8 => 1 + self.tpixel,
                // JPEG: its length follows.
                9 => 1,
                // Basic, no filter id.
                c if c & 0x8 == 0 && c & 0x4 == 0 => 1,
                // Basic with a filter id: a palette's size follows it.
                c if c & 0x8 == 0 && h.len() < 2 => 2,
                c if c & 0x8 == 0 => match h[1] {
                    TIGHT_COPY | TIGHT_GRADIENT => 2,
                    TIGHT_PALETTE => 3,
                    f => return Err(RfbError::TightFilter(f)),
                },
                // PNG (TightPNG only) and the undefined rest.
                _ => return Err(RfbError::TightControl(h[0])),
            },
            Unit::Sub(Sub::TightLength) => match h {
                [] => 1,
                [a] if a & 0x80 != 0 => 2,
                [_, b] if b & 0x80 != 0 => 3,
                _ => h.len(),
            },
            Unit::Message if h.is_empty() => 1,
            Unit::Message => match h[0] {
                0 => 4,
                1 => 6,
                2 | 150 => 1,
                3 => 8,
                248 => 9,
                255 if h.len() < 4 => 4,
                255 if h[1] != 1 => return Err(RfbError::QemuSubtype(h[1])),
                255 => match be16(h, 2) {
                    crate::audio::OP_END | crate::audio::OP_BEGIN => 4,
                    crate::audio::OP_DATA => 8,
                    op => return Err(RfbError::AudioOp(op)),
                },
                t => return Err(RfbError::ServerMessageType(t)),
            },
        })
    }

    /// Begins the next unit: its header.
    fn next(&mut self, unit: Unit) {
        self.unit = unit;
        self.seen = 0;
    }

    /// Begins a body of `len` bytes (an empty one ends at once).
    fn start_body<'a>(
        &mut self,
        body: Body,
        len: usize,
        out: &mut impl FnMut(ServerEvent<'a>),
    ) -> Result<(), RfbError> {
        if len == 0 {
            self.after_body(body, out)
        } else {
            self.body = Some((body, len));
            Ok(())
        }
    }

    fn after_header<'a>(&mut self, out: &mut impl FnMut(ServerEvent<'a>)) -> Result<(), RfbError> {
        let h = self.hdr;
        match self.unit {
            Unit::Version => {
                let (_, minor) = parse_version(&h)?;
                if minor < 8 {
                    // This parser follows the 3.8 handshake only.
                    return Err(RfbError::Version(
                        String::from_utf8_lossy(&h[..12]).into_owned(),
                    ));
                }
                self.next(Unit::SecurityCount);
            }
            Unit::SecurityCount => {
                if h[0] == 0 {
                    return Err(RfbError::SecurityRefused);
                }
                self.next(Unit::SecurityResult);
                self.start_body(Body::SecurityTypes, usize::from(h[0]), out)?;
            }
            Unit::SecurityResult => match be32(&h, 0) {
                0 => self.next(Unit::ServerInit),
                code => return Err(RfbError::SecurityFailed(code)),
            },
            Unit::ServerInit => {
                self.size = (be16(&h, 0), be16(&h, 2));
                let mut format = [0; 16];
                format.copy_from_slice(&h[4..20]);
                (self.bpp, self.tpixel) = sizes(&format);
                let name = be32(&h, 20);
                if name > MAX_NAME {
                    return Err(RfbError::NameTooLong(name));
                }
                self.next(Unit::Message);
                self.start_body(Body::Name, name as usize, out)?;
            }
            Unit::Message => self.after_message_header(&h, out)?,
            Unit::Rect => {
                let (w16, h16) = (be16(&h, 4), be16(&h, 6));
                let (w, hgt) = (usize::from(w16), usize::from(h16));
                let encoding = be32(&h, 8) as i32;
                self.next(Unit::Rect);
                // Every length below is at most 2^16 * 2^16 * 4 * 2 bytes:
                // no overflow on 64 bits, checked anyway.
                let area = |bytes: usize| {
                    w.checked_mul(hgt)
                        .and_then(|n| n.checked_mul(bytes))
                        .ok_or(RfbError::Encoding(encoding))
                };
                let mask = w.div_ceil(8).checked_mul(hgt);
                let mask = mask.ok_or(RfbError::Encoding(encoding))?;
                out(ServerEvent::Rect { encoding });
                let len = match encoding {
                    DESKTOP_SIZE => {
                        self.size = (w16, h16);
                        0
                    }
                    e if EMPTY_PSEUDO.contains(&e) => 0,
                    LED_STATE => 1,
                    RAW => area(self.bpp)?,
                    COPY_RECT => 4,
                    RRE => {
                        self.next(Unit::Sub(Sub::Rre));
                        return Ok(());
                    }
                    HEXTILE if w == 0 || hgt == 0 => 0,
                    HEXTILE => {
                        self.tiles = Tiles {
                            w: w16,
                            h: h16,
                            x: 0,
                            y: 0,
                        };
                        self.next(Unit::Sub(Sub::Tile));
                        return Ok(());
                    }
                    CURSOR => area(self.bpp)?
                        .checked_add(mask)
                        .ok_or(RfbError::Encoding(encoding))?,
                    X_CURSOR if w == 0 || hgt == 0 => 0,
                    X_CURSOR => 6 + 2 * mask,
                    EXTENDED_DESKTOP_SIZE => {
                        // y is the status: 0 is a new size, else a refusal.
                        if be16(&h, 2) == 0 {
                            self.size = (w16, h16);
                        }
                        self.next(Unit::Sub(Sub::Screens));
                        return Ok(());
                    }
                    DESKTOP_NAME => {
                        self.next(Unit::Sub(Sub::Name));
                        return Ok(());
                    }
                    TIGHT => {
                        self.tight = (w, hgt, 0);
                        self.next(Unit::Sub(Sub::TightControl));
                        return Ok(());
                    }
                    e => return Err(RfbError::Encoding(e)),
                };
                if encoding == LAST_RECT {
                    self.rects_left = 1;
                }
                self.start_body(Body::RectData, len, out)?;
            }
            Unit::Sub(Sub::TightControl) => {
                self.seen = 0;
                return self.after_tight_control(&h, out);
            }
            Unit::Sub(Sub::TightLength) => {
                let len = compact_length(&h[..self.seen]);
                self.seen = 0;
                self.start_body(Body::RectData, len, out)?;
            }
            Unit::Sub(sub) => {
                let (body, len) = match sub {
                    Sub::Rre => {
                        let n = be32(&h, 0) as usize;
                        let len = n.checked_mul(self.bpp + 8);
                        (Body::RectData, len.ok_or(RfbError::Encoding(RRE))?)
                    }
                    Sub::Screens => (Body::RectData, 16 * usize::from(h[0])),
                    Sub::Name => {
                        let name = be32(&h, 0);
                        if name > MAX_NAME {
                            return Err(RfbError::NameTooLong(name));
                        }
                        (Body::RectData, name as usize)
                    }
                    Sub::Tile => {
                        let (tw, th) = self.tiles.tile();
                        let s = h[0];
                        let len = if s & 1 != 0 {
                            tw * th * self.bpp
                        } else if s & 8 != 0 {
                            let n = usize::from(h[self.seen - 1]);
                            n * if s & 16 != 0 { self.bpp + 2 } else { 2 }
                        } else {
                            0
                        };
                        (Body::Tile, len)
                    }
                    Sub::TightControl | Sub::TightLength => unreachable!("handled above"),
                };
                self.seen = 0;
                self.start_body(body, len, out)?;
            }
        }
        Ok(())
    }

    fn after_message_header<'a>(
        &mut self,
        h: &[u8; MAX_SERVER_HEADER],
        out: &mut impl FnMut(ServerEvent<'a>),
    ) -> Result<(), RfbError> {
        self.next(Unit::Message);
        match h[0] {
            0 => {
                if let Some((bpp, tpixel)) = self.next_format.take() {
                    (self.bpp, self.tpixel) = (bpp, tpixel);
                }
                self.rects_left = be16(h, 2);
                if self.rects_left > 0 {
                    self.next(Unit::Rect);
                }
            }
            1 => {
                out(ServerEvent::Other("colour map entries"));
                self.start_body(Body::Skip, 6 * usize::from(be16(h, 4)), out)?;
            }
            2 => out(ServerEvent::Other("bell")),
            3 => {
                // Negative: the extended clipboard form, |length| bytes follow.
                let len = (be32(h, 4) as i32).unsigned_abs();
                if len > MAX_CUT_TEXT {
                    return Err(RfbError::CutTextTooLong(len));
                }
                out(ServerEvent::Other("clipboard"));
                self.start_body(Body::Skip, len as usize, out)?;
            }
            150 => out(ServerEvent::Other("end of continuous updates")),
            248 => {
                let len = usize::from(h[8]);
                if len > MAX_FENCE {
                    return Err(RfbError::FenceTooLong(len));
                }
                out(ServerEvent::Other("fence"));
                self.start_body(Body::Skip, len, out)?;
            }
            _ => match be16(h, 2) {
                crate::audio::OP_END => out(ServerEvent::AudioEnd),
                crate::audio::OP_BEGIN => out(ServerEvent::AudioBegin),
                _ => {
                    let len = be32(h, 4);
                    if len > MAX_AUDIO_DATA {
                        return Err(RfbError::AudioDataTooLong(len));
                    }
                    self.start_body(Body::Pcm, len as usize, out)?;
                }
            },
        }
        Ok(())
    }

    /// A Tight rectangle's control header (`h`) is read: what follows it.
    fn after_tight_control<'a>(
        &mut self,
        h: &[u8; MAX_SERVER_HEADER],
        out: &mut impl FnMut(ServerEvent<'a>),
    ) -> Result<(), RfbError> {
        let (w, hgt, _) = self.tight;
        let too_big = || RfbError::Encoding(TIGHT);
        match h[0] >> 4 {
            8 => self.start_body(Body::RectData, 0, out),
            9 => {
                self.next(Unit::Sub(Sub::TightLength));
                Ok(())
            }
            c => {
                let filter = if c & 0x4 != 0 { h[1] } else { TIGHT_COPY };
                let pixels = w.checked_mul(hgt).ok_or_else(too_big)?;
                if filter == TIGHT_PALETTE {
                    let colours = usize::from(h[2]) + 1;
                    // Two colours (or one) take a bit per pixel, rows padded
                    // to a byte; more take a byte.
                    let raw = if colours <= 2 {
                        w.div_ceil(8).checked_mul(hgt).ok_or_else(too_big)?
                    } else {
                        pixels
                    };
                    self.tight.2 = raw;
                    self.start_body(Body::Palette, colours * self.tpixel, out)
                } else {
                    self.tight.2 = pixels.checked_mul(self.tpixel).ok_or_else(too_big)?;
                    self.tight_data(out)
                }
            }
        }
    }

    /// A Tight rectangle's pixel data: as it is when short, else its
    /// compressed length first.
    fn tight_data<'a>(&mut self, out: &mut impl FnMut(ServerEvent<'a>)) -> Result<(), RfbError> {
        let raw = self.tight.2;
        if raw < TIGHT_MIN_TO_COMPRESS {
            self.start_body(Body::RectData, raw, out)
        } else {
            self.next(Unit::Sub(Sub::TightLength));
            Ok(())
        }
    }

    /// A rectangle ended: the next one, or the next message.
    fn rect_done(&mut self) {
        self.rects_left -= 1;
        self.next(if self.rects_left == 0 {
            Unit::Message
        } else {
            Unit::Rect
        });
    }

    fn after_body<'a>(
        &mut self,
        body: Body,
        out: &mut impl FnMut(ServerEvent<'a>),
    ) -> Result<(), RfbError> {
        match body {
            Body::SecurityTypes if !self.none_offered => Err(RfbError::NoSecurityNone),
            Body::Name => {
                out(ServerEvent::Ready {
                    width: self.size.0,
                    height: self.size.1,
                });
                Ok(())
            }
            Body::RectData => {
                self.rect_done();
                Ok(())
            }
            Body::Tile => {
                if self.tiles.advance() {
                    self.next(Unit::Sub(Sub::Tile));
                } else {
                    self.rect_done();
                }
                Ok(())
            }
            Body::Palette => self.tight_data(out),
            Body::SecurityTypes | Body::Pcm | Body::Skip => Ok(()),
        }
    }
}
