//! The guest's sound end to end: the test guest's `tone HZ MS` plays on its
//! PC speaker, QEMU's VNC audio carries it, and vmgate lets it through to
//! whoever holds the `audio` scope, and to nobody else.
//!
//! * In-band, through `vmgate vnc`: a hand-written RFB viewer that lists
//!   QEMU's audio pseudo-encoding (−259) hears the tone when its ticket
//!   names `audio` (read-only or not), and gets neither the −259
//!   acknowledgement nor a byte of audio when it does not.
//!
//! * On its own channel, `audio`: the agent's dedicated VNC connection
//!   turned into framed PCM (`vmgate_wire::audio`), through the gateway's
//!   WebSocket, under both backends; under libvirt a domain whose VNC
//!   display has no `<audio>` gets the channel listed as unavailable, and
//!   a session on it is refused with what the domain needs.
//!
//! * In the browser: the screen page's speaker, off until clicked, plays
//!   the tone through its AudioWorklet (headless Chromium,
//!   `tests/browser/audio.mjs`) while the screen keeps updating.
//! * From the command line: `vmgate audio --out x.wav --seconds N` (and
//!   `--out -`) records the tones as WAV, exactly N seconds long, silence
//!   where the guest was quiet.
//!
//! Pitch is checked by FFT (rustfft): the dominant frequency within 2%.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{for_each_backend, Backend, Event, Session, Stack, WAIT};
use rustfft::{num_complex::Complex, FftPlanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vmgate_wire::audio::{AudioEvent, AudioHeader, AudioReader};

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

async fn in_band_audio_reaches_viewers_whose_ticket_names_audio_and_no_other(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
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

/// The rate the channel's listeners ask for.
const CHANNEL_RATE: u32 = 48_000;

/// What a listener on the `audio` channel heard so far.
#[derive(Default)]
struct Heard {
    header: Option<AudioHeader>,
    /// PCM of the current (or last) stream, from its begin.
    pcm: Vec<u8>,
    /// When the current stream's first non-silent sample arrived.
    first_sound: Option<Instant>,
    begins: usize,
    ends: usize,
    /// PCM bytes the agent reported dropped.
    dropped: u64,
    /// Every begin, end and drop, and the PCM between them, with when
    /// (for a failure's message).
    log: Vec<String>,
    opened: Option<Instant>,
}

impl Heard {
    fn note(&mut self, what: &str) {
        let at = self.opened.get_or_insert_with(Instant::now).elapsed();
        self.log.push(format!("{at:.3?} {what}"));
    }
}

/// A session on the guest's `audio` channel, through the gateway.
struct Listener {
    session: Session,
    reader: AudioReader,
    heard: Heard,
}

impl Listener {
    /// Opens the channel with a ticket for `channels` and asks for S16
    /// stereo at [`CHANNEL_RATE`].
    async fn open(stack: &Stack, channels: &[&str], read_only: bool) -> Listener {
        let want = AudioHeader {
            sample: 3,
            channels: 2,
            rate: CHANNEL_RATE,
        };
        Listener::open_as(stack, channels, read_only, want).await
    }

    /// Opens the channel and asks for `want`.
    async fn open_as(
        stack: &Stack,
        channels: &[&str],
        read_only: bool,
        want: AudioHeader,
    ) -> Listener {
        let t = stack.ticket(&stack.name, channels, read_only);
        let url = t.ws_url.replace(&format!("/{}?", channels[0]), "/audio?");
        let mut session = Session::new(stack.connect(&url).await);
        session.send(&want.encode()).await;
        Listener {
            session,
            reader: AudioReader::new(),
            heard: Heard::default(),
        }
    }

    /// Reads until `done` holds, for at most `wait`; the close if the
    /// session ends first.
    async fn until(
        &mut self,
        wait: Duration,
        done: impl Fn(&Heard) -> bool,
    ) -> Result<(), (u16, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        while !done(&self.heard) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.session.next_event(left).await {
                Event::Data(d) => {
                    let h = &mut self.heard;
                    self.reader
                        .feed(&d, |e| match e {
                            AudioEvent::Header(x) => h.header = Some(x),
                            AudioEvent::Begin => {
                                h.begins += 1;
                                h.pcm.clear();
                                h.first_sound = None;
                                h.note("begin");
                            }
                            AudioEvent::End => {
                                h.ends += 1;
                                let n = h.pcm.len();
                                h.note(&format!("end after {n} PCM bytes"));
                            }
                            AudioEvent::Pcm(p) => {
                                if h.first_sound.is_none()
                                    && left_channel(p).iter().any(|v| v.abs() > 0.01)
                                {
                                    h.first_sound = Some(Instant::now());
                                    h.note("first sound");
                                }
                                h.pcm.extend_from_slice(p);
                            }
                            AudioEvent::Dropped(n) => {
                                h.dropped += u64::from(n);
                                h.note(&format!("{n} bytes dropped"));
                            }
                        })
                        .expect("the agent's audio stream parses");
                }
                Event::Closed(c, r) => return Err((c, r)),
                Event::Timeout => panic!(
                    "audio listener: nothing more within {wait:?} (begins {}, ends {}, {} PCM bytes)",
                    self.heard.begins,
                    self.heard.ends,
                    self.heard.pcm.len()
                ),
                Event::Notice(_) | Event::Eof => {}
            }
        }
        Ok(())
    }

    /// Plays `tone HZ MS` on `serial` and returns the stream it made (its
    /// left channel) and the time from the command to its first sound.
    async fn hear(&mut self, serial: &mut Session, hz: u32, ms: u32) -> (Vec<f32>, Duration) {
        self.until(WAIT, |h| h.header.is_some())
            .await
            .expect("the audio header");
        let ends = self.heard.ends;
        let begins = self.heard.begins;
        serial.send(format!("tone {hz} {ms}\n").as_bytes()).await;
        let sent = Instant::now();
        self.until(WAIT, |h| {
            h.begins > begins && h.ends > ends && h.first_sound.is_some()
        })
        .await
        .expect("the tone's stream");
        let first = self.heard.first_sound.unwrap() - sent;
        (left_channel(&self.heard.pcm), first)
    }
}

for_each_backend!(
    the_audio_channel_carries_the_guests_tone_and_tells_880_from_440,
    a_domain_without_audio_says_what_it_needs,
    a_listener_that_stops_reading_grows_no_memory_and_the_screen_stays_live,
    the_screen_page_plays_the_guests_tone_after_its_speaker_is_clicked,
    in_band_audio_reaches_viewers_whose_ticket_names_audio_and_no_other,
);

async fn the_audio_channel_carries_the_guests_tone_and_tells_880_from_440(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    // Listening is not input: a read-only ticket is enough.
    let mut l = Listener::open(&stack, &["audio"], true).await;
    let mut serial = stack.serial().await;
    l.until(WAIT, |h| h.header.is_some()).await.unwrap();
    assert_eq!(
        l.heard.header,
        Some(AudioHeader {
            sample: 3,
            channels: 2,
            rate: CHANNEL_RATE
        })
    );
    let wire_before = l.session.output.len();
    let (high, first) = l.hear(&mut serial, 880, 1500).await;
    // What the stream cost on the client's WebSocket, framing included.
    let wire = l.session.output.len() - wire_before;
    eprintln!(
        "{backend:?}: tone 880: first sound {first:?} after the command; {} PCM bytes in {wire} \
         bytes on the WebSocket ({:.2} % framing)",
        l.heard.pcm.len(),
        100.0 * (wire as f64 / l.heard.pcm.len() as f64 - 1.0)
    );
    assert_pitch(&high, CHANNEL_RATE, 880, "tone 880");
    let heard = Duration::from_secs_f64(
        high.iter().filter(|v| v.abs() > 0.01).count() as f64 / f64::from(CHANNEL_RATE),
    );
    // QEMU plays the PC speaker from host timers while TCG guests share two
    // cores, so the length stretches under load; a PCM record lost or sent
    // twice would be far outside this.
    assert!(
        heard > Duration::from_millis(1200) && heard < Duration::from_millis(2250),
        "tone 880 1500: {heard:?} of sound; the stream: {:?}",
        l.heard.log
    );
    let (low, _) = l.hear(&mut serial, 440, 1000).await;
    assert_pitch(&low, CHANNEL_RATE, 440, "tone 440");
    assert_eq!(l.heard.dropped, 0, "a listener that keeps up loses nothing");

    // A ticket without `audio` cannot open the channel.
    let t = stack.ticket(&stack.name, &["vnc"], true);
    let url = t.ws_url.replace("/vnc?", "/audio?");
    let (code, reason) = Session::new(stack.connect(&url).await).closed().await;
    assert_eq!(code, 4403, "{reason}");
}

/// Resident memory of process `pid`, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Reads `session` until its output holds at least `n` bytes.
async fn read_to(session: &mut Session, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while session.output.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match session.next_event(left).await {
            Event::Data(_) | Event::Notice(_) | Event::Eof => {}
            e => panic!(
                "screen session: {e:?} with {} of {n} bytes",
                session.output.len()
            ),
        }
    }
}

