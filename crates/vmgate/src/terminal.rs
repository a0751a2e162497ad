//! What `vmgate console` lets a guest do to the operator's terminal.
//!
//! A guest's serial output goes to a real terminal, and some escape
//! sequences do more than draw: OSC 0/1/2 rewrite the window title, OSC 52
//! writes the clipboard, DCS/APC/PM/SOS strings carry commands for the
//! terminal (or a multiplexer, which may pass an OSC 52 on), and `CSI … t`
//! moves, resizes or reports the window. [`Filter`] removes those and
//! passes everything else (text, colours, cursor movement, screen modes)
//! unchanged. It is sans-IO: bytes in, bytes out, with a few bytes of state
//! kept between reads, so a sequence split across two reads is recognised.
//!
//! [`Filter::reset`] is what to write on exit to undo the modes a guest
//! left set (alternate screen, mouse reporting, hidden cursor, …), and
//! [`printable`] makes network text (notices, close reasons) safe to print.

/// The longest CSI sequence kept to decide on; a longer one is dropped
/// whole (no terminal needs one that long).
const MAX_CSI: usize = 64;
/// The longest OSC/DCS/APC/PM/SOS string swallowed. After that the filter
/// stops swallowing: the terminal never saw the string's start, so what
/// follows is plain text to it, and output is not lost for good to a
/// string that never ends.
const MAX_STRING: usize = 64 * 1024;

/// DEC private modes a guest may leave set, and how to undo each.
const MODES: &[(u16, &[u8])] = &[
    (1049, b"\x1b[?1049l"),
    (1047, b"\x1b[?1047l"),
    (47, b"\x1b[?47l"),
    (1000, b"\x1b[?1000l"),
    (1002, b"\x1b[?1002l"),
    (1003, b"\x1b[?1003l"),
    (1005, b"\x1b[?1005l"),
    (1006, b"\x1b[?1006l"),
    (1015, b"\x1b[?1015l"),
    (2004, b"\x1b[?2004l"),
    (1, b"\x1b[?1l"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    /// After ESC.
    Esc,
    /// After 0xC2, which starts the UTF-8 encoding of a C1 control.
    C2,
    /// In a CSI sequence; its bytes are in `csi`.
    Csi,
    /// In a CSI sequence too long to keep: dropped up to its final byte.
    CsiSkip,
    /// In a string (OSC, DCS, APC, PM, SOS): dropped up to its terminator.
    Str,
    /// ESC inside a string: `\` ends it (ST).
    StrEsc,
    /// 0xC2 inside a string: 0x9C ends it (ST as UTF-8).
    StrC2,
}

/// Removes the escape sequences that act on the terminal itself (title,
/// clipboard, window) from a byte stream.
#[derive(Debug, Clone)]
pub struct Filter {
    state: State,
    /// The CSI sequence being read (ESC [ or C2 9B, then its bytes).
    csi: Vec<u8>,
    /// Bytes of the string swallowed so far.
    swallowed: usize,
    /// The string is an OSC, which BEL also ends.
    osc: bool,
    /// Which of [`MODES`] the guest set and did not unset.
    modes: Vec<u16>,
    cursor_hidden: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new()
    }
}

impl Filter {
    pub fn new() -> Filter {
        Filter {
            state: State::Ground,
            csi: Vec::with_capacity(MAX_CSI),
            swallowed: 0,
            osc: false,
            modes: Vec::new(),
            cursor_hidden: false,
        }
    }

