//! Building the guest image: a Debian cloud kernel plus a busybox initramfs, made once and
//! kept in a cache directory.
//!
//! Nothing is installed on the host: the kernel package is only downloaded (`apt-get
//! download`) and unpacked (`dpkg-deb -x`) in a scratch directory inside the cache. Outputs
//! are moved into place by rename and the stamp is written last, so a crashed build leaves
//! either the previous complete image or none, never half of one.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::KitError;
use crate::host::{self, find_tool, run};

/// Bumped when the layout of the cache or of the initramfs changes; names the build directory,
/// so worktrees on different versions sharing one cache do not rebuild each other's image.
pub const IMAGE_VERSION: u32 = 2;

/// The guest's `/init`, compiled into the crate so the image always matches the code using it.
pub const INIT_SCRIPT: &str = include_str!("guest-init.sh");

/// The metapackage whose dependency names the current Debian cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Modules loaded at boot, in dependency order, so the guest gets virtio-serial ports.
pub const GUEST_MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
];

/// Modules loaded in the background once the guest is ready, in dependency order: the IDE
/// CD-ROM (`/dev/sr0` on i440fx's PIIX IDE; the cloud kernel has no AHCI) and ISO 9660, so
/// a medium inserted through virtual media can be mounted. In the background because
/// probing the IDE bus costs about a second under TCG, which boot time need not pay; the
/// guest creates `/run/cdrom.ready` (see [`CDROM_READY`]) when they are in.
pub const CDROM_MODULES: [&str; 7] = [
    "scsi_common",
    "scsi_mod",
    "libata",
    "ata_piix",
    "cdrom",
    "sr_mod",
    "isofs",
];

/// The source of the guest's `tone HZ MS` command, compiled with `cc -static` at build time.
pub const TONE_SOURCE: &str = include_str!("tone.c");

/// The files in the guest's `/lib/modules` that name the modules to load, one per line, in
/// order: [`GUEST_MODULES`] at boot, [`CDROM_MODULES`] after. The init script reads them, so
/// the lists above are the only ones.
const MODULE_LISTS: [(&str, &[&str]); 2] = [
    ("load-at-boot", &GUEST_MODULES),
    ("load-when-ready", &CDROM_MODULES),
];

/// The file the guest creates once its CD-ROM drive (`/dev/sr0`) is usable.
pub const CDROM_READY: &str = "/run/cdrom.ready";

/// Where the static busybox of the `busybox-static` package lives.
const BUSYBOX: &str = "/bin/busybox";

/// A built guest: the two files QEMU boots with `-kernel` and `-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The gzip-compressed newc cpio initramfs.
    pub initrd: PathBuf,
}

/// The cache directory used when the caller has no opinion: `$VMGATE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vmgate`, else `$HOME/.cache/vmgate` (else a directory under the system
/// temp dir, for environments without a home).
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name))
}

/// [`default_cache_dir`] with the environment passed in, so it can be tested without
/// changing the process environment.
fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |name| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("VMGATE_CACHE_DIR") {
        return dir;
    }
    // The XDG spec says to ignore a relative XDG_CACHE_HOME.
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return dir.join("vmgate");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("vmgate"),
        None => std::env::temp_dir().join("vmgate-cache"),
    }
}

/// Builds the guest image into `cache_dir/guest-v<N>/`, or returns the one already there.
///
/// Safe to call from many threads and processes at once: builders take turns on a lock
/// file, and later callers find the finished image. The first build downloads the kernel
/// package (about 27 MB) and takes a few seconds; later calls only read a stamp file.
pub fn build_image(cache_dir: &Path) -> Result<GuestImage, KitError> {
    let dir = cache_dir.join(format!("guest-v{IMAGE_VERSION}"));
    fs::create_dir_all(&dir).map_err(KitError::io(format!("cannot create {}", dir.display())))?;
    let _lock = lock(&cache_dir.join(format!("guest-v{IMAGE_VERSION}.lock")))?;

    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    let stamp = dir.join("stamp");
    let recipe = recipe();
    let cached = fs::read_to_string(&stamp).is_ok_and(|s| s.starts_with(&recipe));
    if cached && image.kernel.is_file() && image.initrd.is_file() {
        tracing::debug!(dir = %dir.display(), "guest image is cached");
        return Ok(image);
    }

    // Holding the lock, any scratch directory left over belongs to a builder that died.
    remove_stale_scratch(&dir);
    // The stamp goes first: from here until the new one is written the image is "not built",
    // so a crash between the two renames below cannot pair a new kernel with an old initrd.
    host::remove_if_exists(&stamp)?;

    let scratch = dir.join(format!("build-{}-{}", std::process::id(), host::unique()));
    tracing::info!(dir = %dir.display(), "building the vmgate test guest image");
    let result = build_into(&scratch, &image).and_then(|kernel_package| {
        let text = format!("{recipe}kernel-package: {kernel_package}\n");
        host::write_atomic(&stamp, text.as_bytes())
    });
    let _ = fs::remove_dir_all(&scratch);
    result.map(|()| image)
}