/// A read-only VNC session on the guest's screen through the gateway,
/// past the handshake (hand-written RFB, security None, raw pixels).
async fn screen(stack: &Stack) -> Session {
    let t = stack.ticket(&stack.name, &["vnc"], true);
    let mut s = Session::new(stack.connect(&t.ws_url).await);
    read_to(&mut s, 12).await;
    s.send(b"RFB 003.008\n").await;
    read_to(&mut s, 13).await;
    let n = usize::from(s.output[12]);
    read_to(&mut s, 13 + n).await;
    s.send(&[1]).await;
    read_to(&mut s, 13 + n + 4).await;
    s.send(&[1]).await;
    let init = 13 + n + 4;
    read_to(&mut s, init + 24).await;
    let name = be32(&s.output[init + 20..]) as usize;
    read_to(&mut s, init + 24 + name).await;
    s.send(&[2, 0, 0, 1, 0, 0, 0, 0]).await; // SetEncodings [raw]
    s
}

/// Asks `screen` for a fresh 16x16 corner and returns how long the answer
/// took.
async fn screen_update(screen: &mut Session) -> Duration {
    let before = screen.output.len();
    let asked = Instant::now();
    screen.send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
    // FramebufferUpdate header, one rectangle header, 16x16 at 32 bpp.
    read_to(screen, before + 4 + 12 + 16 * 16 * 4).await;
    asked.elapsed()
}

