//! The guest's sound end to end: the test guest's `tone HZ MS` plays on its
//! PC speaker, QEMU's VNC audio carries it, and vmgate lets it through to
//! whoever holds the `audio` scope, and to nobody else.
//!
//! * In-band, through `vmgate vnc`: a hand-written RFB viewer that lists
//!   QEMU's audio pseudo-encoding (−259) hears the tone when its ticket
//!   names `audio` (read-only or not), and gets neither the −259
//!   acknowledgement nor a byte of audio when it does not.
//!
//! Pitch is checked by FFT (rustfft): the dominant frequency within 2%.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, WAIT};
use rustfft::{num_complex::Complex, FftPlanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// QEMU's audio pseudo-encoding.
const AUDIO_ENCODING: i32 = -259;
/// The format the in-band viewers ask for: S16, stereo, 44.1 kHz.
const RATE: u32 = 44_100;

/// The frequency with the most energy in `samples` (mono, `rate` Hz), by
/// FFT over the part between the first and last non-silent sample.
fn dominant_hz(samples: &[f32], rate: u32) -> f64 {
    let start = samples.iter().position(|v| v.abs() > 0.01).unwrap_or(0);
    let end = samples.iter().rposition(|v| v.abs() > 0.01).unwrap_or(0);
    assert!(end > start, "no sound in {} samples", samples.len());
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

/// Left channel of interleaved stereo S16LE, as f32 in [-1, 1].
fn left_channel(pcm: &[u8]) -> Vec<f32> {
    pcm.chunks_exact(4)
        .map(|f| f32::from(i16::from_le_bytes([f[0], f[1]])) / 32768.0)
        .collect()
}

fn assert_pitch(samples: &[f32], rate: u32, hz: u32, who: &str) {
    let found = dominant_hz(samples, rate);
    eprintln!("{who}: dominant {found:.1} Hz (tone {hz} Hz)");
    assert!(
        (found - f64::from(hz)).abs() < f64::from(hz) * 0.02,
        "{who}: dominant frequency {found:.1} Hz, the tone was {hz} Hz"
    );
}

/// `vmgate vnc GUEST` on a loopback TCP port, for one kind of ticket.
struct VncCli {
    child: Child,
    addr: String,
}

impl VncCli {
    async fn start(stack: &Stack, flags: &[&str]) -> VncCli {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args(["vnc", &stack.name, "--listen", "tcp:127.0.0.1:0"])
            .arg("--insecure-tcp")
            .args(flags)
            .arg("--state-dir")
            .arg(&stack.state.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning vmgate vnc");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        });
        let addr = tokio::time::timeout(WAIT, line)
            .await
            .expect("vmgate vnc prints its address")
            .unwrap()
            .unwrap()
            .trim()
            .to_string();
        VncCli { child, addr }
    }
}

impl Drop for VncCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an RFB server sent after the handshake, as the viewer read it.
#[derive(Debug)]
enum ServerMsg {
    /// A FramebufferUpdate, with its rectangles' encodings.
    Update(Vec<i32>),
    AudioBegin,
    AudioEnd,
    AudioData(Vec<u8>),
}

/// A VNC viewer written out by hand (not vmgate's own RFB code): RFB 3.8,
/// security None, 32 bpp as the server's default.
struct Viewer {
    s: TcpStream,
    bpp: usize,
}

impl Viewer {
    async fn connect(addr: &str) -> Viewer {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connecting to vmgate vnc");
        let version = read_n(&mut s, 12).await;
        assert_eq!(&version[..4], b"RFB ", "{version:?}");
        s.write_all(b"RFB 003.008\n").await.unwrap();
        let n = read_n(&mut s, 1).await[0] as usize;
        let types = read_n(&mut s, n).await;
        assert!(types.contains(&1), "security None not offered: {types:?}");
        s.write_all(&[1]).await.unwrap();
        assert_eq!(be32(&read_n(&mut s, 4).await), 0, "security result");
        s.write_all(&[1]).await.unwrap();
        let init = read_n(&mut s, 24).await;
        let bpp = usize::from(init[4]) / 8;
        let name = be32(&init[20..]) as usize;
        read_n(&mut s, name).await;
        Viewer { s, bpp }
    }

    /// Lists raw and −259, asks for a 1x1 update (so the acknowledgement,
    /// if any, has come before that update's answer), then S16 stereo at
    /// [`RATE`] and enable.
    async fn ask_for_audio(&mut self) {
        let mut m = vec![2, 0, 0, 2];
        m.extend_from_slice(&0i32.to_be_bytes());
        m.extend_from_slice(&AUDIO_ENCODING.to_be_bytes());
        m.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
        m.extend_from_slice(&[255, 1, 0, 2, 3, 2]);
        m.extend_from_slice(&RATE.to_be_bytes());
        m.extend_from_slice(&[255, 1, 0, 0]);
        self.s.write_all(&m).await.unwrap();
    }

    async fn next(&mut self) -> ServerMsg {
        let s = &mut self.s;
        match read_n(s, 1).await[0] {
            0 => {
                let h = read_n(s, 3).await;
                let n = u16::from_be_bytes([h[1], h[2]]);
                let mut encodings = Vec::new();
                for _ in 0..n {
                    let r = read_n(s, 12).await;
                    let (w, h) = (
                        u16::from_be_bytes([r[4], r[5]]) as usize,
                        u16::from_be_bytes([r[6], r[7]]) as usize,
                    );
                    let e = be32(&r[8..]) as i32;
                    match e {
                        0 => drop(read_n(s, w * h * self.bpp).await),
                        AUDIO_ENCODING => {}
                        e => panic!("encoding {e} was not asked for"),
                    }
                    encodings.push(e);
                }
                ServerMsg::Update(encodings)
            }
            255 => {
                let h = read_n(s, 3).await;
                assert_eq!(h[0], 1, "QEMU message subtype {}", h[0]);
                match u16::from_be_bytes([h[1], h[2]]) {
                    0 => ServerMsg::AudioEnd,
                    1 => ServerMsg::AudioBegin,
                    2 => {
                        let len = be32(&read_n(s, 4).await) as usize;
                        assert!(len <= 1 << 20, "audio data of {len} bytes");
                        ServerMsg::AudioData(read_n(s, len).await)
                    }
                    op => panic!("audio operation {op}"),
                }
            }
            t => panic!("server message type {t}"),
        }
    }

    /// Reads until a stream that carried sound has ended; returns its PCM
    /// and when the first non-silent bytes arrived.
    async fn hear_tone(&mut self) -> (Vec<u8>, Instant) {
        let mut pcm = Vec::new();
        let mut first = None;
        loop {
            match tokio::time::timeout(WAIT, self.next())
                .await
                .expect("the tone's audio")
            {
                ServerMsg::AudioData(d) => {
                    if first.is_none() && left_channel(&d).iter().any(|v| v.abs() > 0.01) {
                        first = Some(Instant::now());
                    }
                    pcm.extend_from_slice(&d);
                }
                ServerMsg::AudioEnd if first.is_some() => return (pcm, first.unwrap()),
                ServerMsg::AudioBegin | ServerMsg::AudioEnd => {}
                m => panic!("{m:?} while waiting for the tone"),
            }
        }
    }
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("the server answers")
        .expect("reading from vmgate vnc");
    buf
}

/// `line` without the terminal colours tracing puts in the log files.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[tokio::test]
async fn in_band_audio_reaches_viewers_whose_ticket_names_audio_and_no_other() {
    let stack = Stack::start().await;
    let with = VncCli::start(&stack, &["--audio"]).await;
    let read_only = VncCli::start(&stack, &["--audio", "--read-only"]).await;
    let without = VncCli::start(&stack, &[]).await;

    let mut listeners = Vec::new();
    for cli in [&with, &read_only] {
        let mut v = Viewer::connect(&cli.addr).await;
        v.ask_for_audio().await;
        // The acknowledgement, then the 1x1 update asked for after it.
        assert!(matches!(v.next().await, ServerMsg::Update(e) if e == [AUDIO_ENCODING]));
        assert!(matches!(v.next().await, ServerMsg::Update(e) if e == [0]));
        listeners.push(v);
    }
    let mut deaf = Viewer::connect(&without.addr).await;
    deaf.ask_for_audio().await;
    // No acknowledgement: the first update is the one asked for.
    match deaf.next().await {
        ServerMsg::Update(e) => assert_eq!(e, [0], "the −259 acknowledgement passed"),
        m => panic!("{m:?} before the update asked for"),
    }

    let mut serial = stack.serial().await;
    serial.send(b"tone 880 1500\n").await;
    let sent = Instant::now();
    let mut hearing = Vec::new();
    for mut v in listeners {
        hearing.push(tokio::spawn(async move { v.hear_tone().await }));
    }
    let mut last = sent;
    for (who, h) in ["--audio", "--audio --read-only"].into_iter().zip(hearing) {
        let (pcm, first) = h.await.unwrap();
        eprintln!(
            "{who}: first sound {:?} after the command, {} bytes",
            first - sent,
            pcm.len()
        );
        assert_pitch(&left_channel(&pcm), RATE, 880, who);
        last = last.max(Instant::now());
    }
    // The tone is over for the listeners; the viewer without the scope got
    // nothing in all that time, nor in the second after it.
    let nothing = tokio::time::timeout(
        Duration::from_secs(1).saturating_sub(last.elapsed()) + Duration::from_secs(1),
        deaf.s.read_u8(),
    )
    .await;
    assert!(nothing.is_err(), "the viewer without audio got {nothing:?}");
    drop(deaf);
    stack
        .wait_log(
            "gateway.log",
            WAIT,
            "the audio-less viewer's session end",
            |l| {
                let l = plain(l);
                l.contains("session ended")
                    && l.contains("audio_dropped=2")
                    && l.contains("audio_encodings_stripped=1")
            },
        )
        .await;
}
