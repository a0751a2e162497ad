//! The client ↔ gateway WebSocket's control messages, and how a client reads
//! the end of a session.
//!
//! On a console WebSocket, binary messages carry the console's bytes and
//! text messages carry [`Control`] messages as JSON objects tagged by
//! `type`:
//!
//! ```text
//! {"type":"eof"}                  either way: the sender has no more data
//! {"type":"notice","text":"…"}    gateway → client: vmgate speaking to the user
//! ```
//!
//! A notice travels out of band on purpose: the guest only ever produces
//! binary messages, so nothing it prints can pass for a notice, and clients
//! show notices apart from the console's bytes (stderr, a status line).
//!
//! Kinds this build does not know parse as [`Control::Unknown`] and are
//! ignored, so a newer peer can add kinds (audio, media) without breaking
//! an older one. Fields a kind does not know are ignored for the same
//! reason.
//!
//! The end of a session is the WebSocket close frame: its code is a
//! [`CloseCode`] ([`CloseCode::from_websocket`] reads it, standard
//! WebSocket codes included), its reason the sentence for the user. A
//! command-line client turns it into an exit status with
//! [`CloseCode::exit_status`] ([`EXIT_STATUS`] is the table for `--help`).
//!
//! Sans-IO: text in, a typed message or a named error out.

use serde::{Deserialize, Serialize};

use crate::CloseCode;

/// The longest control message accepted, in bytes; a longer one is refused
/// before it is parsed. Room for a [`MAX_NOTICE`]-byte notice even if every
/// byte needs a six-byte JSON escape.
pub const MAX_CONTROL_LEN: usize = 8 * 1024;

/// The longest notice text, in bytes: [`Control::notice`] cuts longer text
/// on a character boundary.
pub const MAX_NOTICE: usize = 1024;

/// A control message: the text messages of a console WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Control {
    /// The sender will send no more data (a half-close); the other
    /// direction goes on.
    Eof,
    /// Text for the user from vmgate, never from the guest ("you hold the
    /// keyboard", "keyboard taken over").
    Notice { text: String },
    /// A kind this build does not know: ignore it.
    #[serde(other)]
    Unknown,
}

/// Why a text message is not a control message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Longer than [`MAX_CONTROL_LEN`]; not parsed.
    #[error("control message of {0} bytes exceeds the limit of {MAX_CONTROL_LEN}")]
    TooLong(usize),
    /// Not a JSON object with a string `type`, or a known kind with a
    /// missing or mistyped field (a notice without `text`). Says where, never
    /// what: the text is the peer's and must not reach a log as it is.
    #[error("malformed control message ({what} at column {column})")]
    Malformed {
        /// "syntax error", "unexpected end", "wrong field or type".
        what: &'static str,
        column: usize,
    },
}

impl Control {
    /// A notice, its text cut to [`MAX_NOTICE`] bytes on a char boundary.
    pub fn notice(text: impl Into<String>) -> Control {
        let mut text = text.into();
        if text.len() > MAX_NOTICE {
            let mut end = MAX_NOTICE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Control::Notice { text }
    }

    /// Reads a text message. The length is checked before anything is
    /// parsed.
    pub fn parse(text: &str) -> Result<Control, ControlError> {
        if text.len() > MAX_CONTROL_LEN {
            return Err(ControlError::TooLong(text.len()));
        }
        serde_json::from_str(text).map_err(|e| ControlError::Malformed {
            what: match e.classify() {
                serde_json::error::Category::Syntax => "syntax error",
                serde_json::error::Category::Eof => "unexpected end",
                _ => "wrong field or type",
            },
            column: e.column(),
        })
    }

    /// The message as the JSON text of a WebSocket text message.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("control messages always serialize")
    }
}

