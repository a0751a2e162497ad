//! A VNC viewer for the tests, written from RFC 6143 and rfbproto and
//! independent of `vmgate_rfb`: it connects to `vmgate vnc` over TCP, asks
//! for 32-bit pixels and lists ZRLE and zlib before Tight, Hextile and raw,
//! decodes Tight (fill and basic compression, every filter, on four zlib
//! streams that it resets when a rectangle's control byte says so), Hextile
//! and raw into a framebuffer, and fails on any other encoding (so a
//! server that was let pick ZRLE or zlib breaks it, and so does a spliced
//! Tight stream whose first rectangle does not reset the streams). Every
//! update is timestamped; an incremental request follows each one, like a
//! real viewer's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{Stack, WAIT};

/// An RGB image.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image {}x{}", self.width, self.height)
    }
}

impl Image {
    /// Any image Pillow reads (PNG, PPM), through the vncdotool venv's
    /// Python (tests/vnc.rs makes it).
    pub fn load(path: &Path) -> Image {
        let ppm = path.with_extension("rgb.ppm");
        let python = venv_python();
        let status = Command::new(python)
            .arg("-c")
            .arg("import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2])")
            .arg(path)
            .arg(&ppm)
            .status()
            .unwrap();
        assert!(status.success(), "converting {}", path.display());
        let data = std::fs::read(&ppm).unwrap();
        // Pillow writes "P6\n<w> <h>\n255\n" and the pixels.
        let mut fields = data.splitn(5, |b| b.is_ascii_whitespace());
        let magic = fields.next().unwrap();
        assert_eq!(magic, b"P6");
        let num = |f: Option<&[u8]>| -> usize {
            std::str::from_utf8(f.unwrap()).unwrap().parse().unwrap()
        };
        let (width, height) = (num(fields.next()), num(fields.next()));
        assert_eq!(num(fields.next()), 255);
        let rgb = fields.next().unwrap().to_vec();
        assert_eq!(rgb.len(), width * height * 3);
        Image { width, height, rgb }
    }

    /// Reads a binary PPM (P6, maxval 255), as QMP `screendump` writes it.
    pub fn ppm(path: &Path) -> Image {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while data[at].is_ascii_whitespace() {
                at += 1;
            }
            let start = at;
            while !data[at].is_ascii_whitespace() {
                at += 1;
            }
            fields.push(String::from_utf8_lossy(&data[start..at]).into_owned());
        }
        assert_eq!((fields[0].as_str(), fields[3].as_str()), ("P6", "255"));
        let (width, height) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        let rgb = data[at + 1..].to_vec();
        assert_eq!(rgb.len(), width * height * 3, "{}", path.display());
        Image { width, height, rgb }
    }

    pub fn differing(&self, other: &Image) -> usize {
        if (self.width, self.height) != (other.width, other.height) {
            return usize::MAX;
        }
        self.rgb
            .chunks(3)
            .zip(other.rgb.chunks(3))
            .filter(|(a, b)| a != b)
            .count()
    }
}

fn venv_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vnc-venv");
    if !venv.join("bin/python").exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "vncdotool"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(
            ok,
            "cannot make {} (see scripts/deps.d/vnc.sh)",
            venv.display()
        );
    }
    venv.join("bin/python")
}

/// What the viewer has seen.
#[derive(Debug)]
pub struct Seen {
    pub screen: Image,
    /// When each FramebufferUpdate was complete.
    pub updates: Vec<Instant>,
    /// The same, on the wall clock (to compare with log lines).
    pub wall: Vec<std::time::SystemTime>,
    /// Encodings of the rectangles received.
    pub encodings: std::collections::BTreeSet<i32>,
    /// Why the connection ended, if it did.
    pub ended: Option<String>,
}

/// `vmgate vnc GUEST` on a local TCP port, and a viewer connected to it.
pub struct Viewer {
    cli: Child,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
    /// The connection's write half, shared with the task's update requests.
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.cli.kill();
        let _ = self.cli.wait();
    }
}

/// The encodings the viewer lists, in its order of preference: ZRLE and
/// zlib first, which a spliceable session must never get, then Tight,
/// which it gets (QEMU takes the first it knows).
pub const ASKED: &[i32] = &[16, 6, 7, 5, 0, -223];

impl Viewer {
    pub async fn start(stack: &Stack, guest: &str) -> Viewer {
        Viewer::start_in(&stack.state.dir, guest).await
    }