/// Describes everything baked into the image by this code; a different recipe means rebuild.
fn recipe() -> String {
    format!(
        "vmgate-testkit guest image v{IMAGE_VERSION}\ninit-script: {:016x}\ntone: {:016x}\n\
         modules: {} / {}\n",
        fnv1a(INIT_SCRIPT.as_bytes()),
        fnv1a(TONE_SOURCE.as_bytes()),
        GUEST_MODULES.join(" "),
        CDROM_MODULES.join(" ")
    )
}

/// FNV-1a: enough to notice an edited init script, with no dependency (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An exclusive `flock` on `path`, released when the returned value is dropped.
fn lock(path: &Path) -> Result<nix::fcntl::Flock<fs::File>, KitError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(KitError::io(format!(
            "cannot open lock file {}",
            path.display()
        )))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        KitError::io(format!("cannot lock {}", path.display()))(std::io::Error::from(errno))
    })
}

fn remove_stale_scratch(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("build-") {
            let _ = fs::remove_dir_all(entry.path());
        } else if name.starts_with('.') && name.contains(".tmp-") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The host programs a build needs, found before anything is downloaded so a missing one
/// is reported at once.
struct BuildTools {
    apt_get: PathBuf,
    apt_cache: PathBuf,
    dpkg_deb: PathBuf,
    cpio: PathBuf,
    gzip: PathBuf,
    cc: PathBuf,
    busybox: PathBuf,
}

impl BuildTools {
    fn find() -> Result<Self, KitError> {
        let busybox = PathBuf::from(BUSYBOX);
        if !busybox.is_file() {
            return Err(KitError::ToolMissing {
                tool: BUSYBOX.to_owned(),
                package: "busybox-static".to_owned(),
            });
        }
        if !host::is_static_elf(&busybox)? {
            return Err(KitError::BusyboxNotStatic { path: busybox });
        }
        Ok(Self {
            apt_get: find_tool("apt-get", "apt")?,
            apt_cache: find_tool("apt-cache", "apt")?,
            dpkg_deb: find_tool("dpkg-deb", "dpkg")?,
            cpio: find_tool("cpio", "cpio")?,
            gzip: find_tool("gzip", "gzip")?,
            cc: find_tool("cc", "gcc")?,
            busybox,
        })
    }
}

/// Does the whole build in `scratch` and moves the results to `image`; returns the name of
/// the kernel package used.
fn build_into(scratch: &Path, image: &GuestImage) -> Result<String, KitError> {
    let tools = BuildTools::find()?;
    fs::create_dir_all(scratch)
        .map_err(KitError::io(format!("cannot create {}", scratch.display())))?;

    let package = kernel_package(&tools)?;
    let deb = download(&tools, &package, scratch)?;
    let unpacked = scratch.join("pkg");
    run(Command::new(&tools.dpkg_deb)
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked))?;
    let _ = fs::remove_file(&deb);

    let kernel = find_kernel(&unpacked, &package)?;
    let root = scratch.join("root");
    make_tree(&tools, &root)?;
    build_tone(&tools, scratch, &root.join("bin/tone"))?;
    install_modules(&unpacked, &package, &root.join("lib/modules"))?;

    let initrd = scratch.join("initrd.img");
    pack(&tools, &root, &initrd)?;
    fs::File::open(&initrd)
        .and_then(|f| f.sync_all())
        .map_err(KitError::io(format!("cannot sync {}", initrd.display())))?;

    // Both sources are inside the cache directory, so these renames are atomic.
    fs::rename(&kernel, &image.kernel).map_err(KitError::io(format!(
        "cannot move the kernel to {}",
        image.kernel.display()
    )))?;
    fs::rename(&initrd, &image.initrd).map_err(KitError::io(format!(
        "cannot move the initramfs to {}",
        image.initrd.display()
    )))?;
    tracing::info!(%package, kernel = %image.kernel.display(), "guest image built");
    Ok(package)
}

