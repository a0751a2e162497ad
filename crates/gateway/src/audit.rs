//! The audit log: one JSON object per line, one line when a session starts
//! and one when it ends.
//!
//! A line names the session, the ticket by its id (never the ticket's text:
//! a ticket is a bearer credential until it expires), the guest, channel,
//! mode, peer address, start and end times, bytes each way and the close
//! reason. Keys and tickets never reach this module.
//!
//! Each line is written with one `write(2)` on a file opened with
//! `O_APPEND`, so lines from concurrent sessions never interleave and an
//! external rotator can rename the file (the gateway reopens it on
//! [`Audit::reopen`], e.g. on SIGHUP).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// Who a session was granted to.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    /// The gateway's session id (also in the agent's logs).
    pub session: u64,
    /// The ticket's id, or `admin:<who>` for an administrator's console.
    pub ticket: String,
    pub guest: String,
    pub channel: String,
    /// `interactive` or `read-only`.
    pub mode: &'static str,
    pub peer: SocketAddr,
}

#[derive(Serialize)]
struct Line<'a> {
    event: &'static str,
    #[serde(flatten)]
    record: &'a SessionRecord,
    start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_to_guest: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_from_guest: Option<u64>,
    /// A media session's bytes read by the guest (as its agent counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_read: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_reason: Option<&'a str>,
}

/// How a session ended, for its end line.
pub struct SessionEnd<'a> {
    pub end: SystemTime,
    pub bytes_to_guest: u64,
    pub bytes_from_guest: u64,
    /// A media session's bytes read by the guest.
    pub bytes_read: Option<u64>,
    pub close: &'a vmgate_wire::Close,
}

/// The audit log file.
pub struct Audit {
    path: PathBuf,
    file: Mutex<File>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

impl Audit {
    /// Opens (creates) the log for append.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        Ok(Audit {
            path: path.into(),
            file: Mutex::new(open(path)?),
        })
    }

    /// Reopens the file at its path, after a log rotator moved it away.
    pub fn reopen(&self) -> std::io::Result<()> {
        let f = open(&self.path)?;
        *self.file.lock().expect("audit lock") = f;
        Ok(())
    }

    /// The session opened at `start`.
    pub fn start(&self, record: &SessionRecord, start: SystemTime) {
        self.write(&Line {
            event: "session_start",
            record,
            start: rfc3339(start),
            end: None,
            bytes_to_guest: None,
            bytes_from_guest: None,
            bytes_read: None,
            close_code: None,
            close_reason: None,
        });
    }

    /// The session that started at `start` ended.
    pub fn end(&self, record: &SessionRecord, start: SystemTime, end: &SessionEnd<'_>) {
        self.write(&Line {
            event: "session_end",
            record,
            start: rfc3339(start),
            end: Some(rfc3339(end.end)),
            bytes_to_guest: Some(end.bytes_to_guest),
            bytes_from_guest: Some(end.bytes_from_guest),
            bytes_read: end.bytes_read,
            close_code: Some(end.close.code as u16),
            close_reason: Some(&end.close.reason),
        });
    }

    fn write(&self, line: &Line<'_>) {
        let mut text = serde_json::to_vec(line).expect("audit lines serialise");
        text.push(b'\n');
        // A full disk must not take consoles down, but it must be loud.
        if let Err(e) = self.file.lock().expect("audit lock").write_all(&text) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmgate_wire::{Close, CloseCode};

    #[test]
    fn writes_a_start_and_an_end_line_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        let rec = SessionRecord {
            session: 7,
            ticket: "0123".into(),
            guest: "web1".into(),
            channel: "serial0".into(),
            mode: "interactive",
            peer: "192.0.2.1:5555".parse().unwrap(),
        };
        let t0 = SystemTime::UNIX_EPOCH;
        audit.start(&rec, t0);
        let close = Close::new(CloseCode::EndedByAdmin, "ended by administrator");
        audit.end(
            &rec,
            t0,
            &SessionEnd {
                end: t0,
                bytes_to_guest: 3,
                bytes_from_guest: 4,
                bytes_read: None,
                close: &close,
            },
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "session_start");
        assert_eq!(lines[0]["peer"], "192.0.2.1:5555");
        assert!(lines[0].get("end").is_none());
        assert_eq!(lines[1]["event"], "session_end");
        assert_eq!(lines[1]["bytes_from_guest"], 4);
        assert_eq!(lines[1]["close_code"], 4412);
        assert_eq!(lines[1]["start"], "1970-01-01T00:00:00.000Z");
    }
}