    /// The same, for the gateway whose state directory is `state_dir`
    /// (`vmgate demo`'s).
    pub async fn start_in(state_dir: &Path, guest: &str) -> Viewer {
        let mut cli = Command::new(env!("CARGO_BIN_EXE_vmgate"))
            .args([
                "vnc",
                guest,
                "--listen",
                "tcp:127.0.0.1:0",
                "--insecure-tcp",
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning vmgate vnc");
        let stdout = cli.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        });
        let addr = tokio::time::timeout(WAIT, line)
            .await
            .expect("vmgate vnc prints its address")
            .unwrap()
            .unwrap();
        let addr = addr.trim().trim_start_matches("tcp:").to_string();
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(&addr))
            .await
            .expect("connecting to vmgate vnc")
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let (mut r, mut w) = stream.into_split();
        let (width, height) = tokio::time::timeout(WAIT, handshake(&mut r, &mut w))
            .await
            .expect("the RFB handshake through vmgate vnc");
        let seen = Arc::new(Mutex::new(Seen {
            screen: Image {
                width,
                height,
                rgb: vec![0; width * height * 3],
            },
            updates: Vec::new(),
            wall: Vec::new(),
            encodings: Default::default(),
            ended: None,
        }));
        let s = seen.clone();
        let writer = Arc::new(tokio::sync::Mutex::new(w));
        let w = writer.clone();
        let task = tokio::spawn(async move {
            let why = match read_updates(&mut r, &w, &s).await {
                Ok(()) => "the connection ended".to_string(),
                Err(e) => e,
            };
            s.lock().unwrap().ended = Some(why);
        });
        Viewer {
            cli,
            seen,
            task,
            writer,
        }
    }

    /// Presses (`down`) or releases the key `keysym` (RFB KeyEvent).
    pub async fn key(&self, keysym: u32, down: bool) {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.writer.lock().await.write_all(&m).await.unwrap();
    }

    /// Types `text`, which must need no Shift (lower case, digits, `-/. `),
    /// each character pressed and released; `\n` is Return.
    pub async fn type_unshifted(&self, text: &str) {
        for c in text.chars() {
            assert!(
                c == '\n' || c.is_ascii_lowercase() || c.is_ascii_digit() || "-/. ".contains(c),
                "{c:?} needs Shift"
            );
            let keysym = if c == '\n' { 0xff0d } else { u32::from(c) };
            self.key(keysym, true).await;
            self.key(keysym, false).await;
        }
    }

    pub fn updates(&self) -> usize {
        self.seen.lock().unwrap().updates.len()
    }

    /// Panics if the viewer's connection ended.
    pub fn assert_open(&self) {
        let s = self.seen.lock().unwrap();
        assert!(
            s.ended.is_none(),
            "the viewer's connection ended: {:?}",
            s.ended
        );
    }

    /// Waits until the viewer's screen equals `want()` (asked again after
    /// each update: the hypervisor's screen may still be changing),
    /// within `wait`; the image matched.
    pub async fn wait_screen<F, Fut>(&self, wait: Duration, mut want: F) -> Image
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Image>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let target = want().await;
            let (got, ended) = {
                let s = self.seen.lock().unwrap();
                (s.screen.clone(), s.ended.clone())
            };
            assert!(ended.is_none(), "the viewer's connection ended: {ended:?}");
            if got == target {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the viewer's screen never matched: {} of {} pixels differ",
                got.differing(&target),
                target.width * target.height
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn handshake(r: &mut OwnedReadHalf, w: &mut OwnedWriteHalf) -> (usize, usize) {
    let mut version = [0; 12];
    r.read_exact(&mut version).await.unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    w.write_all(b"RFB 003.008\n").await.unwrap();
    let n = r.read_u8().await.unwrap();
    let mut types = vec![0; usize::from(n)];
    r.read_exact(&mut types).await.unwrap();
    assert!(types.contains(&1), "security None offered: {types:?}");
    w.write_all(&[1]).await.unwrap();
    assert_eq!(r.read_u32().await.unwrap(), 0, "security result");
    w.write_all(&[1]).await.unwrap();
    let mut init = [0; 24];
    r.read_exact(&mut init).await.unwrap();
    let (width, height) = (
        usize::from(u16::from_be_bytes([init[0], init[1]])),
        usize::from(u16::from_be_bytes([init[2], init[3]])),
    );
    let name = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
    let mut skip = vec![0; name as usize];
    r.read_exact(&mut skip).await.unwrap();
    // 32 bits, depth 24, little-endian, true colour, 8 bits each, red at 16.
    let mut m = vec![
        0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ];
    m.extend_from_slice(&[2, 0]);
    m.extend_from_slice(&(ASKED.len() as u16).to_be_bytes());
    for e in ASKED {
        m.extend_from_slice(&e.to_be_bytes());
    }
    m.extend_from_slice(&request(false, width, height));
    w.write_all(&m).await.unwrap();
    (width, height)
}

fn request(incremental: bool, width: usize, height: usize) -> Vec<u8> {
    let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
    m.extend_from_slice(&(width as u16).to_be_bytes());
    m.extend_from_slice(&(height as u16).to_be_bytes());
    m
}

async fn read_updates(
    r: &mut OwnedReadHalf,
    w: &tokio::sync::Mutex<OwnedWriteHalf>,
    seen: &Mutex<Seen>,
) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let mut zlib: [flate2::Decompress; 4] = std::array::from_fn(|_| flate2::Decompress::new(true));
    loop {
        let ty = match r.read_u8().await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        match ty {
            0 => {
                let _pad = r.read_u8().await.map_err(io)?;
                let n = r.read_u16().await.map_err(io)?;
                for _ in 0..n {
                    let mut h = [0; 12];
                    r.read_exact(&mut h).await.map_err(io)?;
                    let f = |i: usize| usize::from(u16::from_be_bytes([h[i], h[i + 1]]));
                    let (x, y, rw, rh) = (f(0), f(2), f(4), f(6));
                    let enc = i32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                    seen.lock().unwrap().encodings.insert(enc);
                    match enc {
                        0 => {
                            let mut px = vec![0; rw * rh * 4];
                            r.read_exact(&mut px).await.map_err(io)?;
                            let mut s = seen.lock().unwrap();
                            for j in 0..rh {
                                for i in 0..rw {
                                    put(&mut s.screen, x + i, y + j, &px[(j * rw + i) * 4..]);
                                }
                            }
                        }
                        5 => hextile(r, seen, x, y, rw, rh).await?,
                        7 => tight(r, &mut zlib, seen, (x, y, rw, rh)).await?,
                        -223 => {
                            let mut s = seen.lock().unwrap();
                            s.screen = Image {
                                width: rw,
                                height: rh,
                                rgb: vec![0; rw * rh * 3],
                            };
                        }
                        e => {
                            return Err(format!("rectangle encoding {e} the viewer cannot decode"))
                        }
                    }
                }
                let (width, height) = {
                    let mut s = seen.lock().unwrap();
                    s.updates.push(Instant::now());
                    s.wall.push(std::time::SystemTime::now());
                    (s.screen.width, s.screen.height)
                };
                w.lock()
                    .await
                    .write_all(&request(true, width, height))
                    .await
                    .map_err(io)?;
            }
            2 => {}
            3 => {
                let mut h = [0; 7];
                r.read_exact(&mut h).await.map_err(io)?;
                let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as i32;
                let mut text = vec![0; len.unsigned_abs() as usize];
                r.read_exact(&mut text).await.map_err(io)?;
            }
            t => return Err(format!("server message type {t} the viewer does not know")),
        }
    }
}