/// The concrete kernel package the metapackage depends on, e.g. `linux-image-6.1.0-NN-cloud-amd64`.
fn kernel_package(tools: &BuildTools) -> Result<String, KitError> {
    let mut cmd = Command::new(&tools.apt_cache);
    cmd.arg("depends").arg(KERNEL_METAPACKAGE);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(KitError::io(format!(
            "cannot run `{}`",
            host::describe(&cmd)
        )))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let found = parse_depends(&stdout);
    match found {
        Some(package) if output.status.success() => Ok(package),
        // No output or "No packages found": apt has no lists that mention the metapackage.
        _ => Err(KitError::AptListsMissing {
            package: KERNEL_METAPACKAGE.to_owned(),
            detail: host::tail_text(&[output.stderr.as_slice(), output.stdout.as_slice()].concat()),
        }),
    }
}

/// Picks the first real `linux-image-*` package from `apt-cache depends` output.
fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(str::trim)
        // `<name>` marks a virtual package, which cannot be downloaded.
        .find(|name| name.starts_with("linux-image-") && !name.starts_with('<'))
        .map(str::to_owned)
}

/// Downloads the `.deb` of `package` into `dir` and returns its path.
fn download(tools: &BuildTools, package: &str, dir: &Path) -> Result<PathBuf, KitError> {
    let mut cmd = Command::new(&tools.apt_get);
    cmd.arg("download").arg(package).current_dir(dir);
    tracing::info!(%package, "downloading the guest kernel");
    match run(&mut cmd) {
        Ok(_) => {}
        Err(KitError::CommandFailed { stderr, .. }) if lists_are_stale(&stderr) => {
            return Err(KitError::AptListsMissing {
                package: package.to_owned(),
                detail: stderr,
            })
        }
        Err(e) => return Err(e),
    }
    let entries =
        fs::read_dir(dir).map_err(KitError::io(format!("cannot list {}", dir.display())))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| KitError::DebMissing {
            package: package.to_owned(),
            dir: dir.to_owned(),
        })
}

/// apt's ways of saying its package lists are absent or out of date.
fn lists_are_stale(stderr: &str) -> bool {
    [
        "Unable to locate package",
        "has no installation candidate",
        "Can't select candidate version",
        "No packages found",
        "404",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

fn find_kernel(unpacked: &Path, package: &str) -> Result<PathBuf, KitError> {
    let boot = unpacked.join("boot");
    fs::read_dir(&boot)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| KitError::KernelMissing {
            package: package.to_owned(),
        })
}

/// Lays out the initramfs: busybox, one symlink per applet, `/init`, empty mount points.
fn make_tree(tools: &BuildTools, root: &Path) -> Result<(), KitError> {
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "mnt",
        "etc",
        "lib/modules",
    ] {
        let path = root.join(dir);
        fs::create_dir_all(&path)
            .map_err(KitError::io(format!("cannot create {}", path.display())))?;
    }
    let busybox = root.join("bin/busybox");
    fs::copy(&tools.busybox, &busybox).map_err(KitError::io(format!(
        "cannot copy {} into the initramfs",
        tools.busybox.display()
    )))?;
    set_mode(&busybox, 0o755)?;

    // Symlinks made here rather than by `busybox --install` at boot: boot stays faster and
    // the tree is the same on every boot.
    let list = run(Command::new(&tools.busybox).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = root.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)
                .map_err(KitError::io(format!("cannot create {}", parent.display())))?;
        }
        symlink("/bin/busybox", &link).map_err(KitError::io(format!(
            "cannot create symlink {}",
            link.display()
        )))?;
    }

    let init = root.join("init");
    fs::write(&init, INIT_SCRIPT)
        .map_err(KitError::io(format!("cannot write {}", init.display())))?;
    set_mode(&init, 0o755)?;
    fs::write(root.join("etc/hostname"), "testguest\n")
        .map_err(KitError::io("cannot write etc/hostname"))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), KitError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(KitError::io(format!("cannot chmod {}", path.display())))
}

