//! Logging text that came from outside: [`Escaped`] writes it so it can
//! neither forge a log line nor reach an operator's terminal as an escape
//! sequence, and bounds its length.

use std::fmt;

/// At most this many characters of untrusted text reach a log line.
pub const MAX_LOGGED_CHARS: usize = 64;

/// Untrusted text for a log line: printable ASCII as it is, `"` and `\`
/// escaped, every other character (newlines, ESC, other control
/// characters, anything non-ASCII such as bidi overrides) as `\u{…}`; cut
/// after [`MAX_LOGGED_CHARS`] characters with the original length noted.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars().take(MAX_LOGGED_CHARS) {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                ' '..='~' => fmt::Write::write_char(f, c)?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
        }
        f.write_str("\"")?;
        if self.0.chars().nth(MAX_LOGGED_CHARS).is_some() {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_quotes_and_non_ascii_are_escaped() {
        let s = Escaped("a\nb\x1b[31m\"q\"\\\u{202e}é").to_string();
        assert_eq!(s, r#""a\u{a}b\u{1b}[31m\"q\"\\\u{202e}\u{e9}""#);
    }

    #[test]
    fn long_text_is_cut_and_says_how_long_it_was() {
        let long = "x".repeat(1000);
        let s = Escaped(&long).to_string();
        assert_eq!(
            s,
            format!("\"{}\"…(1000 bytes)", "x".repeat(MAX_LOGGED_CHARS))
        );
        let exact = "y".repeat(MAX_LOGGED_CHARS);
        assert_eq!(Escaped(&exact).to_string(), format!("\"{exact}\""));
    }

    proptest::proptest! {
        /// Whatever the input, the output is printable ASCII and bounded.
        #[test]
        fn output_is_printable_ascii_and_bounded(s in "\\PC*|[\\x00-\\x1f\\x7f]*") {
            let out = Escaped(&s).to_string();
            let body = out.split('…').next().unwrap();
            proptest::prop_assert!(body.bytes().all(|b| (b' '..=b'~').contains(&b)), "{}", out);
            proptest::prop_assert!(body.len() <= 2 + MAX_LOGGED_CHARS * 10);
        }
    }
}