/// A Tight rectangle (rfbproto), in 3-byte pixels (red, green, blue).
async fn tight(
    r: &mut OwnedReadHalf,
    zlib: &mut [flate2::Decompress; 4],
    seen: &Mutex<Seen>,
    (x, y, w, h): (usize, usize, usize, usize),
) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let cc = r.read_u8().await.map_err(io)?;
    for (i, z) in zlib.iter_mut().enumerate() {
        if cc & (1 << i) != 0 {
            *z = flate2::Decompress::new(true);
        }
    }
    let mut pixels = vec![[0u8; 3]; w * h];
    match cc >> 4 {
        8 => {
            let mut c = [0; 3];
            r.read_exact(&mut c).await.map_err(io)?;
            pixels.fill(c);
        }
        k if k & 8 == 0 => {
            let filter = if k & 4 != 0 {
                r.read_u8().await.map_err(io)?
            } else {
                0
            };
            let mut palette = Vec::new();
            let raw = match filter {
                0 | 2 => w * h * 3,
                1 => {
                    let n = usize::from(r.read_u8().await.map_err(io)?) + 1;
                    palette = vec![0; n * 3];
                    r.read_exact(&mut palette).await.map_err(io)?;
                    if n <= 2 {
                        w.div_ceil(8) * h
                    } else {
                        w * h
                    }
                }
                f => return Err(format!("Tight filter {f}")),
            };
            let mut data = vec![0; raw];
            if raw < 12 {
                r.read_exact(&mut data).await.map_err(io)?;
            } else {
                let mut len = 0;
                for i in 0..3 {
                    let b = usize::from(r.read_u8().await.map_err(io)?);
                    len |= if i == 2 { b } else { b & 0x7f } << (7 * i);
                    if i == 2 || b & 0x80 == 0 {
                        break;
                    }
                }
                let mut z = vec![0; len];
                r.read_exact(&mut z).await.map_err(io)?;
                let d = &mut zlib[usize::from(k & 3)];
                let before = d.total_out();
                d.decompress(&z, &mut data, flate2::FlushDecompress::Sync)
                    .map_err(|e| format!("Tight zlib stream {}: {e}", k & 3))?;
                if d.total_out() - before != raw as u64 {
                    return Err(format!(
                        "Tight zlib stream {} gave {} of {raw} bytes",
                        k & 3,
                        d.total_out() - before
                    ));
                }
            }
            match filter {
                1 if palette.len() <= 6 => {
                    for (i, p) in pixels.iter_mut().enumerate() {
                        let (px, py) = (i % w, i / w);
                        let bit = data[py * w.div_ceil(8) + px / 8] >> (7 - px % 8) & 1;
                        let at = usize::from(bit) * 3;
                        p.copy_from_slice(palette.get(at..at + 3).ok_or("palette index")?);
                    }
                }
                1 => {
                    for (p, &c) in pixels.iter_mut().zip(&data) {
                        let at = usize::from(c) * 3;
                        p.copy_from_slice(palette.get(at..at + 3).ok_or("palette index")?);
                    }
                }
                2 => {
                    // Each channel is sent as its difference from left +
                    // above − above-left, clamped.
                    for i in 0..w * h {
                        let (px, py) = (i % w, i / w);
                        for c in 0..3 {
                            let v = |xx: usize, yy: usize| i32::from(pixels[yy * w + xx][c]);
                            let left = if px > 0 { v(px - 1, py) } else { 0 };
                            let up = if py > 0 { v(px, py - 1) } else { 0 };
                            let corner = if px > 0 && py > 0 {
                                v(px - 1, py - 1)
                            } else {
                                0
                            };
                            let predicted = (left + up - corner).clamp(0, 255) as u8;
                            pixels[i][c] = data[i * 3 + c].wrapping_add(predicted);
                        }
                    }
                }
                _ => {
                    for (p, c) in pixels.iter_mut().zip(data.chunks(3)) {
                        p.copy_from_slice(c);
                    }
                }
            }
        }
        _ => {
            return Err(format!(
                "Tight compression {cc:#04x} the viewer cannot decode"
            ))
        }
    }
    let mut s = seen.lock().unwrap();
    for (i, [red, green, blue]) in pixels.into_iter().enumerate() {
        put(&mut s.screen, x + i % w, y + i / w, &[blue, green, red]);
    }
    Ok(())
}