async fn a_listener_that_stops_reading_grows_no_memory_and_the_screen_stays_live(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let mut serial = stack.serial().await;
    // The fastest stream QEMU sends: S32 stereo at 48 kHz, 384 kB/s.
    let fast = AudioHeader {
        sample: 5,
        channels: 2,
        rate: CHANNEL_RATE,
    };
    let mut stalled = Listener::open_as(&stack, &["audio"], true, fast).await;
    stalled.until(WAIT, |h| h.header.is_some()).await.unwrap();
    let mut screen = screen(&stack).await;
    screen_update(&mut screen).await;
    // QEMU refreshes an idle screen at least every 3 s: a request waits
    // for the next refresh, never for the audio.
    let mut idle = Duration::ZERO;
    for _ in 0..3 {
        idle = idle.max(screen_update(&mut screen).await);
    }
    let (agent, gateway) = (stack.agent_pid(), stack.gateway_pid());
    let before = (rss_kib(agent), rss_kib(gateway));

    // 30 s of sound (11.5 MB) while the listener reads nothing: more than
    // every buffer on the way holds.
    serial.send(b"tone 440 30000\n").await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(31) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        slowest = slowest.max(screen_update(&mut screen).await);
    }
    let grew = (
        rss_kib(agent).saturating_sub(before.0),
        rss_kib(gateway).saturating_sub(before.1),
    );
    eprintln!(
        "stalled listener: agent +{} KiB, gateway +{} KiB; slowest screen update {slowest:?}",
        grew.0, grew.1
    );
    assert!(
        slowest < Duration::from_secs(2),
        "the screen stalled for {slowest:?}"
    );
    assert!(grew.0 < 32 * 1024, "the agent grew by {} KiB", grew.0);
    assert!(grew.1 < 32 * 1024, "the gateway grew by {} KiB", grew.1);

    // Reading again: the listener is told what it missed, and the stream
    // goes on (the tone's end arrives).
    stalled
        .until(WAIT, |h| h.dropped > 0 && h.ends > 0)
        .await
        .unwrap();
    eprintln!(
        "stalled listener: {} bytes reported dropped",
        stalled.heard.dropped
    );
    drop(stalled);
    stack
        .wait_log("agent.log", WAIT, "the stalled audio stream's end", |l| {
            let l = plain(l);
            l.contains("audio stream ended") && !l.contains("dropped_bytes=0 ")
        })
        .await;
}