/// Exit statuses of the client commands that report how a session ended
/// (`vmgate console`, `vmgate channel` and the commands built like them),
/// for `--help`.
pub const EXIT_STATUS: &str = "\
Exit status:
  0    the session ended normally: EOF both ways, or closed on this side
  1    the session could not start: no ticket key, gateway unreachable, TLS
  2    bad command line
  3    refused: ticket (4401, 4403), no such guest or channel (4404, 4405),
       channel in use (4409: retry later or use --force), too many (4429)
  4    the guest went away (4410): QEMU closed the port, e.g. it powered off;
       or it migrated and could not be followed (4413)
  5    ended by someone else: taken over with --force (4411), by an
       administrator (4412), the ticket's maximum session length (4408), the
       gateway shutting down (1001)
  6    the connection broke: agent unreachable (4502), backend error (4503),
       protocol or internal error, connection lost without a close
  129, 130, 143  stopped by SIGHUP, SIGINT, SIGTERM";

impl CloseCode {
    /// The code of a WebSocket close frame as a client receives it. vmgate's
    /// own codes map to themselves; standard codes that say the peer broke
    /// the protocol (1002, 1003, 1007, 1009, 1010) are
    /// [`CloseCode::ProtocolError`]; anything else, including "no status"
    /// (1005) and "abnormal closure" (1006), is [`CloseCode::Internal`]: the
    /// session did not end the way vmgate ends sessions.
    pub fn from_websocket(code: u16) -> CloseCode {
        match code {
            1002 | 1003 | 1007 | 1009 | 1010 => CloseCode::ProtocolError,
            _ => CloseCode::from_u16(code),
        }
    }