    /// Filters `input`, appending what may reach the terminal to `out`.
    /// Bytes that may start a sequence are held until the next call.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn start_string(&mut self, osc: bool) {
        self.state = State::Str;
        self.swallowed = 0;
        self.osc = osc;
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => match b {
                0x1b => self.state = State::Esc,
                0xc2 => self.state = State::C2,
                _ => out.push(b),
            },
            State::Esc => match b {
                b']' => self.start_string(true),
                b'P' | b'X' | b'^' | b'_' => self.start_string(false),
                b'[' => {
                    self.csi.clear();
                    self.csi.extend_from_slice(b"\x1b[");
                    self.state = State::Csi;
                }
                // ESC ESC: the second starts over, as in a terminal. A
                // lone ESC is never passed on: whatever came next would
                // complete it.
                0x1b => {}
                // CAN and SUB cancel the sequence.
                0x18 | 0x1a => {
                    out.push(b);
                    self.state = State::Ground;
                }
                // Other controls act at once and the sequence goes on, as
                // in a terminal: pass them, keep the ESC.
                0x00..=0x1f => out.push(b),
                // Not a sequence: the ESC is dropped, the byte read afresh.
                0x80..=0xff => {
                    self.state = State::Ground;
                    self.byte(b, out);
                }
                _ => {
                    out.extend_from_slice(&[0x1b, b]);
                    self.state = State::Ground;
                }
            },
            State::C2 => match b {
                // OSC, DCS, SOS, PM, APC as UTF-8 encoded C1 controls.
                0x9d => self.start_string(true),
                0x90 | 0x98 | 0x9e | 0x9f => self.start_string(false),
                0x9b => {
                    self.csi.clear();
                    self.csi.extend_from_slice(&[0xc2, 0x9b]);
                    self.state = State::Csi;
                }
                // A lead byte without its continuation is not UTF-8; passed
                // on alone, it could pair with whatever comes next.
                0x80..=0xbf => {
                    out.extend_from_slice(&[0xc2, b]);
                    self.state = State::Ground;
                }
                _ => {
                    self.state = State::Ground;
                    self.byte(b, out);
                }
            },
            State::Csi => match b {
                0x40..=0x7e => {
                    self.csi.push(b);
                    if b != b't' {
                        self.note_modes();
                        out.extend_from_slice(&self.csi);
                    }
                    self.csi.clear();
                    self.state = State::Ground;
                }
                0x20..=0x3f if self.csi.len() < MAX_CSI => self.csi.push(b),
                0x20..=0x3f => {
                    self.csi.clear();
                    self.state = State::CsiSkip;
                }
                // ESC aborts the sequence and starts another.
                0x1b => {
                    self.csi.clear();
                    self.state = State::Esc;
                }
                // CAN and SUB abort it; other controls act at once, as a
                // terminal runs them in the middle of a sequence.
                0x18 | 0x1a => {
                    self.csi.clear();
                    out.push(b);
                    self.state = State::Ground;
                }
                0x00..=0x1f => out.push(b),
                _ => {
                    self.csi.clear();
                    self.state = State::Ground;
                    self.byte(b, out);
                }
            },
            State::CsiSkip => {
                if (0x40..=0x7e).contains(&b) || b == 0x18 || b == 0x1a {
                    self.state = State::Ground;
                } else if b == 0x1b {
                    self.state = State::Esc;
                }
            }
            State::Str | State::StrEsc | State::StrC2 => self.string_byte(b, out),
        }
    }

    fn string_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        self.swallowed += 1;
        let state = self.state;
        self.state = State::Str;
        match (state, b) {
            // CAN and SUB cancel any string; BEL ends an OSC (xterm's
            // terminator, used by everyone).
            (_, 0x18 | 0x1a) => self.state = State::Ground,
            (_, 0x07) if self.osc => self.state = State::Ground,
            (State::StrEsc, b'\\') => self.state = State::Ground,
            (State::StrC2, 0x9c) => self.state = State::Ground,
            // A doubled ESC is an ESC inside the string (how tmux passes a
            // sequence through a DCS): still the string.
            (State::StrEsc, 0x1b) => {}
            // ESC then anything but `\` ends the string and starts a new
            // sequence, as terminals do.
            (State::StrEsc, _) => {
                self.state = State::Esc;
                self.byte(b, out);
            }
            (_, 0x1b) => self.state = State::StrEsc,
            (_, 0xc2) => self.state = State::StrC2,
            _ => {}
        }
        if self.swallowed >= MAX_STRING && matches!(self.state, State::Str) {
            self.state = State::Ground;
        }
    }

    /// Records `CSI ? Pm h` / `CSI ? Pm l` of the modes in [`MODES`] and
    /// the cursor's visibility (mode 25).
    fn note_modes(&mut self) {
        let body = match self.csi.as_slice() {
            [0x1b, b'[', rest @ ..] | [0xc2, 0x9b, rest @ ..] => rest,
            _ => return,
        };
        let Some((&last, params)) = body.split_last() else {
            return;
        };
        let set = match last {
            b'h' => true,
            b'l' => false,
            _ => return,
        };
        let Some(params) = params.strip_prefix(b"?") else {
            return;
        };
        for p in params.split(|&c| c == b';') {
            let Some(n) = std::str::from_utf8(p)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
            else {
                continue;
            };
            if n == 25 {
                self.cursor_hidden = !set;
            } else if MODES.iter().any(|(m, _)| *m == n) {
                self.modes.retain(|m| *m != n);
                if set {
                    self.modes.push(n);
                }
            }
        }
    }

    /// What to write to the terminal when the session ends: undoes the
    /// modes the guest left set, shows the cursor, resets colours and
    /// attributes, and leaves keypad application mode.
    pub fn reset(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (m, undo) in MODES {
            if self.modes.contains(m) {
                out.extend_from_slice(undo);
            }
        }
        if self.cursor_hidden {
            out.extend_from_slice(b"\x1b[?25h");
        }
        out.extend_from_slice(b"\x1b[0m\x1b>");
        out
    }
}