/// Compiles [`TONE_SOURCE`] into the static program `out`: no C library (it makes its few
/// system calls itself), so it is about 9 kB where a static glibc would add 700 kB to every
/// boot.
fn build_tone(tools: &BuildTools, scratch: &Path, out: &Path) -> Result<(), KitError> {
    let src = scratch.join("tone.c");
    fs::write(&src, TONE_SOURCE)
        .map_err(KitError::io(format!("cannot write {}", src.display())))?;
    run(Command::new(&tools.cc)
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-Os",
            "-s",
            "-Wall",
            "-o",
        ])
        .arg(out)
        .arg(&src))?;
    set_mode(out, 0o755)
}

/// Copies the modules of [`MODULE_LISTS`] from the unpacked package into `dest` as plain
/// `NAME.ko` files, and writes each list (built-in modules left out) beside them.
fn install_modules(unpacked: &Path, package: &str, dest: &Path) -> Result<(), KitError> {
    // Debian bookworm ships /lib/modules; later releases merged it into /usr/lib/modules.
    let release_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .filter_map(|d| fs::read_dir(unpacked.join(d)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .ok_or_else(|| KitError::ModuleMissing {
            module: GUEST_MODULES[0].to_owned(),
            package: package.to_owned(),
        })?;
    let mut files = Vec::new();
    collect_files(&release_dir.join("kernel"), &mut files)?;
    let builtin = fs::read_to_string(release_dir.join("modules.builtin")).unwrap_or_default();

    for (list, modules) in MODULE_LISTS {
        let mut order = String::new();
        for &module in modules {
            let found = files.iter().find_map(|path| {
                let name = path.file_name()?.to_str()?;
                let compression = name.strip_prefix(module)?.strip_prefix(".ko")?;
                matches!(compression, "" | ".xz" | ".zst" | ".gz").then_some((path, compression))
            });
            match found {
                Some((path, compression)) => {
                    let out = dest.join(format!("{module}.ko"));
                    decompress_module(path, compression, &out)?;
                    order.push_str(module);
                    order.push('\n');
                }
                None if is_builtin(&builtin, module) => {
                    tracing::debug!(module, "module is built into the kernel");
                }
                None => {
                    return Err(KitError::ModuleMissing {
                        module: module.to_owned(),
                        package: package.to_owned(),
                    })
                }
            }
        }
        let list = dest.join(list);
        fs::write(&list, order)
            .map_err(KitError::io(format!("cannot write {}", list.display())))?;
    }
    Ok(())
}

/// `modules.builtin` lists built-in modules as paths like `kernel/drivers/virtio/virtio.ko`.
fn is_builtin(modules_builtin: &str, module: &str) -> bool {
    let file = format!("/{module}.ko");
    modules_builtin
        .lines()
        .any(|line| line.trim().ends_with(&file))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), KitError> {
    let entries =
        fs::read_dir(dir).map_err(KitError::io(format!("cannot list {}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Writes the module to `out` uncompressed: busybox `insmod` in the guest loads only plain
/// `.ko` files, so compressed ones are unpacked here on the host.
fn decompress_module(src: &Path, compression: &str, out: &Path) -> Result<(), KitError> {
    let (tool, package) = match compression {
        "" => {
            return fs::copy(src, out)
                .map(drop)
                .map_err(KitError::io(format!("cannot copy {}", src.display())))
        }
        ".xz" => ("xz", "xz-utils"),
        ".zst" => ("zstd", "zstd"),
        _ => ("gzip", "gzip"),
    };
    let tool = find_tool(tool, package)?;
    let output = run(Command::new(tool).arg("-dc").arg(src))?;
    fs::write(out, output.stdout).map_err(KitError::io(format!("cannot write {}", out.display())))
}

/// Packs `root` as a gzip-compressed newc cpio archive at `out` (`cpio -o -H newc | gzip`).
fn pack(tools: &BuildTools, root: &Path, out: &Path) -> Result<(), KitError> {
    let mut entries = Vec::new();
    list_tree(root, Path::new(""), &mut entries)?;
    // Sorted names give the same archive for the same tree, whatever readdir's order.
    entries.sort();
    let mut list = Vec::new();
    for entry in &entries {
        list.extend_from_slice(entry.as_os_str().as_encoded_bytes());
        list.push(b'\n');
    }

    let out_file =
        fs::File::create(out).map_err(KitError::io(format!("cannot create {}", out.display())))?;
    let mut cpio_cmd = Command::new(&tools.cpio);
    // Owner 0:0 so the guest sees root's files even when the build ran as another user.
    cpio_cmd
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(root);
    let mut cpio = cpio_cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(KitError::io("cannot run cpio"))?;
    let cpio_out = cpio
        .stdout
        .take()
        .map(Stdio::from)
        .unwrap_or_else(Stdio::null);
    let mut gzip_cmd = Command::new(&tools.gzip);
    gzip_cmd.arg("-9n");
    let gzip = gzip_cmd
        .stdin(cpio_out)
        .stdout(out_file)
        .stderr(Stdio::piped())
        .spawn();
    let gzip = match gzip {
        Ok(child) => child,
        Err(e) => {
            let _ = cpio.kill();
            let _ = cpio.wait();
            return Err(KitError::io("cannot run gzip")(e));
        }
    };
    // The list is a few kilobytes, and gzip drains cpio's output meanwhile, so this cannot
    // deadlock; dropping stdin afterwards tells cpio the list has ended.
    if let Some(mut stdin) = cpio.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(&list)
            .map_err(KitError::io("cannot send the file list to cpio"))?;
    }
    let cpio_result = cpio
        .wait_with_output()
        .map_err(KitError::io("cpio failed"))?;
    let gzip_result = gzip
        .wait_with_output()
        .map_err(KitError::io("gzip failed"))?;
    for (cmd, result) in [(&cpio_cmd, cpio_result), (&gzip_cmd, gzip_result)] {
        if !result.status.success() {
            return Err(KitError::CommandFailed {
                command: host::describe(cmd),
                status: result.status,
                stderr: host::tail_text(&result.stderr),
            });
        }
    }
    Ok(())
}

/// Every path under `root`, relative to it, directories before their contents.
fn list_tree(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), KitError> {
    let dir = root.join(rel);
    let entries =
        fs::read_dir(&dir).map_err(KitError::io(format!("cannot list {}", dir.display())))?;
    for entry in entries.flatten() {
        let rel_path = rel.join(entry.file_name());
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        out.push(rel_path.clone());
        if is_dir {
            list_tree(root, &rel_path, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_dependency() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("  Depends: <linux-image-x>\n"), None);
        assert_eq!(parse_depends(""), None);
    }

    #[test]
    fn recipe_follows_the_init_script() {
        assert!(recipe().contains(&format!("{:016x}", fnv1a(INIT_SCRIPT.as_bytes()))));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }

    #[test]
    fn builtin_modules_are_recognised() {
        let builtin = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/char/virtio_console.ko\n";
        assert!(is_builtin(builtin, "virtio"));
        assert!(!is_builtin(builtin, "virtio_pci"));
    }

    #[test]
    fn stale_list_messages_are_recognised() {
        assert!(lists_are_stale("E: Unable to locate package linux-image-x"));
        assert!(!lists_are_stale("E: disk full"));
    }

    #[test]
    fn cache_dir_follows_the_environment() {
        fn env<'a>(
            pairs: &'a [(&'a str, &'a str)],
        ) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
            move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        }
        let all = [
            ("VMGATE_CACHE_DIR", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir_from(env(&all)), PathBuf::from("/c"));
        assert_eq!(cache_dir_from(env(&all[1..])), PathBuf::from("/x/vmgate"));
        assert_eq!(
            cache_dir_from(env(&all[2..])),
            PathBuf::from("/h/.cache/vmgate")
        );
        let relative_xdg = [("XDG_CACHE_HOME", "rel"), ("HOME", "/h")];
        assert_eq!(
            cache_dir_from(env(&relative_xdg)),
            PathBuf::from("/h/.cache/vmgate")
        );
        let empty = [("VMGATE_CACHE_DIR", ""), ("HOME", "/h")];
        assert_eq!(
            cache_dir_from(env(&empty)),
            PathBuf::from("/h/.cache/vmgate")
        );
    }
}