    /// The exit status of a client command whose session ended with this
    /// code, as [`EXIT_STATUS`] lists them.
    pub fn exit_status(self) -> i32 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::TicketRefused
            | CloseCode::TicketScope
            | CloseCode::UnknownGuest
            | CloseCode::UnknownChannel
            | CloseCode::ChannelInUse
            | CloseCode::TooMany => 3,
            CloseCode::GuestDown | CloseCode::GuestMoved => 4,
            CloseCode::TakenOver
            | CloseCode::EndedByAdmin
            | CloseCode::SessionExpired
            | CloseCode::GoingAway => 5,
            CloseCode::ProtocolError
            | CloseCode::Internal
            | CloseCode::AgentUnreachable
            | CloseCode::BackendError => 6,
        }
    }

    /// What the user can do next, for a close that came without a reason
    /// (a gateway's closes always carry one that says it better).
    pub fn hint(self) -> &'static str {
        match self {
            CloseCode::Normal => "the session ended",
            CloseCode::GoingAway => "the gateway is shutting down: reconnect in a moment",
            CloseCode::ProtocolError => {
                "protocol error: check that client and gateway versions match"
            }
            CloseCode::TicketRefused => "ticket refused: mint a new one with `vmgate ticket`",
            CloseCode::TicketScope => "the ticket does not cover this guest or channel",
            CloseCode::UnknownGuest => "no such guest: check its name",
            CloseCode::UnknownChannel => "the guest has no such channel",
            CloseCode::SessionExpired => "the session's time is up: mint a new ticket",
            CloseCode::ChannelInUse => "the channel is in use: retry later or use --force",
            CloseCode::GuestDown => "the guest is not running",
            CloseCode::TakenOver => "another session took over",
            CloseCode::EndedByAdmin => "an administrator ended the session",
            CloseCode::GuestMoved => "the guest moved to another node: reconnect",
            CloseCode::TooMany => "too many sessions or attempts: retry later",
            CloseCode::Internal => "the session ended abnormally",
            CloseCode::AgentUnreachable => "the guest's node cannot be reached: retry later",
            CloseCode::BackendError => "the node could not reach the guest's console",
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_wire_text_is_what_docs_wire_md_says() {
        assert_eq!(Control::Eof.to_text(), r#"{"type":"eof"}"#);
        assert_eq!(
            Control::notice("you hold the keyboard").to_text(),
            r#"{"type":"notice","text":"you hold the keyboard"}"#
        );
        assert_eq!(Control::parse(r#"{"type":"eof"}"#), Ok(Control::Eof));
        assert_eq!(
            Control::parse(r#" { "text" : "hi", "type" : "notice", "level": 2 } "#),
            Ok(Control::notice("hi"))
        );
    }

    #[test]
    fn an_error_never_repeats_the_peers_text() {
        let e =
            Control::parse("{\"type\":\"notice\",\"text\":[\"\u{1b}]0;owned\u{7}\"]}").unwrap_err();
        assert!(!e.to_string().contains("owned"), "{e}");
    }

    #[test]
    fn unknown_kinds_are_ignorable_not_errors() {
        assert_eq!(
            Control::parse(r#"{"type":"audio-format","rate":48000}"#),
            Ok(Control::Unknown)
        );
    }

    #[test]
    fn malformed_and_oversized_messages_are_refused_with_their_reason() {
        for bad in [
            "",
            "eof",
            "[]",
            r#"{"kind":"eof"}"#,
            r#"{"type":7}"#,
            r#"{"type":"notice"}"#,
            r#"{"type":"notice","text":3}"#,
        ] {
            assert!(
                matches!(Control::parse(bad), Err(ControlError::Malformed { .. })),
                "{bad:?}"
            );
        }
        let long = format!(
            r#"{{"type":"notice","text":"{}"}}"#,
            "a".repeat(MAX_CONTROL_LEN)
        );
        assert_eq!(
            Control::parse(&long),
            Err(ControlError::TooLong(long.len()))
        );
    }

    #[test]
    fn notices_are_cut_on_a_char_boundary() {
        let Control::Notice { text } = Control::notice("é".repeat(MAX_NOTICE)) else {
            unreachable!()
        };
        assert!(text.len() <= MAX_NOTICE && text.len() > MAX_NOTICE - 2);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn websocket_codes_map_to_close_codes_and_exit_statuses() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_websocket(c as u16), c);
            assert!(!c.hint().is_empty());
        }
        assert_eq!(CloseCode::from_websocket(1002), CloseCode::ProtocolError);
        assert_eq!(CloseCode::from_websocket(1005), CloseCode::Internal);
        assert_eq!(CloseCode::from_websocket(1006), CloseCode::Internal);
        let status = |c| CloseCode::from_websocket(c).exit_status();
        assert_eq!(status(1000), 0);
        for c in [4401, 4403, 4404, 4405, 4409, 4429] {
            assert_eq!(status(c), 3, "{c}");
        }
        for c in [4410, 4413] {
            assert_eq!(status(c), 4, "{c}");
        }
        for c in [4411, 4412, 4408, 1001] {
            assert_eq!(status(c), 5, "{c}");
        }
        for c in [4502, 4503, 4400, 4500, 1002, 1005, 1006] {
            assert_eq!(status(c), 6, "{c}");
        }
    }

    proptest! {
        #[test]
        fn notices_round_trip_whatever_their_text(text in any::<String>()) {
            let msg = Control::notice(text);
            let wire = msg.to_text();
            prop_assert!(wire.len() <= MAX_CONTROL_LEN);
            prop_assert_eq!(Control::parse(&wire), Ok(msg));
        }

        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in any::<String>()) {
            let _ = Control::parse(&text);
        }

        #[test]
        fn json_objects_of_any_type_parse_or_are_refused(ty in any::<String>(), text in any::<String>()) {
            let v = serde_json::json!({"type": ty, "text": text});
            let parsed = Control::parse(&v.to_string());
            match ty.as_str() {
                "eof" => prop_assert_eq!(parsed, Ok(Control::Eof)),
                "notice" => prop_assert_eq!(parsed, Ok(Control::Notice { text })),
                _ => prop_assert_eq!(parsed, Ok(Control::Unknown)),
            }
        }
    }
}
