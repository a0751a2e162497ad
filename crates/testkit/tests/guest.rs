//! End-to-end tests of the test guest: they build the real image and boot real QEMU, so they
//! need the host packages (`apt-get install qemu-system-x86 busybox-static cpio`) and apt
//! package lists for the first build.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vmgate_testkit::{
    build_image, default_cache_dir, wait_for_output, BootOptions, Guest, GuestImage, KitError,
    ECHO_CHANNEL, PROMPT, READY_MARKER,
};

/// TCG boots in a few seconds alone, but the tests boot several guests at once on 2 cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

fn image() -> GuestImage {
    build_image(&default_cache_dir()).expect("building the guest image")
}

fn boot(name: &str, run_dir: &Path) -> Guest {
    Guest::boot(&image(), &BootOptions::new(name, run_dir)).expect("booting the guest")
}

/// Waits for a shell prompt after running `command` and returns what came back.
fn run_command(serial: &mut UnixStream, command: &str, expect: &str) -> String {
    serial.write_all(format!("{command}\n").as_bytes()).unwrap();
    let out = wait_for_output(serial, expect.as_bytes(), REPLY_TIMEOUT)
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn image_is_built_once_then_cached() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let first = build_image(dir.path()).expect("first build");
    let first_took = started.elapsed();
    assert!(first.kernel.is_file() && first.initrd.is_file());

    let started = Instant::now();
    let second = build_image(dir.path()).expect("second build");
    let second_took = started.elapsed();
    assert_eq!(first, second);
    assert!(
        second_took < Duration::from_secs(1),
        "cached build took {second_took:?} (first took {first_took:?})"
    );

    // A stamp from other code (say, another init script) must trigger a rebuild.
    let stamp = first.kernel.parent().unwrap().join("stamp");
    std::fs::write(&stamp, "something else\n").unwrap();
    let third = build_image(dir.path()).expect("rebuild");
    assert_eq!(first, third);
    let text = std::fs::read_to_string(&stamp).unwrap();
    assert!(text.contains("kernel-package: linux-image-"), "{text}");
    // No scratch directories are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(first.kernel.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("build-") || n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn serial_shell_answers_and_ctrl_c_works() {
    let run = tempfile::tempdir().unwrap();
    let guest = boot("serial", run.path());
    let started = Instant::now();
    let mut serial = UnixStream::connect(&guest.serial_socket).unwrap();
    wait_for_output(&mut serial, READY_MARKER.as_bytes(), BOOT_TIMEOUT).expect("ready line");
    eprintln!("guest ready {:?} after boot() returned", started.elapsed());

    let out = run_command(&mut serial, "echo $((6*7))", "42\r\n");
    assert!(out.contains("42\r\n"), "{out:?}");
    let out = run_command(&mut serial, "hostname", "testguest");
    assert!(out.contains("testguest"), "{out:?}");

    // The shell owns ttyS0 as its controlling terminal, so ^C interrupts the foreground job.
    serial.write_all(b"sleep 600; echo slept\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    serial.write_all(b"\x03").unwrap();
    let out = run_command(&mut serial, "echo after-$((1+1))", "after-2\r\n");
    // The echoed command line holds "echo slept"; the command's own output would be a line.
    assert!(!out.contains("\nslept\r\n"), "{out:?}");
}

#[test]
fn serial_ready_works_after_the_ready_line_went_by() {
    let run = tempfile::tempdir().unwrap();
    let guest = boot("late", run.path());
    // Nobody listens while the guest boots, so the ready line is lost...
    std::thread::sleep(Duration::from_secs(8));
    // ...and serial_ready must still find the shell by asking for a prompt.
    let mut serial = guest.serial_ready(BOOT_TIMEOUT).expect("shell prompt");
    let out = run_command(&mut serial, "echo $((6*7))", "42\r\n");
    assert!(out.contains(PROMPT) || out.contains("42"), "{out:?}");
}

#[test]
fn echo_channel_returns_every_byte() {
    let run = tempfile::tempdir().unwrap();
    let guest = boot("echo", run.path());
    let socket = guest.channel_socket(ECHO_CHANNEL).expect("echo channel");
    assert!(socket.ends_with("ch-test.echo.sock"));

    // Connecting before the guest has booted is fine: bytes wait in the socket.
    let mut channel = UnixStream::connect(socket).unwrap();
    let payload: Vec<u8> = (0..=255u8)
        .chain(b"hello vmgate\n".iter().copied())
        .collect();
    channel.write_all(&payload).unwrap();
    let got = wait_for_output(&mut channel, b"hello vmgate\n", BOOT_TIMEOUT).expect("echo");
    assert_eq!(got, payload);

    // A second client after the first has left is echoed too.
    drop(channel);
    let mut channel = UnixStream::connect(socket).unwrap();
    channel.write_all(b"again\n").unwrap();
    let got = wait_for_output(&mut channel, b"again\n", REPLY_TIMEOUT).expect("second echo");
    assert_eq!(got, b"again\n");
}

#[test]
fn qmp_reports_running() {
    let run = tempfile::tempdir().unwrap();
    let guest = boot("qmp", run.path());
    let stream = UnixStream::connect(&guest.qmp_socket).unwrap();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream).lines();
    let greeting = lines.next().expect("qmp greeting").expect("qmp read");
    let greeting: serde_json::Value = serde_json::from_str(&greeting).unwrap();
    assert!(greeting.get("QMP").is_some(), "{greeting}");
    // Replies are read past events (such as RESET or NIC_RX_FILTER_CHANGED) until `return`.
    let mut reply = |command: &str| -> serde_json::Value {
        writeln!(writer, "{{\"execute\":\"{command}\"}}").unwrap();
        loop {
            let line = lines.next().expect("qmp closed").expect("qmp read");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            if value.get("return").is_some() || value.get("error").is_some() {
                return value;
            }
        }
    };
    let caps = reply("qmp_capabilities");
    assert_eq!(caps["return"], serde_json::json!({}), "{caps}");
    let status = reply("query-status");
    assert_eq!(status["return"]["status"], "running", "{status}");
}

