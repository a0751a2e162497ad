//! A small QMP (QEMU Machine Protocol) client: connect, negotiate
//! capabilities, run commands, and hand QEMU a file descriptor (`getfd`).
//!
//! The agent opens one QMP connection per use and closes it after: a QMP
//! unix socket serves one client at a time, and holding it would lock out
//! the node's other tools (and the tests' `screendump`).
//!
//! File descriptors travel as SCM_RIGHTS ancillary data on the same
//! `sendmsg(2)` as the command that names them, which is what QEMU expects
//! for `getfd`. This needs no `unsafe`: nix's `sendmsg` with
//! `ControlMessage::ScmRights` is a safe wrapper over a borrowed raw fd. (The
//! crate denies `unsafe` everywhere but `backend::libvirt::ffi`.)

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// The longest QMP message accepted from QEMU (a `query-*` answer for a
/// big machine is a few kB; this bounds the buffer against a broken peer).
const MAX_MESSAGE: usize = 1 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting, reading or writing the socket.
    #[error("QMP socket {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// QEMU closed the connection.
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// QEMU sent something that is not QMP.
    #[error("not QMP: {0}")]
    Protocol(String),
    /// The command ran and QEMU refused it.
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> QmpError {
    move |source| QmpError::Io { what, source }
}

/// A negotiated QMP connection.
pub struct Qmp {
    stream: UnixStream,
    /// Bytes read and not yet split into messages; at most [`MAX_MESSAGE`].
    buf: Vec<u8>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).await.map_err(io("connect"))?;
        let mut qmp = Qmp {
            stream,
            buf: Vec::new(),
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected a greeting, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let line = request(command, arguments);
        self.stream
            .write_all(line.as_bytes())
            .await
            .map_err(io("write"))?;
        self.answer(command).await
    }

    /// Gives QEMU `fd` under `name` (QMP `getfd`), for a later command such
    /// as `add_client` to use. QEMU keeps its own copy: the caller may close
    /// `fd` once this returns.
    pub async fn getfd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let line = request("getfd", json!({ "fdname": name }));
        let bytes = line.as_bytes();
        // The fd rides on the first sendmsg that sends any of the command.
        let sent = loop {
            self.stream.writable().await.map_err(io("write"))?;
            let fds = [fd.as_raw_fd()];
            let res = self.stream.try_io(Interest::WRITABLE, || {
                sendmsg::<()>(
                    self.stream.as_raw_fd(),
                    &[IoSlice::new(bytes)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match res {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    return Err(QmpError::Io {
                        what: "sendmsg",
                        source: e,
                    })
                }
            }
        };
        self.stream
            .write_all(&bytes[sent..])
            .await
            .map_err(io("write"))?;
        self.answer("getfd").await.map(drop)
    }

    /// Reads until the answer to `command`, skipping events.
    async fn answer(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let msg = self.read_message().await?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.into(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            if msg.get("event").is_none() {
                return Err(QmpError::Protocol(format!("unexpected message {msg}")));
            }
        }
    }

    /// One JSON message (QEMU ends each with a newline).
    async fn read_message(&mut self) -> Result<Value, QmpError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                return serde_json::from_str(text.trim())
                    .map_err(|e| QmpError::Protocol(format!("{e}: {}", text.trim())));
            }
            if self.buf.len() >= MAX_MESSAGE {
                return Err(QmpError::Protocol(format!(
                    "message longer than {MAX_MESSAGE} bytes"
                )));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.map_err(io("read"))?;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn request(command: &str, arguments: Value) -> String {
    let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream as StdUnix;

    /// A fake QEMU on the other end of a socketpair: checks what the
    /// client sends and answers as QEMU would, receiving the fd for getfd.
    #[tokio::test]
    async fn negotiates_runs_commands_and_passes_an_fd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (mine, theirs) = StdUnix::pair().unwrap();
        let theirs_ino = nix::sys::stat::fstat(theirs.as_raw_fd()).unwrap().st_ino;
        let server = std::thread::spawn(move || {
            use nix::sys::socket::{recvmsg, ControlMessageOwned};
            use std::io::{BufRead, BufReader, IoSliceMut, Write};
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            s.write_all(b"{\"return\": {}}\r\n").unwrap();
            // getfd: the fd comes with the command's bytes.
            let mut buf = [0u8; 256];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg =
                recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
            let fds: Vec<_> = msg
                .cmsgs()
                .unwrap()
                .filter_map(|c| match c {
                    ControlMessageOwned::ScmRights(f) => Some(f),
                    _ => None,
                })
                .flatten()
                .collect();
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(
                text.contains("\"getfd\"") && text.contains("vnc-7"),
                "{text}"
            );
            assert_eq!(fds.len(), 1, "one fd received");
            // The very socket the client passed, not just any descriptor.
            let ino = nix::sys::stat::fstat(fds[0]).unwrap().st_ino;
            assert_eq!(ino, theirs_ino);
            s.write_all(b"{\"event\": \"X\"}\r\n{\"return\": {}}\r\n")
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"stop\""), "{line}");
            s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\r\n")
                .unwrap();
        });
        let mut qmp = Qmp::connect(&path).await.unwrap();
        qmp.getfd("vnc-7", std::os::fd::AsFd::as_fd(&theirs))
            .await
            .unwrap();
        drop(theirs);
        let err = qmp.execute("stop", json!({})).await.unwrap_err();
        assert!(err.to_string().contains("GenericError: nope"), "{err}");
        server.join().unwrap();
        drop(mine);
    }
}
