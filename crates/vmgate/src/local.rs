//! Local sockets of the client commands (`vmgate vnc`, `vmgate channel`):
//! where a local program reaches a guest through this process, so they are
//! created private to the user who ran it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

/// Binds a unix socket created 0600. A socket file nobody listens on (left
/// by a killed run) is replaced; anything else there is an error.
///
/// The umask is narrowed around `bind(2)` rather than the mode changed after
/// it, which would leave a moment when any local user could connect. (The
/// client commands create no other file while they bind, so the
/// process-wide umask is safe to change.)
pub fn bind_unix(path: &Path) -> Result<UnixListener> {
    use nix::sys::stat::{umask, Mode};
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{}: another program listens there", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    bound.with_context(|| format!("cannot listen on {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_created_0600_whatever_the_umask() {
        use nix::sys::stat::{umask, Mode};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ch.sock");
        // The most permissive umask: a socket made 0777 and narrowed
        // afterwards would be open to everyone for a moment.
        let before = umask(Mode::empty());
        let bound = bind_unix(&path);
        let restored = umask(before);
        let _listener = bound.unwrap();
        assert_eq!(restored, Mode::empty(), "the umask is restored after bind");
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
