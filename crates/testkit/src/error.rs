//! The one error type of the kit: every way building or booting the test guest can fail.
//!
//! Messages are written for a person at a terminal who has just seen a test fail: where a
//! host package is missing, they name the `apt-get` command that fixes it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// The command line that installs every host package the kit needs.
pub const INSTALL_HINT: &str = "apt-get install qemu-system-x86 busybox-static cpio gcc";

/// Everything that can go wrong while building or booting the test guest.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A service a test runs (`redis-server`, `haproxy`) could not be started or did not
    /// answer in time; the message says which and what to install.
    #[error("{0}")]
    Setup(String),

    /// A host program the kit runs is not installed.
    #[error(
        "`{tool}` was not found on this host; install it with `apt-get install {package}` \
         (the test guest needs: {INSTALL_HINT})"
    )]
    ToolMissing {
        /// The program that was looked for.
        tool: String,
        /// The Debian package that ships it.
        package: String,
    },

    /// `/bin/busybox` exists but is dynamically linked, so it cannot run inside the initramfs.
    #[error(
        "{path} is not statically linked (it is probably the `busybox` package); \
         install the static one with `apt-get install busybox-static`"
    )]
    BusyboxNotStatic {
        /// The binary that was checked.
        path: PathBuf,
    },

    /// apt does not know the package, which means its package lists were never fetched or are stale.
    #[error(
        "apt could not find or fetch `{package}`; the package lists are missing or stale, \
         run `apt-get update` and try again. apt said: {detail}"
    )]
    AptListsMissing {
        /// The package apt was asked about.
        package: String,
        /// The tail of apt's own message.
        detail: String,
    },

    /// A host command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, for the reader.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its standard error.
        stderr: String,
    },

    /// `apt-get download` succeeded but left no `.deb` file behind.
    #[error("`apt-get download {package}` reported success but no .deb appeared in {dir:?}")]
    DebMissing {
        /// The package that was downloaded.
        package: String,
        /// The directory it was downloaded into.
        dir: PathBuf,
    },

    /// The kernel package unpacked without a `boot/vmlinuz-*` file.
    #[error("the package `{package}` holds no boot/vmlinuz-* kernel")]
    KernelMissing {
        /// The kernel package that was unpacked.
        package: String,
    },

    /// A kernel module the guest needs is neither in the package nor built into the kernel.
    #[error("the kernel module `{module}` is neither in `{package}` nor built into its kernel")]
    ModuleMissing {
        /// The module name, without `.ko`.
        module: String,
        /// The kernel package that was searched.
        package: String,
    },

    /// A file or directory operation on the host failed.
    #[error("{context}: {source}")]
    Io {
        /// What the kit was doing, including the path involved.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A virtio-serial port name cannot be used in a socket file name or a QEMU option.
    #[error(
        "invalid channel name `{name}`: use 1 to 64 characters from A-Z a-z 0-9 . _ - \
         (it becomes part of a socket file name and a QEMU option)"
    )]
    InvalidChannelName {
        /// The rejected name.
        name: String,
    },

    /// The guest's name is empty or has characters QEMU options cannot carry.
    #[error("invalid guest name `{name}`: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    InvalidGuestName {
        /// The rejected name.
        name: String,
    },

    /// A socket path is longer than a unix socket address can hold (107 bytes on Linux).
    #[error(
        "socket path {path:?} is {len} bytes, longer than the 107 a unix socket allows; \
         use a shorter run directory"
    )]
    SocketPathTooLong {
        /// The path that does not fit.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },

    /// QEMU exited before it had created all of its sockets.
    #[error("QEMU exited early ({status}); the end of its log:\n{log_tail}")]
    QemuExited {
        /// How QEMU ended.
        status: ExitStatus,
        /// The last lines of `qemu.log`.
        log_tail: String,
    },

    /// QEMU kept running but did not create a socket in time.
    #[error("QEMU did not create {missing:?} within {waited:?}; the end of its log:\n{log_tail}")]
    BootTimeout {
        /// How long the kit waited.
        waited: Duration,
        /// The first socket that was still missing.
        missing: PathBuf,
        /// The last lines of `qemu.log`.
        log_tail: String,
    },

    /// The expected text did not arrive on a stream in time.
    #[error("timed out after {timeout:?} waiting for {needle:?}; last output: {tail:?}")]
    OutputTimeout {
        /// The text waited for.
        needle: String,
        /// How long the kit waited.
        timeout: Duration,
        /// The end of what did arrive.
        tail: String,
    },

    /// The stream was closed by the other side before the expected text arrived.
    #[error("the stream closed while waiting for {needle:?}; last output: {tail:?}")]
    OutputClosed {
        /// The text waited for.
        needle: String,
        /// The end of what did arrive.
        tail: String,
    },

    /// `/proc/PID/stat` did not have the layout the kernel documents.
    #[error("could not parse {path:?}")]
    ProcStat {
        /// The file that was read.
        path: PathBuf,
    },
}

impl KitError {
    /// Wraps an I/O error with what the kit was doing when it happened.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KitError {
        let context = context.into();
        move |source| KitError::Io { context, source }
    }
}
