//! The test guest's sound source and CD-ROM drive, checked on real QEMU: `tone` reaches a
//! VNC client that negotiates QEMU's audio extension at the right pitch and length, and
//! `/dev/sr0` is an empty drive that reads an ISO 9660 medium once QMP inserts one.
//!
//! The RFB and QMP clients here are written out by hand on purpose: the kit is checked
//! against QEMU itself, not against vmgate's own protocol code.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustfft::{num_complex::Complex, FftPlanner};
use vmgate_testkit::{
    build_image, default_cache_dir, wait_for_output, BootOptions, Guest, CDROM_ID, CDROM_READY,
    PROMPT,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// The rate the test client asks QEMU for (QEMU resamples to it).
const RATE: u32 = 48_000;
/// QEMU audio pseudo-encoding.
const AUDIO_ENCODING: i32 = -259;

fn boot(name: &str, run_dir: &Path) -> (Guest, UnixStream) {
    let image = build_image(&default_cache_dir()).expect("building the guest image");
    let guest = Guest::boot(&image, &BootOptions::new(name, run_dir)).expect("booting the guest");
    let serial = guest.serial_ready(BOOT_TIMEOUT).expect("guest ready");
    (guest, serial)
}

/// Runs `command` on the serial shell and returns its output up to the marker it echoes
/// last, so the caller knows the command has finished.
fn run(serial: &mut UnixStream, command: &str) -> String {
    serial
        .write_all(format!("{command}; echo done-$((40+2))\n").as_bytes())
        .unwrap();
    let out = wait_for_output(serial, b"done-42\r\n", REPLY_TIMEOUT)
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    String::from_utf8_lossy(&out).into_owned()
}

fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)
        .expect("reading from QEMU's VNC server");
    buf
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A VNC connection that has negotiated audio (S16, stereo, [`RATE`]) and enabled it.
fn audio_client(socket: &Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).expect("connecting to the VNC socket");
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let version = read_exact(&mut s, 12);
    assert_eq!(&version[..4], b"RFB ", "{version:?}");
    s.write_all(b"RFB 003.008\n").unwrap();
    let n = read_exact(&mut s, 1)[0] as usize;
    let types = read_exact(&mut s, n);
    assert!(types.contains(&1), "security None not offered: {types:?}");
    s.write_all(&[1]).unwrap();
    assert_eq!(be32(&read_exact(&mut s, 4)), 0, "security result");
    s.write_all(&[1]).unwrap(); // ClientInit: shared
    let init = read_exact(&mut s, 24);
    let name_len = be32(&init[20..]) as usize;
    read_exact(&mut s, name_len);

    // SetEncodings [-259] alone: this connection never asks for the screen.
    let mut msg = vec![2, 0, 0, 1];
    msg.extend_from_slice(&AUDIO_ENCODING.to_be_bytes());
    s.write_all(&msg).unwrap();
    // QEMU acknowledges with a one-rectangle FramebufferUpdate of encoding -259.
    let ack = read_exact(&mut s, 16);
    assert_eq!(&ack[..4], &[0, 0, 0, 1], "{ack:?}");
    assert_eq!(be32(&ack[12..]) as i32, AUDIO_ENCODING, "{ack:?}");

    let mut set_format = vec![255, 1, 0, 2, 3, 2];
    set_format.extend_from_slice(&RATE.to_be_bytes());
    s.write_all(&set_format).unwrap();
    s.write_all(&[255, 1, 0, 0]).unwrap(); // enable
    s
}

/// One tone as it reached the client.
struct Received {
    /// Left channel, as f32 in [-1, 1].
    samples: Vec<f32>,
    /// From the moment the command was sent to the serial shell to the first non-silent
    /// sample's message.
    first_sound: Duration,
}

/// One audio message: its operation, and its PCM for data.
fn read_audio(s: &mut UnixStream) -> (u16, Vec<u8>) {
    let header = read_exact(s, 4);
    assert_eq!(&header[..2], &[255, 1], "not an audio message: {header:?}");
    match u16::from_be_bytes([header[2], header[3]]) {
        2 => {
            let len = be32(&read_exact(s, 4)) as usize;
            assert!(len & 3 == 0 && len <= 1 << 20, "data length {len}");
            (2, read_exact(s, len))
        }
        op => (op, Vec::new()),
    }
}