/// Sets one pixel from 4 little-endian bytes (blue, green, red, unused).
fn put(img: &mut Image, x: usize, y: usize, px: &[u8]) {
    if x < img.width && y < img.height {
        let at = (y * img.width + x) * 3;
        img.rgb[at..at + 3].copy_from_slice(&[px[2], px[1], px[0]]);
    }
}

async fn hextile(
    r: &mut OwnedReadHalf,
    seen: &Mutex<Seen>,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let (mut bg, mut fg) = ([0u8; 4], [0u8; 4]);
    for ty in (0..h).step_by(16) {
        for tx in (0..w).step_by(16) {
            let (tw, th) = ((w - tx).min(16), (h - ty).min(16));
            let sub = r.read_u8().await.map_err(io)?;
            let mut tile = vec![[0u8; 4]; tw * th];
            if sub & 1 != 0 {
                let mut px = vec![0; tw * th * 4];
                r.read_exact(&mut px).await.map_err(io)?;
                for (t, p) in tile.iter_mut().zip(px.chunks(4)) {
                    t.copy_from_slice(p);
                }
            } else {
                if sub & 2 != 0 {
                    r.read_exact(&mut bg).await.map_err(io)?;
                }
                if sub & 4 != 0 {
                    r.read_exact(&mut fg).await.map_err(io)?;
                }
                tile.fill(bg);
                if sub & 8 != 0 {
                    let n = r.read_u8().await.map_err(io)?;
                    for _ in 0..n {
                        let mut colour = fg;
                        if sub & 16 != 0 {
                            r.read_exact(&mut colour).await.map_err(io)?;
                        }
                        let (xy, wh) = (
                            r.read_u8().await.map_err(io)?,
                            r.read_u8().await.map_err(io)?,
                        );
                        let (sx, sy) = (usize::from(xy >> 4), usize::from(xy & 15));
                        let (sw, sh) = (usize::from(wh >> 4) + 1, usize::from(wh & 15) + 1);
                        for j in sy..(sy + sh).min(th) {
                            for i in sx..(sx + sw).min(tw) {
                                tile[j * tw + i] = colour;
                            }
                        }
                    }
                }
            }
            let mut s = seen.lock().unwrap();
            for j in 0..th {
                for i in 0..tw {
                    put(&mut s.screen, x + tx + i, y + ty + j, &tile[j * tw + i]);
                }
            }
        }
    }
    Ok(())
}

