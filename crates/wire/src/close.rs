//! Why a session ended, as one code shared by every hop.
//!
//! The numeric value is the WebSocket close code the gateway sends to the
//! client, so a reason travels from the agent to a browser unchanged.

use serde::{Deserialize, Serialize};

/// Why a session ended or was refused. Values are WebSocket close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum CloseCode {
    /// The session ended normally (client detached, stream finished).
    Normal = 1000,
    /// The gateway or agent is shutting down.
    GoingAway = 1001,
    /// The peer sent bytes that break the protocol (bad frame, bad RFB).
    ProtocolError = 4400,
    /// The ticket was refused (malformed, bad signature, expired, replayed).
    TicketRefused = 4401,
    /// The ticket does not cover this guest or channel.
    TicketScope = 4403,
    /// No agent reports a guest of that name.
    UnknownGuest = 4404,
    /// The guest has no such channel (or it is not exposed).
    UnknownChannel = 4405,
    /// The ticket's maximum session length has passed.
    SessionExpired = 4408,
    /// The channel already has a session and allows only one.
    ChannelInUse = 4409,
    /// The guest is not running (stopped, crashed, QEMU not reachable).
    GuestDown = 4410,
    /// Another session took over with `--force`.
    TakenOver = 4411,
    /// An administrator ended the session.
    EndedByAdmin = 4412,
    /// The guest migrated to another node. Between agent and gateway it
    /// asks the gateway to follow (serial consoles and channels); a client
    /// gets it when following was not possible (VNC, or the guest did not
    /// show up elsewhere in time): a new session reaches the guest there.
    GuestMoved = 4413,
    /// Too many sessions or too many failed attempts.
    TooMany = 4429,
    /// Something inside the gateway or agent failed.
    Internal = 4500,
    /// The agent hosting the guest cannot be reached, or its connection died.
    AgentUnreachable = 4502,
    /// The agent could not talk to the guest's endpoint (QEMU socket error).
    BackendError = 4503,
}

impl CloseCode {
    /// Every code, for round-trip checks and metrics labels.
    pub const ALL: [CloseCode; 17] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::TicketRefused,
        CloseCode::TicketScope,
        CloseCode::UnknownGuest,
        CloseCode::UnknownChannel,
        CloseCode::SessionExpired,
        CloseCode::ChannelInUse,
        CloseCode::GuestDown,
        CloseCode::TakenOver,
        CloseCode::EndedByAdmin,
        CloseCode::GuestMoved,
        CloseCode::TooMany,
        CloseCode::Internal,
        CloseCode::AgentUnreachable,
        CloseCode::BackendError,
    ];

    /// The code from its number; unknown numbers are an internal error
    /// rather than a parse failure, so a newer agent never breaks a session.
    pub fn from_u16(v: u16) -> CloseCode {
        Self::ALL
            .into_iter()
            .find(|c| *c as u16 == v)
            .unwrap_or(CloseCode::Internal)
    }

    /// A stable short name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::TicketRefused => "ticket_refused",
            CloseCode::TicketScope => "ticket_scope",
            CloseCode::UnknownGuest => "unknown_guest",
            CloseCode::UnknownChannel => "unknown_channel",
            CloseCode::SessionExpired => "session_expired",
            CloseCode::ChannelInUse => "channel_in_use",
            CloseCode::GuestDown => "guest_down",
            CloseCode::TakenOver => "taken_over",
            CloseCode::EndedByAdmin => "ended_by_admin",
            CloseCode::GuestMoved => "guest_moved",
            CloseCode::TooMany => "too_many",
            CloseCode::Internal => "internal",
            CloseCode::AgentUnreachable => "agent_unreachable",
            CloseCode::BackendError => "backend_error",
        }
    }
}

/// A close code with the sentence shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: String,
}

impl Close {
    /// WebSocket close reasons are limited to 123 bytes.
    pub const MAX_REASON: usize = 123;

    /// A close with `reason` cut to [`Close::MAX_REASON`] bytes on a char
    /// boundary, so it always fits a WebSocket close frame.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Close {
        let mut reason = reason.into();
        if reason.len() > Self::MAX_REASON {
            let mut end = Self::MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Close { code, reason }
    }

    pub fn normal() -> Close {
        Close::new(CloseCode::Normal, "session ended")
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_is_internal() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_u16(c as u16), c);
        }
        assert_eq!(CloseCode::from_u16(4999), CloseCode::Internal);
    }

    #[test]
    fn reason_is_cut_on_a_char_boundary() {
        let c = Close::new(CloseCode::Internal, "é".repeat(100));
        assert!(c.reason.len() <= Close::MAX_REASON);
        assert!(c.reason.chars().all(|ch| ch == 'é'));
    }
}
