//! The unix socket QEMU's NBD client connects to: one per medium, in a
//! directory of its own that only the agent's user can enter (0700), the
//! socket itself 0600 (with `media_group`: 0750 and 0660, that group's). It takes one connection: once QEMU is connected the
//! socket and its directory are removed, so no other process can connect
//! later and QEMU's reconnect attempts fail at once. The agent answers
//! QEMU's handshake here, from what the user's server said, so QEMU never
//! negotiates over the network.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use vmgate_nbd::{Event, Export, Server};

/// How long QEMU has to connect and finish its handshake.
const QEMU_DEADLINE: Duration = Duration::from_secs(10);

/// Where and for whom media sockets are made.
#[derive(Debug, Clone)]
pub struct MediaDir {
    pub base: PathBuf,
    /// The group that may reach the sockets besides the agent's user.
    pub group: Option<nix::unistd::Gid>,
}

impl MediaDir {
    /// From the configuration's `media_dir` and `media_group`; an unknown
    /// group is an error, said at start.
    pub fn from_config(cfg: &crate::config::AgentConfig) -> Result<MediaDir, String> {
        let group = match &cfg.media_group {
            None => None,
            Some(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Some(g.gid),
                Ok(None) => return Err(format!("media_group {name:?}: no such group")),
                Err(e) => return Err(format!("media_group {name:?}: {e}")),
            },
        };
        Ok(MediaDir {
            base: cfg.media_dir.clone().unwrap_or_else(std::env::temp_dir),
            group,
        })
    }

    /// The agent's user only, under `base`.
    pub fn private(base: PathBuf) -> MediaDir {
        MediaDir { base, group: None }
    }
}

/// A medium's socket, listening.
pub struct Endpoint {
    dir: PathBuf,
    path: PathBuf,
    listener: Option<UnixListener>,
}

/// Why QEMU did not get connected.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot create the medium's socket in {dir}: {source}")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("QEMU did not connect to the medium's socket within {QEMU_DEADLINE:?}")]
    NoConnection,
    #[error("QEMU's NBD handshake failed: {0}")]
    Handshake(String),
}

impl Endpoint {
    /// A fresh directory `base/<node>` (0700) with `nbd.sock` (0600) in it;
    /// with a group, 0750 and 0660, that group's.
    pub fn create(media: &MediaDir, node: &str) -> Result<Endpoint, EndpointError> {
        let dir = media.base.join(node);
        let (dir_mode, socket_mode) = match media.group {
            None => (0o700, 0o600),
            Some(_) => (0o750, 0o660),
        };
        let failed = |source| EndpointError::Create {
            dir: dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(failed)?;
        if let Some(gid) = media.group {
            // Group and mode set while only the agent's user can enter.
            nix::unistd::chown(&dir, None, Some(gid))
                .map_err(|e| failed(std::io::Error::from(e)))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode))
                .map_err(failed)?;
        }
        // A directory that existed would have failed above; this one is
        // ours from here on, and Drop removes it.
        let mut ep = Endpoint {
            path: dir.join("nbd.sock"),
            dir: dir.clone(),
            listener: None,
        };
        let listener = UnixListener::bind(&ep.path).map_err(failed)?;
        if let Some(gid) = media.group {
            nix::unistd::chown(&ep.path, None, Some(gid))
                .map_err(|e| failed(std::io::Error::from(e)))?;
        }
        std::fs::set_permissions(&ep.path, std::fs::Permissions::from_mode(socket_mode))
            .map_err(failed)?;
        ep.listener = Some(listener);
        Ok(ep)
    }

    /// The socket's path, for QEMU.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts QEMU's connection, removes the socket, and answers QEMU's
    /// handshake for an export of `size` bytes. Returns the connection in
    /// its transmission phase, and any bytes QEMU sent past the handshake.
    pub async fn accept_qemu(&mut self, size: u64) -> Result<(UnixStream, Vec<u8>), EndpointError> {
        let listener = self.listener.take().expect("accepted once");
        let exchange = async {
            let (mut stream, _) = listener
                .accept()
                .await
                .map_err(|e| EndpointError::Handshake(e.to_string()))?;
            drop(listener);
            self.remove();
            let mut server = Server::handshake_only(Export {
                name: String::new(),
                size,
            });
            let mut buf = vec![0u8; 8192];
            loop {
                let out = server.take_output();
                if !out.is_empty() {
                    stream
                        .write_all(&out)
                        .await
                        .map_err(|e| EndpointError::Handshake(e.to_string()))?;
                }
                let n = stream
                    .read(&mut buf)
                    .await
                    .map_err(|e| EndpointError::Handshake(e.to_string()))?;
                if n == 0 {
                    return Err(EndpointError::Handshake(
                        "QEMU closed the connection".into(),
                    ));
                }
                let used = server
                    .receive(&buf[..n])
                    .map_err(|e| EndpointError::Handshake(e.to_string()))?;
                if let Some(e) = server.next_event() {
                    match e {
                        Event::Transmission => {
                            let out = server.take_output();
                            stream
                                .write_all(&out)
                                .await
                                .map_err(|e| EndpointError::Handshake(e.to_string()))?;
                            return Ok((stream, buf[used..n].to_vec()));
                        }
                        Event::Disconnect => {
                            return Err(EndpointError::Handshake(
                                "QEMU aborted the handshake".into(),
                            ))
                        }
                        Event::Read { .. } => unreachable!("a handshake-only server"),
                    }
                }
            }
        };
        tokio::time::timeout(QEMU_DEADLINE, exchange)
            .await
            .unwrap_or(Err(EndpointError::NoConnection))
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vmgate_nbd::Handshake;

    #[tokio::test]
    async fn private_one_connection_then_gone() {
        let base = tempfile::tempdir().unwrap();
        let mut ep =
            Endpoint::create(&MediaDir::private(base.path().into()), "vmgate-m-1").unwrap();
        let dir_mode = std::fs::metadata(base.path().join("vmgate-m-1"))
            .unwrap()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(std::fs::metadata(ep.path()).unwrap().mode() & 0o777, 0o600);
        let path = ep.path().to_owned();
        let qemu = tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await.unwrap();
            let mut hs = Handshake::new("");
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                let done = hs.receive(&buf[..n]).unwrap();
                s.write_all(&hs.take_output()).await.unwrap();
                if let Some((n, _)) = done {
                    return (n.size, s);
                }
            }
        });
        let (_conn, leftover) = ep.accept_qemu(4096).await.unwrap();
        assert!(leftover.is_empty());
        let (size, _s) = qemu.await.unwrap();
        assert_eq!(size, 4096);
        // Nobody else can connect: the socket and its directory are gone.
        assert!(!base.path().join("vmgate-m-1").exists());
        // A second endpoint of that name cannot reuse a directory that
        // exists (someone else's).
        std::fs::create_dir(base.path().join("taken")).unwrap();
        assert!(Endpoint::create(&MediaDir::private(base.path().into()), "taken").is_err());
    }

    #[tokio::test]
    async fn with_a_media_group_the_group_may_connect() {
        let base = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getegid();
        let media = MediaDir {
            base: base.path().into(),
            group: Some(gid),
        };
        let ep = Endpoint::create(&media, "vmgate-m-2").unwrap();
        let dir = std::fs::metadata(base.path().join("vmgate-m-2")).unwrap();
        assert_eq!((dir.mode() & 0o777, dir.gid()), (0o750, gid.as_raw()));
        let sock = std::fs::metadata(ep.path()).unwrap();
        assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, gid.as_raw()));
    }
}