/// The screen page in headless Chromium, kept open while the test acts
/// (tests/browser/migrate.mjs): it grabs the canvas when asked and counts
/// the WebSocket closes the browser saw.
pub struct Page {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    out: PathBuf,
}

impl Page {
    pub async fn open(url: &str, out: &Path) -> Page {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        if !dir.join("node_modules/playwright-core").exists() {
            let ok = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "npm ci in {} failed (see scripts/deps.d/vnc.sh)",
                dir.display()
            );
        }
        std::fs::create_dir_all(out).unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("migrate.mjs"))
            .env("VMGATE_URL", url)
            .env("VMGATE_OUT", out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("running node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let mut page = Page {
            child,
            stdin,
            lines,
            out: out.to_path_buf(),
        };
        let ready = page.answer().await;
        assert_eq!(ready["ready"], true, "browser: {ready:#}");
        page
    }

    async fn answer(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the browser script answered")
            .unwrap()
            .expect("the browser script is still running");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("error").is_none(), "browser: {v:#}");
        v
    }

    async fn ask(&mut self, what: &str) -> serde_json::Value {
        self.stdin
            .write_all(format!("{what}\n").as_bytes())
            .await
            .unwrap();
        self.answer().await
    }

    /// The canvas, once stable; the script's report with it.
    pub async fn grab(&mut self) -> (Image, serde_json::Value) {
        let r = self.ask("grab").await;
        let (w, h) = (
            r["width"].as_u64().unwrap() as usize,
            r["height"].as_u64().unwrap() as usize,
        );
        let rgba = std::fs::read(self.out.join("canvas.rgba")).unwrap();
        assert_eq!(rgba.len(), w * h * 4, "{r}");
        let rgb = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        (
            Image {
                width: w,
                height: h,
                rgb,
            },
            r,
        )
    }

    /// Waits until the canvas equals `want()` within `wait`, the page's
    /// screen connected all along.
    pub async fn wait_screen<F, Fut>(&mut self, wait: Duration, mut want: F) -> Image
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Image>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let target = want().await;
            let (got, r) = self.grab().await;
            assert_eq!(r["status"], "connected", "{r}");
            assert_eq!(r["closes"], 0, "the page saw a WebSocket close: {r}");
            if got == target {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page's canvas never matched: {} of {} pixels differ",
                got.differing(&target),
                target.width * target.height
            );
        }
    }

    /// Ends the browser: what it saw (`closes`, `statuses`, `console`).
    pub async fn quit(mut self) -> serde_json::Value {
        let r = self.ask("quit").await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        r
    }

    /// Quits, asserting the page saw no WebSocket close and, once
    /// connected, no status but "connected"; what the page reported.
    pub async fn quit_having_stayed_connected(self) -> serde_json::Value {
        let seen = self.quit().await;
        assert_eq!(seen["closes"], 0, "{seen:#}");
        let statuses: Vec<&str> = seen["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let from = statuses.iter().position(|s| *s == "connected").unwrap();
        assert_eq!(statuses[from..], ["connected"], "{seen:#}");
        seen
    }
}
