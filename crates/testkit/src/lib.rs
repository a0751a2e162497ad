//! vmgate's test-guest kit: builds a tiny bootable Linux guest from Debian packages and
//! boots it under QEMU with every endpoint on a unix socket, for tests, benchmarks and the
//! demo.
//!
//! This crate owns the guest: its image (a Debian cloud kernel, its virtio, IDE CD-ROM and
//! ISO 9660 modules, and a busybox initramfs whose `/init` lives in `guest-init.sh`, plus a
//! static `tone` program from `tone.c`), the cache that keeps it, and the QEMU command line
//! that exposes QMP, the serial port, VNC (with QEMU's audio extension) and virtio-serial
//! channels, and gives the guest a PC speaker and an empty CD-ROM drive.
//!
//! ```no_run
//! use vmgate_testkit::{build_image, default_cache_dir, BootOptions, Guest};
//! # fn main() -> Result<(), vmgate_testkit::KitError> {
//! let image = build_image(&default_cache_dir())?;
//! let guest = Guest::boot(&image, &BootOptions::new("demo", "/tmp/vmgate-demo"))?;
//! let serial = guest.serial_ready(std::time::Duration::from_secs(30))?;
//! # drop(serial);
//! # Ok(())
//! # }
//! ```
//!
//! The guest, once booted, runs a root shell on the serial port and on the VGA console
//! (prompt [`PROMPT`]), echoes every byte on the [`ECHO_CHANNEL`] port, shows a static
//! screen, and stays near 0% host CPU while idle. Its shell has `tone HZ MS`, which plays a
//! square wave on the PC speaker (heard by VNC clients that negotiate QEMU audio), and
//! `/dev/sr0`, the empty drive [`CDROM_ID`] that virtual media fills (usable once
//! [`CDROM_READY`] exists in the guest, a second or so after the ready line).
//!
//! Host needs: `apt-get install qemu-system-x86 busybox-static cpio gcc`, and apt
//! package lists (`apt-get update`) for the first build.

#![forbid(unsafe_code)]

mod error;
mod guest;
mod host;
mod image;
mod services;
mod stream;

pub use error::{KitError, INSTALL_HINT};
pub use guest::{
    kernel_cmdline, process_cpu_time, BootOptions, Guest, AUDIODEV_ID, CDROM_ID, ECHO_CHANNEL,
    KERNEL_CMDLINE, PROMPT, QEMU_BINARY, READY_MARKER, SOCKET_DEADLINE,
};
pub use image::{
    build_image, default_cache_dir, GuestImage, CDROM_MODULES, CDROM_READY, GUEST_MODULES,
    IMAGE_VERSION, INIT_SCRIPT, KERNEL_METAPACKAGE, TONE_SOURCE,
};
pub use services::{free_port, HaProxy, Redis};
pub use stream::wait_for_output;