#[test]
fn kill_leaves_no_process_and_restart_boots_again() {
    let run = tempfile::tempdir().unwrap();
    let mut guest = boot("kill", run.path());
    let first_pid = guest.pid();
    assert!(Path::new(&format!("/proc/{first_pid}")).exists());
    assert!(guest.is_running());

    guest.restart().expect("restart");
    let second_pid = guest.pid();
    assert_ne!(first_pid, second_pid);
    assert!(!Path::new(&format!("/proc/{first_pid}")).exists());
    let mut serial = guest
        .serial_ready(BOOT_TIMEOUT)
        .expect("shell after restart");
    run_command(&mut serial, "echo $((6*7))", "42\r\n");

    guest.kill();
    guest.kill();
    assert!(!guest.is_running());
    assert!(
        !Path::new(&format!("/proc/{second_pid}")).exists(),
        "qemu {second_pid} still exists after kill()"
    );
    let sockets = [guest.serial_socket.clone(), guest.qmp_socket.clone()];
    drop(guest);
    assert!(sockets.iter().all(|s| !s.exists()), "sockets left behind");
}

#[test]
fn boot_reports_a_qemu_that_exits_early() {
    let run = tempfile::tempdir().unwrap();
    let kernel = run.path().join("not-a-kernel");
    std::fs::write(&kernel, "this is not a kernel\n").unwrap();
    let image = GuestImage {
        kernel: kernel.clone(),
        initrd: kernel,
    };
    let err = Guest::boot(&image, &BootOptions::new("broken", run.path().join("r"))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, KitError::QemuExited { .. }), "{msg}");
    eprintln!("{msg}");
    // The message carries QEMU's own complaint from qemu.log.
    assert!(msg.lines().count() > 1, "{msg}");
}

/// Tests and benchmarks run beside the guest, so an idle guest must not eat a core.
#[test]
fn idle_guest_uses_little_cpu() {
    let run = tempfile::tempdir().unwrap();
    let guest = boot("idle", run.path());
    let serial = guest.serial_ready(BOOT_TIMEOUT).expect("guest ready");
    drop(serial);
    // A client comes and goes on the echo channel; the guest must go back to sleep after.
    let socket = guest.channel_socket(ECHO_CHANNEL).unwrap();
    let mut channel = UnixStream::connect(socket).unwrap();
    channel.write_all(b"ping\n").unwrap();
    wait_for_output(&mut channel, b"ping\n", REPLY_TIMEOUT).expect("echo");
    drop(channel);
    std::thread::sleep(Duration::from_secs(2));

    let window = Duration::from_secs(3);
    let before = guest.cpu_time().unwrap();
    std::thread::sleep(window);
    let used = guest.cpu_time().unwrap() - before;
    let share = used.as_secs_f64() / window.as_secs_f64();
    eprintln!(
        "idle guest used {used:?} of CPU in {window:?} ({:.1}%)",
        share * 100.0
    );
    assert!(
        share < 0.15,
        "idle guest used {:.1}% of a core",
        share * 100.0
    );
}