/// Reads audio messages until a stream has begun, carried sound, and ended.
fn receive_tone(s: &mut UnixStream, sent: Instant) -> Received {
    let mut samples = Vec::new();
    let mut first_sound = None;
    let mut begun = false;
    loop {
        match read_audio(s) {
            (1, _) => begun = true,
            (0, _) if begun && first_sound.is_some() => break,
            (0, _) => begun = false,
            (2, pcm) => {
                // Stereo S16LE frames: keep the left sample of each.
                let left = pcm
                    .chunks_exact(4)
                    .map(|f| f32::from(i16::from_le_bytes([f[0], f[1]])) / 32768.0);
                let start = samples.len();
                samples.extend(left);
                if first_sound.is_none() && samples[start..].iter().any(|v| v.abs() > 0.01) {
                    first_sound = Some(sent.elapsed());
                }
            }
            (op, _) => panic!("unknown audio operation {op}"),
        }
    }
    Received {
        samples,
        first_sound: first_sound.expect("sound"),
    }
}

/// The frequency with the most energy, by FFT over the non-silent part.
fn dominant_hz(samples: &[f32], rate: u32) -> f64 {
    let start = samples.iter().position(|v| v.abs() > 0.01).unwrap_or(0);
    let end = samples.iter().rposition(|v| v.abs() > 0.01).unwrap_or(0);
    let mut buf: Vec<Complex<f32>> = samples[start..=end]
        .iter()
        .map(|&v| Complex::new(v, 0.0))
        .collect();
    let n = buf.len();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let (bin, _) = buf[1..n / 2]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.norm_sqr().total_cmp(&b.1.norm_sqr()))
        .expect("samples");
    (bin + 1) as f64 * f64::from(rate) / n as f64
}

#[test]
fn tone_reaches_a_vnc_audio_client_at_its_pitch_and_length() {
    let run_dir = tempfile::tempdir().unwrap();
    let (guest, mut serial) = boot("tone", run_dir.path());
    let mut vnc = audio_client(&guest.vnc_socket);

    for (hz, ms) in [(880u32, 1500u32), (440, 1000)] {
        let sent = Instant::now();
        serial
            .write_all(format!("tone {hz} {ms}\n").as_bytes())
            .unwrap();
        let got = receive_tone(&mut vnc, sent);
        let found = dominant_hz(&got.samples, RATE);
        let sound = got.samples.iter().filter(|v| v.abs() > 0.01).count();
        let heard = Duration::from_secs_f64(sound as f64 / f64::from(RATE));
        eprintln!(
            "tone {hz} {ms}: dominant {found:.1} Hz, {heard:?} of sound in {} samples, first \
             sound {:?} after the command was sent",
            got.samples.len(),
            got.first_sound
        );
        assert!(
            (found - f64::from(hz)).abs() < f64::from(hz) * 0.02,
            "tone {hz}: dominant frequency {found:.1} Hz"
        );
        // A square wave is non-zero almost everywhere, so the count of non-silent samples
        // is the tone's length. QEMU plays the PC speaker from a host timer while the guest
        // runs under TCG, so allow for scheduling at both ends, not for a wrong length.
        let want = Duration::from_millis(u64::from(ms));
        assert!(
            heard > want.mul_f64(0.8) && heard < want.mul_f64(1.25),
            "tone {hz} {ms}: {heard:?} of sound"
        );
        assert!(
            got.first_sound < Duration::from_secs(5),
            "{:?}",
            got.first_sound
        );
        wait_for_output(&mut serial, PROMPT.as_bytes(), REPLY_TIMEOUT).expect("prompt");
    }

    // Ctrl-C ends a long tone at once, and the speaker goes quiet with it.
    serial.write_all(b"tone 660 60000; echo rc=$?\n").unwrap();
    while read_audio(&mut vnc).0 != 1 {}
    let interrupted = Instant::now();
    serial.write_all(b"\x03").unwrap();
    let mut after = 0;
    loop {
        match read_audio(&mut vnc) {
            (0, _) => break,
            (2, pcm) => after += pcm.len(),
            (op, _) => panic!("audio operation {op} after Ctrl-C"),
        }
    }
    let took = interrupted.elapsed();
    let sound_after = Duration::from_secs_f64(after as f64 / 4.0 / f64::from(RATE));
    eprintln!("Ctrl-C: stream ended after {took:?}, {sound_after:?} of audio after it");
    assert!(took < Duration::from_secs(5), "{took:?}");
    wait_for_output(&mut serial, b"rc=130", REPLY_TIMEOUT).expect("tone's exit status");

    // Bad arguments are refused with the usage line, and nothing sounds.
    let out = run(&mut serial, "tone 5 100; echo rc=$?");
    assert!(out.contains("usage: tone HZ MS"), "{out:?}");
    assert!(out.contains("rc=2"), "{out:?}");
}

/// N from the `<marker>N-polls` a guest loop printed (its echoed command line has `$i`).
fn polls(out: &str, marker: &str) -> Option<u32> {
    out.split(marker)
        .skip(1)
        .find_map(|rest| rest.split_once("-polls")?.0.parse().ok())
}