/// A guest whose VNC display carries no audio: under libvirt its `audio`
/// channel is listed as unavailable and a session on it is refused with
/// what the domain needs; under qemu, where the configuration says whether
/// the display has an audiodev, a guest declared without is offered none.
async fn a_domain_without_audio_says_what_it_needs(backend: Backend) {
    let stack = match backend {
        Backend::Qemu => {
            Stack::start_full(
                Backend::Qemu,
                true,
                |_| {},
                |cfg| cfg.guests[0].audio = false,
                |_, _| {},
            )
            .await
        }
        Backend::Libvirt => Stack::start_backend(backend).await,
    };
    let _unwired;
    let name = match backend {
        Backend::Libvirt => {
            _unwired = Unwired::create(&stack).await;
            stack.wait_routable_guest(&_unwired.0).await;
            _unwired.0.clone()
        }
        Backend::Qemu => stack.name.clone(),
    };
    let t = stack.ticket(&name, &["audio"], true);
    let (code, reason) = Session::new(stack.connect(&t.ws_url).await).closed().await;
    eprintln!("{backend:?}: {code} {reason}");
    assert_eq!(code, 4405, "{reason}");
    if backend == Backend::Libvirt {
        assert!(
            reason.contains(
                "audio unavailable: no audio on its VNC display: add <audio id='1' type='none'/> and <audio id='1'/> in <graphics>"
            ),
            "{reason}"
        );
    }
}

/// A second libvirt test domain, its VNC display without `<audio>`;
/// destroyed when dropped.
struct Unwired(String);

