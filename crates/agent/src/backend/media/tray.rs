//! Putting a medium into a guest's drive and taking it out, over QMP (or
//! through whatever else manages the drive: [`Changer`]).
//!
//! Insert: `blockdev-add` (a read-only `raw` node over QEMU's `nbd`
//! driver, on the agent's unix socket), `blockdev-open-tray` (forced: a
//! guest may have locked the door), `blockdev-insert-medium`,
//! `blockdev-close-tray`. Eject: `blockdev-open-tray` (forced),
//! `blockdev-remove-medium`, `blockdev-del`, and the tray closed again on
//! the empty drive. Each step has a deadline; a failed insert undoes what
//! it did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::qmp::{Qmp, QmpError};

/// Deadline for one QMP connection's exchange (connect, commands).
pub const QMP_DEADLINE: Duration = Duration::from_secs(10);

/// How a drive's medium is changed.
#[derive(Debug, Clone)]
pub enum Tray {
    /// Through QEMU's QMP socket, naming the drive by its qdev id.
    Qmp { socket: PathBuf, id: String },
    /// Through the drive's manager (libvirt's live device update, which
    /// adds the node and works the tray itself).
    Managed(Arc<dyn Changer>),
}

/// Puts the NBD medium served on a socket into a drive, or empties it,
/// for a backend that manages the drive itself. Blocking: called on a
/// blocking thread, under [`QMP_DEADLINE`].
pub trait Changer: std::fmt::Debug + Send + Sync {
    fn change(&self, socket: Option<&Path>) -> Result<(), TrayError>;
}

/// Why the tray could not be worked.
#[derive(Debug, thiserror::Error)]
pub enum TrayError {
    /// QMP could not be reached: the guest is not running.
    #[error("QMP: {0}")]
    Unreachable(QmpError),
    /// QEMU refused a command.
    #[error("{0}")]
    Refused(QmpError),
    /// QEMU (or libvirt) did not answer in time.
    #[error("no answer within {QMP_DEADLINE:?}")]
    Timeout,
    /// libvirt refused the device update.
    #[error("libvirt: {0}")]
    Libvirt(String),
    /// The domain is gone (or libvirtd is).
    #[error("libvirt: {0}")]
    LibvirtUnreachable(String),
}

async fn connect(socket: &Path) -> Result<Qmp, TrayError> {
    Qmp::connect(socket).await.map_err(TrayError::Unreachable)
}

async fn run(q: &mut Qmp, command: &str, args: serde_json::Value) -> Result<(), TrayError> {
    q.execute(command, args)
        .await
        .map(drop)
        .map_err(TrayError::Refused)
}

async fn within<T>(
    f: impl std::future::Future<Output = Result<T, TrayError>>,
) -> Result<T, TrayError> {
    tokio::time::timeout(QMP_DEADLINE, f)
        .await
        .unwrap_or(Err(TrayError::Timeout))
}

impl Tray {
    /// Adds node `node` reading the NBD export on `socket` and puts it in
    /// the drive. QEMU connects to `socket` during the first command: the
    /// caller must be accepting on it already.
    pub async fn insert(&self, node: &str, socket: &Path) -> Result<(), TrayError> {
        let (qmp, id) = match self {
            Tray::Qmp { socket: qmp, id } => (qmp, id),
            Tray::Managed(c) => return managed(c, Some(socket)).await,
        };
        within(async {
            let mut q = connect(qmp).await?;
            run(
                &mut q,
                "blockdev-add",
                json!({
                    "driver": "raw",
                    "node-name": node,
                    "read-only": true,
                    "file": {
                        "driver": "nbd",
                        "read-only": true,
                        "server": { "type": "unix", "path": socket },
                    },
                }),
            )
            .await?;
            let placed = async {
                run(
                    &mut q,
                    "blockdev-open-tray",
                    json!({ "id": id, "force": true }),
                )
                .await?;
                run(
                    &mut q,
                    "blockdev-insert-medium",
                    json!({ "id": id, "node-name": node }),
                )
                .await?;
                run(&mut q, "blockdev-close-tray", json!({ "id": id })).await
            }
            .await;
            if let Err(e) = placed {
                // Leave the drive as it was, and no node behind.
                let _ = run(&mut q, "blockdev-close-tray", json!({ "id": id })).await;
                let _ = run(&mut q, "blockdev-del", json!({ "node-name": node })).await;
                return Err(e);
            }
            Ok(())
        })
        .await
    }

    /// Takes node `node` out of the drive and deletes it; the drive is left
    /// empty with its tray closed. QEMU drains the node's requests first:
    /// the caller makes sure nothing waits on the network meanwhile.
    pub async fn eject(&self, node: &str) -> Result<(), TrayError> {
        let (qmp, id) = match self {
            Tray::Qmp { socket: qmp, id } => (qmp, id),
            Tray::Managed(c) => return managed(c, None).await,
        };
        within(async {
            let mut q = connect(qmp).await?;
            run(
                &mut q,
                "blockdev-open-tray",
                json!({ "id": id, "force": true }),
            )
            .await?;
            let removed = run(&mut q, "blockdev-remove-medium", json!({ "id": id })).await;
            let deleted = run(&mut q, "blockdev-del", json!({ "node-name": node })).await;
            run(&mut q, "blockdev-close-tray", json!({ "id": id })).await?;
            removed.and(deleted)
        })
        .await
    }
}

/// A managed drive's change, on a blocking thread, under the deadline.
async fn managed(c: &Arc<dyn Changer>, socket: Option<&Path>) -> Result<(), TrayError> {
    let (c, socket) = (c.clone(), socket.map(Path::to_path_buf));
    let work = tokio::task::spawn_blocking(move || c.change(socket.as_deref()));
    match tokio::time::timeout(QMP_DEADLINE, work).await {
        Err(_) => Err(TrayError::Timeout),
        Ok(Err(e)) => Err(TrayError::Libvirt(e.to_string())),
        Ok(Ok(r)) => r,
    }
}
