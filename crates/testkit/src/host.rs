//! Host-side helpers: finding the Debian tools the kit shells out to, running them with
//! readable errors, and small file utilities (atomic writes, log tails).

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::KitError;

/// How much of a failing command's stderr (or of a log) goes into an error message.
const TAIL_BYTES: usize = 2000;

/// Directories searched besides `$PATH`: a test runner's `$PATH` often lacks the sbin ones.
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Finds an executable `tool`, or says which Debian `package` ships it.
pub(crate) fn find_tool(tool: &str, package: &str) -> Result<PathBuf, KitError> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| KitError::ToolMissing {
            tool: tool.to_owned(),
            package: package.to_owned(),
        })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A printable form of a command line for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit becomes
/// [`KitError::CommandFailed`] carrying the tail of stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, KitError> {
    let output = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(KitError::io(format!("cannot run `{}`", describe(cmd))))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(KitError::CommandFailed {
            command: describe(cmd),
            status: output.status,
            stderr: tail_text(&output.stderr),
        })
    }
}

/// The last [`TAIL_BYTES`] of `bytes` as trimmed text.
pub(crate) fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// The end of a log file, or a note saying why it could not be read.
pub(crate) fn tail_file(path: &Path) -> String {
    let read_tail = || -> std::io::Result<Vec<u8>> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES as u64)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(buf)
    };
    match read_tail() {
        Ok(buf) if buf.is_empty() => format!("({} is empty)", path.display()),
        Ok(buf) => tail_text(&buf),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// True when the ELF file at `path` has no program interpreter, i.e. is statically linked.
///
/// Reading the program headers ourselves avoids depending on `file(1)`, which is not
/// always installed. Only 64-bit little-endian ELF is accepted: the guest is x86-64.
pub(crate) fn is_static_elf(path: &Path) -> Result<bool, KitError> {
    const PT_INTERP: u32 = 3;
    let data = fs::read(path).map_err(KitError::io(format!("cannot read {}", path.display())))?;
    let u16_at = |off: usize| {
        data.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| {
        data.get(off..off + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // e_ident: magic, ELFCLASS64 (2), ELFDATA2LSB (1).
    if data.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return Ok(false);
    };
    for i in 0..usize::from(phnum) {
        match u32_at(phoff + i * usize::from(phentsize)) {
            Some(PT_INTERP) => return Ok(false),
            Some(_) => {}
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Writes `contents` to `dest` through a temporary file in the same directory and a rename,
/// so a crash never leaves a half-written `dest` behind.
pub(crate) fn write_atomic(dest: &Path, contents: &[u8]) -> Result<(), KitError> {
    let tmp = temp_sibling(dest);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(KitError::io(format!("cannot write {}", dest.display())))
}

/// Removes the file at `path`; one that is already gone is fine.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), KitError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(KitError::io(format!("cannot remove {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// A name beside `dest` that no other process picks at the same moment.
pub(crate) fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), unique()))
}

/// A number unique within this process, to keep temporary names of threads apart.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        let long = vec![b'a'; TAIL_BYTES + 10];
        assert_eq!(tail_text(&long).len(), TAIL_BYTES);
        assert_eq!(tail_text(b"  x \n"), "x");
    }

    #[test]
    fn missing_tool_names_the_package() {
        let err = find_tool("surely-no-such-tool-vmgate", "some-pkg").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("apt-get install some-pkg"), "{msg}");
        assert!(msg.contains("busybox-static"), "{msg}");
    }

    #[test]
    fn non_elf_is_not_static() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script");
        fs::write(&path, "#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&path).unwrap());
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