impl Unwired {
    async fn create(stack: &Stack) -> Unwired {
        let run = stack.dir.path().join("guest");
        let xml = std::fs::read_to_string(run.join(format!("{}.xml", stack.name))).unwrap();
        let name = format!("{}.noaudio", stack.name);
        let xml = xml
            .replace(&stack.name, &name)
            .replace("<audio id='1'/>", "");
        let path = run.join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        let out = common::libvirt::virsh(&["create", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Unwired(name)
    }
}

impl Drop for Unwired {
    fn drop(&mut self) {
        let _ = common::libvirt::virsh(&["destroy", &self.0]);
    }
}

/// The runs of sound in `samples`, split at silences of at least 0.2 s.
fn sounds(samples: &[f32], rate: u32) -> Vec<std::ops::Range<usize>> {
    let gap = rate as usize / 5;
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, v) in samples.iter().enumerate() {
        if v.abs() <= 0.01 {
            continue;
        }
        match runs.last_mut() {
            Some(r) if i - r.end < gap => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

/// `vmgate audio` for the stack's guest, with `args`; stdout piped.
fn record(stack: &Stack, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["audio", &stack.name])
        .args(args)
        .arg("--state-dir")
        .arg(&stack.state.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning vmgate audio")
}

/// Waits (in a thread) for `vmgate audio`'s "recording" line on stderr;
/// the rest of stderr is collected for the end.
async fn recording_started(child: &mut Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let rest = std::thread::spawn(move || {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let mut all = String::new();
        let mut tx = Some(tx);
        for l in lines.by_ref().map_while(Result::ok) {
            if l.contains("recording the sound of") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("vmgate audio starts recording")
        .expect("vmgate audio said it records");
    rest
}

/// Waits for `child` to exit by itself (within `WAIT`); its status.
async fn exited(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "vmgate audio did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn vmgate_audio_records_the_tones_into_a_wav_of_the_length_asked() {
    let stack = Stack::start().await;
    let mut serial = stack.serial().await;
    let wav = stack.dir.path().join("x.wav");
    let mut child = record(&stack, &["--out", wav.to_str().unwrap(), "--seconds", "6"]);
    let stderr = recording_started(&mut child).await;
    let started = Instant::now();
    serial
        .send(b"tone 880 1500; sleep 1; tone 440 1000\n")
        .await;
    let status = exited(&mut child).await;
    let took = started.elapsed();
    let stderr = stderr.join().unwrap();
    eprintln!("vmgate audio: {status} after {took:?}\n{stderr}");
    assert!(status.success(), "{stderr}");
    assert!(
        took > Duration::from_millis(5500) && took < Duration::from_secs(8),
        "--seconds 6 stopped after {took:?}"
    );

    let mut r = hound::WavReader::open(&wav).unwrap();
    let spec = r.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 44_100, 16)
    );
    assert_eq!(r.duration(), 6 * 44_100, "exactly --seconds long");
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let left: Vec<f32> = samples
        .iter()
        .step_by(2)
        .map(|&s| f32::from(s) / 32768.0)
        .collect();
    let runs = sounds(&left, 44_100);
    assert_eq!(runs.len(), 2, "two tones with a silence between: {runs:?}");
    assert_pitch(&left[runs[0].clone()], 44_100, 880, "the WAV's first tone");
    assert_pitch(&left[runs[1].clone()], 44_100, 440, "the WAV's second tone");
    // The silence between them is there, about as long as the guest's.
    let gap = (runs[1].start - runs[0].end) as f64 / 44_100.0;
    assert!(gap > 0.5 && gap < 2.0, "{gap} s between the tones");
}

#[tokio::test]
async fn vmgate_audio_streams_wav_to_stdout() {
    let stack = Stack::start().await;
    let mut serial = stack.serial().await;
    let mut child = record(
        &stack,
        &["--out", "-", "--seconds", "3", "--rate", "48000", "--mono"],
    );
    let mut stdout = child.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut wav = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut wav).map(|_| wav)
    });
    let stderr = recording_started(&mut child).await;
    serial.send(b"tone 660 1000\n").await;
    let status = exited(&mut child).await;
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "{stderr}");
    let wav = reading.join().unwrap().unwrap();
    let mut r = hound::WavReader::new(std::io::Cursor::new(&wav)).unwrap();
    assert_eq!((r.spec().channels, r.spec().sample_rate), (1, 48_000));
    assert_eq!(r.duration(), 3 * 48_000);
    assert_eq!(
        wav.len() as u64,
        44 + 3 * 48_000 * 2,
        "the header's lengths are the stream's"
    );
    let mono: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    assert_pitch(&mono, 48_000, 660, "stdout's WAV");
}

/// The screen page in headless Chromium with a ticket for `vnc` and
/// `audio`: the speaker is off, a click turns it on, the tone plays through
/// the page's player at its pitch, and the screen goes on updating.
async fn the_screen_page_plays_the_guests_tone_after_its_speaker_is_clicked(backend: Backend) {
    use tokio::io::AsyncBufReadExt;
    let stack = Stack::start_backend(backend).await;
    let mut serial = stack.serial().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "npm ci in {} failed (see scripts/deps.d/vnc.sh)",
            dir.display()
        );
    }
    // Read-only: listening is not input.
    let t = stack.ticket(&stack.name, &["vnc", "audio"], true);
    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("audio.mjs"))
        .env("VMGATE_URL", &t.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node");
    let mut stderr = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    let on = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(l)) = stderr.next_line().await {
            if l.contains("vmgate-audio: on") {
                return true;
            }
            eprintln!("browser: {l}");
        }
        false
    })
    .await;
    assert_eq!(on, Ok(true), "the page's speaker never turned on");
    // While it plays, the guest writes on its VGA console too.
    serial
        .send(b"(sleep 1; echo vmgate-audio-tick > /dev/tty0) & tone 880 4000\n")
        .await;
    let out = tokio::time::timeout(Duration::from_secs(90), node.wait_with_output())
        .await
        .expect("the browser script finished")
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "browser output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("browser: {report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["stateBefore"], "off", "off until clicked");
    assert_eq!(report["labels"]["before"], "🔇 sound off");
    assert_eq!(
        report["labels"]["silent"],
        "🔈 sound on (the guest is silent)"
    );
    assert_eq!(report["labels"]["playing"], "🔊 sound on");
    let hz = report["dominantHz"].as_f64().expect("a dominant frequency");
    assert!((hz - 880.0).abs() < 880.0 * 0.02, "the page played {hz} Hz");
    assert_eq!(
        report["screenChanged"], true,
        "the screen stopped while sound played"
    );
    let played = report["player"]["played"].as_u64().unwrap_or(0);
    let rate = report["rate"].as_u64().unwrap();
    let during = report["framesWhileScreenChanged"].as_u64().unwrap_or(0);
    assert!(
        during > rate,
        "{during} frames of sound while the screen changed"
    );
    assert!(played > rate, "the worklet played {played} frames");
    // Over the page's one HTTP/2 connection, like the screen.
    assert_eq!(report["documentProtocol"], "h2", "{report:#}");
    assert_eq!(
        report["websockets"][format!("/ws/{}/audio", stack.name)]["status"],
        200,
        "{report:#}"
    );
}