/// `text` with control characters shown as `\u{..}` escapes: notices and
/// close reasons come from the network and must not drive the terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn filter(input: &[u8]) -> Vec<u8> {
        let mut f = Filter::new();
        let mut out = Vec::new();
        f.push(input, &mut out);
        out
    }

    #[test]
    fn title_and_clipboard_sequences_are_removed() {
        for seq in [
            &b"\x1b]0;pwned\x07"[..],
            b"\x1b]2;pwned\x1b\\",
            b"\x1b]1;pwned\x07",
            b"\x1b]52;c;cHduZWQ=\x07",
            b"\x1b]52;c;cHduZWQ=\x1b\\",
            b"\xc2\x9d0;pwned\xc2\x9c",
            b"\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\",
            b"\x1b_app\x1b\\",
            b"\x1b^pm\x1b\\",
            b"\x1bXsos\x1b\\",
            b"\x1b[21t",
            b"\x1b[8;100;300t",
        ] {
            let mut input = b"before ".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b" after");
            assert_eq!(
                filter(&input),
                b"before  after",
                "{}",
                String::from_utf8_lossy(seq).escape_debug()
            );
        }
    }

    #[test]
    fn colours_cursor_movement_and_text_pass_unchanged() {
        let screen = "\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[10;5H\x1b[K\x1b[?25l\x1b[?25h\x1b(B\x1b7\x1b8\x1bM é ü 漢 \r\n\t\x08\x07";
        assert_eq!(filter(screen.as_bytes()), screen.as_bytes());
    }

    #[test]
    fn a_sequence_split_across_reads_is_still_recognised() {
        let input = b"a\x1b]52;c;eA==\x07b\x1b[31mc\xc2\x9d2;t\xc2\x9cd\x1b[8;1;1te";
        let want = filter(input);
        assert_eq!(want, b"ab\x1b[31mcde");
        for cut in 0..input.len() {
            let mut f = Filter::new();
            let mut out = Vec::new();
            f.push(&input[..cut], &mut out);
            f.push(&input[cut..], &mut out);
            assert_eq!(out, want, "cut at {cut}");
        }
    }

    #[test]
    fn state_is_bounded_and_a_string_that_never_ends_does_not_swallow_everything() {
        let mut f = Filter::new();
        let mut out = Vec::new();
        f.push(b"\x1b]0;", &mut out);
        f.push(&vec![b'x'; MAX_STRING + 10], &mut out);
        // Everything past the bound is passed: "0;" and the x's beyond.
        assert_eq!(out.len(), 12);
        f.push(b"visible", &mut out);
        assert!(out.ends_with(b"visible"));
        // An endless CSI is dropped up to its final byte, holding nothing.
        let mut f = Filter::new();
        let mut out = Vec::new();
        f.push(b"\x1b[", &mut out);
        f.push(&vec![b'1'; 10 * MAX_CSI], &mut out);
        assert!(f.csi.len() <= MAX_CSI);
        f.push(b"tok", &mut out);
        assert_eq!(out, b"ok");
    }

    #[test]
    fn reset_undoes_what_the_guest_left_set() {
        let mut f = Filter::new();
        let mut out = Vec::new();
        f.push(
            b"\x1b[?1049h\x1b[?1000;1006h\x1b[?25l\x1b[?2004h\x1b[?2004l",
            &mut out,
        );
        let reset = f.reset();
        let text = String::from_utf8(reset).unwrap();
        assert_eq!(
            text,
            "\x1b[?1049l\x1b[?1000l\x1b[?1006l\x1b[?25h\x1b[0m\x1b>"
        );
        assert_eq!(Filter::new().reset(), b"\x1b[0m\x1b>");
    }

    #[test]
    fn a_lone_esc_or_lead_byte_cannot_pair_with_what_follows_a_dropped_string() {
        assert_eq!(filter(b"\x1b\x1b]0;t\x07]x"), b"]x");
        assert_eq!(filter(b"\xc2\x1b]0;t\x07\x9dx"), b"\x9dx");
        assert_eq!(filter(b"\x1b\xc2\x9d0;t\x07x"), b"x");
        assert_eq!(filter(b"\x1b\n]0;t\x07x"), b"\nx");
        assert_eq!(filter(b"\xc2\xc2\x9d0;t\x07\x9dx"), b"\x9dx");
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(
            printable("taken over\x1b]0;x\x07 by é"),
            "taken over\\u{1b}]0;x\\u{7} by é"
        );
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        // Biased towards the bytes that matter.
        let byte = prop_oneof![
            Just(0x1bu8),
            Just(b']'),
            Just(b'['),
            Just(b'P'),
            Just(b'_'),
            Just(b'\\'),
            Just(0x07u8),
            Just(0xc2u8),
            Just(0x9du8),
            Just(0x9cu8),
            Just(b't'),
            Just(b'5'),
            Just(b';'),
            any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..400)
    }

    /// Whether `out` holds the start of a string sequence or a window
    /// command, whatever came before.
    fn has_forbidden(out: &[u8]) -> bool {
        out.windows(2).any(|w| {
            (w[0] == 0x1b && matches!(w[1], b']' | b'P' | b'X' | b'^' | b'_'))
                || (w[0] == 0xc2 && matches!(w[1], 0x9d | 0x90 | 0x98 | 0x9e | 0x9f))
        })
    }

    proptest! {
        #[test]
        fn output_never_starts_a_string_whatever_the_input_and_its_cuts(
            input in arb_stream(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let whole = filter(&input);
            prop_assert!(!has_forbidden(&whole), "{:?}", whole);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            at.sort();
            let mut f = Filter::new();
            let mut out = Vec::new();
            let mut from = 0;
            for to in at {
                f.push(&input[from..to], &mut out);
                from = to;
            }
            f.push(&input[from..], &mut out);
            prop_assert_eq!(out, whole);
        }

        #[test]
        fn text_without_escapes_passes_unchanged(text in "[^\u{1b}\u{80}-\u{9f}]*") {
            prop_assert_eq!(filter(text.as_bytes()), text.as_bytes());
        }
    }
}