/// A QMP connection, past the greeting and capabilities negotiation.
struct Qmp {
    writer: UnixStream,
    lines: std::io::Lines<BufReader<UnixStream>>,
}

impl Qmp {
    fn connect(socket: &Path) -> Qmp {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut qmp = Qmp {
            writer,
            lines: BufReader::new(stream).lines(),
        };
        qmp.lines.next().expect("greeting").expect("read");
        qmp.execute(serde_json::json!({"execute": "qmp_capabilities"}));
        qmp
    }

    /// Sends a command and returns its reply, skipping events.
    fn execute(&mut self, command: serde_json::Value) -> serde_json::Value {
        writeln!(self.writer, "{command}").unwrap();
        loop {
            let line = self.lines.next().expect("qmp closed").expect("qmp read");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            if value.get("return").is_some() || value.get("error").is_some() {
                return value;
            }
        }
    }

    fn ok(&mut self, execute: &str, arguments: serde_json::Value) {
        let reply = self.execute(serde_json::json!({"execute": execute, "arguments": arguments}));
        assert!(reply.get("return").is_some(), "{execute}: {reply}");
    }
}

#[test]
fn cdrom_is_empty_then_reads_an_inserted_iso() {
    let run_dir = tempfile::tempdir().unwrap();
    // An ISO 9660 image with one file, made by xorriso (Debian's `xorriso`).
    let tree = run_dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from the cd\n").unwrap();
    let iso = run_dir.path().join("x.iso");
    let made = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .arg(&tree)
        .output()
        .expect("running xorriso (apt-get install xorriso)");
    assert!(made.status.success(), "{made:?}");

    let (guest, mut serial) = boot("cdrom", run_dir.path());
    // The drive comes up in the background after the ready line.
    let out = run(
        &mut serial,
        &format!(
            "for i in $(seq 50); do [ -e {CDROM_READY} ] && echo cdrom-after-$i-polls && break; \
             read -t 0.2 _ <>/run/nap; done"
        ),
    );
    eprintln!(
        "cdrom ready after {:?} polls of 0.2 s",
        polls(&out, "cdrom-after-")
    );
    assert!(
        polls(&out, "cdrom-after-").is_some(),
        "no {CDROM_READY}: {out:?}"
    );
    let out = run(&mut serial, "ls -l /dev/sr0; cat /sys/block/sr0/removable");
    assert!(out.contains("/dev/sr0"), "{out:?}");
    assert!(!out.contains("No such file"), "{out:?}");
    assert!(out.contains("\n1\r\n"), "sr0 is not removable: {out:?}");
    // An empty drive: reading fails, mounting fails.
    let out = run(
        &mut serial,
        "dd if=/dev/sr0 of=/dev/null bs=2048 count=1; mount -t iso9660 /dev/sr0 /mnt; echo rc=$?",
    );
    assert!(out.contains("No medium found"), "{out:?}");
    assert!(out.contains("rc=") && !out.contains("rc=0"), "{out:?}");

    let mut qmp = Qmp::connect(&guest.qmp_socket);
    qmp.ok(
        "blockdev-add",
        serde_json::json!({"driver": "raw", "node-name": "media0", "read-only": true,
            "file": {"driver": "file", "filename": iso, "read-only": true}}),
    );
    qmp.ok(
        "blockdev-open-tray",
        serde_json::json!({"id": CDROM_ID, "force": true}),
    );
    qmp.ok(
        "blockdev-insert-medium",
        serde_json::json!({"id": CDROM_ID, "node-name": "media0"}),
    );
    qmp.ok("blockdev-close-tray", serde_json::json!({"id": CDROM_ID}));

    // The guest polls the drive (as udev sets up on a distribution), so it sees the medium
    // within a few polls; opening the device shows its size once it has.
    let size = std::fs::metadata(&iso).unwrap().len();
    let out = run(
        &mut serial,
        &format!(
            "for i in $(seq 25); do [ \"$(blockdev --getsize64 /dev/sr0)\" = {size} ] && \
             echo seen-after-$i-polls && break; read -t 0.2 _ <>/run/nap; done"
        ),
    );
    let seen = polls(&out, "seen-after-");
    eprintln!("the guest saw the medium after {seen:?} polls of 0.2 s");
    assert!(seen.is_some(), "the guest never saw the medium: {out:?}");
    let out = run(
        &mut serial,
        "mount -t iso9660 -o ro /dev/sr0 /mnt && cat /mnt/hello.txt; umount /mnt",
    );
    assert!(out.contains("hello from the cd\r\n"), "{out:?}");
}