/// The figure in BENCHMARKS.md: from the `tone` command to the first
/// non-silent samples, through vmgate's `audio` channel and, for the same
/// tones, on a client of QEMU's own VNC socket beside it. A measurement,
/// printed: it asserts only that both heard every tone.
#[tokio::test]
async fn first_sound_latency_through_vmgate_and_at_qemus_socket() {
    use tokio::io::AsyncReadExt as _;
    use vmgate_rfb::audio::{control_message, set_encodings_message, OP_ENABLE};
    use vmgate_rfb::{AudioFormat, SampleFormat, ServerEvent, ServerParser, AUDIO_ENCODING};
    let stack = Stack::start().await;
    let mut serial = stack.serial().await;
    let mut l = Listener::open(&stack, &["audio"], true).await;
    l.until(WAIT, |h| h.header.is_some()).await.unwrap();

    // QEMU's socket, straight: the same format, enabled.
    let mut direct = tokio::net::UnixStream::connect(&stack.qemu().vnc_socket)
        .await
        .unwrap();
    let mut hello = ServerParser::CLIENT_HANDSHAKE.to_vec();
    hello.extend_from_slice(&set_encodings_message(&[AUDIO_ENCODING]));
    let format = AudioFormat {
        sample: SampleFormat::S16,
        channels: 2,
        rate: CHANNEL_RATE,
    };
    hello.extend_from_slice(&format.set_format_message());
    hello.extend_from_slice(&control_message(OP_ENABLE));
    direct.write_all(&hello).await.unwrap();
    let (firsts, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut p = ServerParser::new();
        let mut buf = vec![0; 64 * 1024];
        let mut loud = false;
        loop {
            let n = direct.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            p.feed(&buf[..n], |e| match e {
                ServerEvent::AudioBegin => loud = false,
                ServerEvent::AudioData(d)
                    if !loud && left_channel(d).iter().any(|v| v.abs() > 0.01) =>
                {
                    loud = true;
                    let _ = firsts.send(Instant::now());
                }
                _ => {}
            })
            .unwrap();
        }
    });

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let (_, first) = l.hear(&mut serial, 1000, 300).await;
        let sent = l.heard.first_sound.unwrap() - first;
        let at_qemu = tokio::time::timeout(WAIT, heard.recv())
            .await
            .expect("QEMU's own client heard the tone")
            .unwrap();
        ours.push(first);
        theirs.push(at_qemu - sent);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let added: Vec<i128> = ours
        .iter()
        .zip(&theirs)
        .map(|(o, t)| o.as_micros() as i128 - t.as_micros() as i128)
        .collect();
    eprintln!(
        "first sound after the command, 7 tones: through vmgate median {:?} (min {:?}, max {:?}); \
         at QEMU's socket median {:?} (min {:?}, max {:?}); vmgate's part per tone (µs): {added:?}",
        median(&mut ours.clone()),
        ours.iter().min().unwrap(),
        ours.iter().max().unwrap(),
        median(&mut theirs.clone()),
        theirs.iter().min().unwrap(),
        theirs.iter().max().unwrap(),
    );
}
