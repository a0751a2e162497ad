//! The real VNC workload: keystroke to screen through the test guest's
//! VNC. The test guest (crates/testkit) runs a shell on its VGA console;
//! a small RFB client sends a key (`x`, then BackSpace, in turn) and the
//! clock runs until the whole FramebufferUpdate that shows it has arrived.
//! Measured through vmgate split (the agent reaching QEMU's VNC unix
//! socket) and through websockify pointed at the same socket, in
//! interleaved rounds, over the same TLS WebSocket client.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, Ws};
use crate::stats::{self, Latency};

/// The guest's name in the split agent's configuration.
pub const GUEST: &str = "benchvm";
/// How long any one step may take (an update after a key, a handshake
/// message) before the measurement fails.
const STEP: Duration = Duration::from_secs(10);
/// The screen counts as quiet after this long without an update.
const QUIET: Duration = Duration::from_millis(60);
/// Most updates drained while waiting for the screen to be quiet.
const MOST_SETTLE_UPDATES: usize = 50;
/// The largest framebuffer the client accepts (bytes of one full update).
const MAX_SCREEN: usize = 64 << 20;
const KEY_X: u32 = 0x78;
const KEY_BACKSPACE: u32 = 0xff08;

/// The booted test guest and what reaches its VNC socket.
pub struct Guest {
    pub vnc_socket: std::path::PathBuf,
    _guest: vmgate_testkit::Guest,
}

/// Builds (or reuses the cached) test guest image and boots it under
/// `work`, waiting for its shell.
pub async fn boot(work: &Path) -> Result<Guest> {
    let run_dir = work.join("guest");
    tokio::task::spawn_blocking(move || {
        let image = vmgate_testkit::build_image(&vmgate_testkit::default_cache_dir())
            .context("building the test guest image")?;
        let mut opts = vmgate_testkit::BootOptions::new(GUEST, &run_dir);
        opts.channels.clear();
        let guest = vmgate_testkit::Guest::boot(&image, &opts).context("booting the test guest")?;
        guest
            .serial_ready(Duration::from_secs(120))
            .context("the test guest's shell")?;
        Ok(Guest {
            vnc_socket: guest.vnc_socket.clone(),
            _guest: guest,
        })
    })
    .await?
}

/// A websockify in front of the guest's VNC socket; returns it and its port.
pub async fn websockify(
    exe: &Path,
    cert: &Path,
    key: &Path,
    vnc: &Path,
    log: &Path,
) -> Result<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(exe)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--unix-target")
        .arg(vnc)
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log)?)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting websockify for VNC")?;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((child, port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("websockify for VNC does not listen after 10 s")
}

/// An RFB viewer over a WebSocket: just enough to type and to read whole
/// updates.
pub struct Viewer {
    ws: Ws,
    /// Bytes received and not yet parsed.
    buf: BytesMut,
    /// Bytes per pixel of the server's pixel format.
    bpp: usize,
}

impl Viewer {
    /// Connects to `path` on `port` and does the RFB handshake (security
    /// None, shared), then reads one full update.
    pub async fn connect(client: &Client, port: u16, path: &str) -> Result<Viewer> {
        let ws = client.connect(port, path, false).await?;
        let mut v = Viewer {
            ws,
            buf: BytesMut::new(),
            bpp: 4,
        };
        let version = v.take(12).await?;
        ensure!(
            version.starts_with(b"RFB 003."),
            "not an RFB server: {version:?}"
        );
        v.send(b"RFB 003.008\n").await?;
        let n = v.take(1).await?[0] as usize;
        ensure!(n > 0, "the server refused the connection");
        let types = v.take(n).await?;
        ensure!(types.contains(&1), "no security type None: {types:?}");
        v.send(&[1]).await?;
        ensure!(v.take(4).await?[..] == [0, 0, 0, 0], "security refused");
        v.send(&[1]).await?; // ClientInit: shared
        let init = v.take(24).await?;
        let bits = init[4] as usize;
        ensure!(matches!(bits, 8 | 16 | 32), "{bits} bits per pixel");
        v.bpp = bits / 8;
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        ensure!(name_len < 4096, "desktop name of {name_len} bytes");
        v.take(name_len).await?;
        // Raw encoding only: every update is its pixels, nothing to decode.
        v.send(&[2, 0, 0, 1, 0, 0, 0, 0]).await?;
        v.request(false).await?;
        v.update(STEP).await?.context("no first update")?;
        Ok(v)
    }

    async fn send(&mut self, b: &[u8]) -> Result<()> {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(b)))
            .await?;
        Ok(())
    }

    /// Waits for more bytes at most `wait`; false if none came.
    async fn fill(&mut self, wait: Duration) -> Result<bool> {
        loop {
            let next = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Ok(false),
                Ok(n) => n,
            };
            match next {
                Some(Ok(Message::Binary(b))) => {
                    self.buf.extend_from_slice(&b);
                    return Ok(true);
                }
                Some(Ok(Message::Close(c))) => bail!("the server closed the session: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the connection ended"),
            }
        }
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> Result<Bytes> {
        while self.buf.len() < n {
            ensure!(
                self.fill(STEP).await?,
                "nothing from the server in {STEP:?}"
            );
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Skips `n` bytes without keeping them.
    async fn skip(&mut self, mut n: usize) -> Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                ensure!(
                    self.fill(STEP).await?,
                    "nothing from the server in {STEP:?}"
                );
            }
            let k = n.min(self.buf.len());
            self.buf.advance(k);
            n -= k;
        }
        Ok(())
    }

    /// Asks for an update of the whole screen.
    async fn request(&mut self, incremental: bool) -> Result<()> {
        self.send(&[3, incremental as u8, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
            .await
    }

    /// Reads server messages until a whole FramebufferUpdate has arrived;
    /// `None` if no message starts within `wait`.
    async fn update(&mut self, wait: Duration) -> Result<Option<()>> {
        loop {
            if self.buf.is_empty() && !self.fill(wait).await? {
                return Ok(None);
            }
            let kind = self.take(1).await?[0];
            match kind {
                0 => {
                    let h = self.take(3).await?;
                    let rects = u16::from_be_bytes([h[1], h[2]]);
                    for _ in 0..rects {
                        let r = self.take(12).await?;
                        let (w, hgt) = (
                            u16::from_be_bytes([r[4], r[5]]) as usize,
                            u16::from_be_bytes([r[6], r[7]]) as usize,
                        );
                        let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                        ensure!(enc == 0, "encoding {enc} not asked for");
                        let bytes = w * hgt * self.bpp;
                        ensure!(bytes <= MAX_SCREEN, "a rectangle of {bytes} bytes");
                        self.skip(bytes).await?;
                    }
                    return Ok(Some(()));
                }
                // Bell.
                2 => {}
                // ServerCutText.
                3 => {
                    let h = self.take(7).await?;
                    let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
                    ensure!(len <= MAX_SCREEN, "cut text of {len} bytes");
                    self.skip(len).await?;
                }
                k => bail!("server message type {k} not asked for"),
            }
        }
    }

    /// Drains updates until the screen has been quiet for [`QUIET`], with
    /// an incremental update request left outstanding.
    async fn settle(&mut self) -> Result<()> {
        for _ in 0..MOST_SETTLE_UPDATES {
            self.request(true).await?;
            if self.update(QUIET).await?.is_none() {
                return Ok(());
            }
        }
        bail!("the screen never went quiet ({MOST_SETTLE_UPDATES} updates)")
    }

    /// Sends one key (press and release) on a quiet screen and times the
    /// update that shows it.
    pub async fn keystroke(&mut self, keysym: u32) -> Result<Duration> {
        self.settle().await?;
        let mut m = Vec::with_capacity(16);
        for down in [1u8, 0] {
            m.extend_from_slice(&[4, down, 0, 0]);
            m.extend_from_slice(&keysym.to_be_bytes());
        }
        let t = Instant::now();
        self.send(&m).await?;
        self.update(STEP)
            .await?
            .with_context(|| format!("no update within {STEP:?} of a key"))?;
        Ok(t.elapsed())
    }
}

/// `keys` keystrokes per viewer (`x` then BackSpace, so the shell's line
/// stays empty), in `rounds` rounds that visit each viewer in turn.
pub async fn key_to_screen(
    viewers: &mut [(&'static str, Viewer)],
    keys: usize,
    rounds: usize,
    windows: usize,
) -> Vec<(&'static str, Result<Latency>)> {
    let rounds = rounds.max(1);
    let windows = windows.clamp(1, rounds);
    // An even number per round, so every round ends on BackSpace.
    let per_round = (keys.div_ceil(rounds) + 1) & !1;
    let mut series: Vec<Result<Vec<Vec<Duration>>>> =
        viewers.iter().map(|_| Ok(Vec::new())).collect();
    for round in 0..rounds {
        let window = round * windows / rounds;
        for ((_, v), s) in viewers.iter_mut().zip(series.iter_mut()) {
            let Ok(w) = s else { continue };
            if w.len() <= window {
                w.push(Vec::new());
            }
            for i in 0..per_round {
                let taken: usize = w.iter().map(Vec::len).sum();
                if taken >= keys {
                    break;
                }
                let key = if i % 2 == 0 { KEY_X } else { KEY_BACKSPACE };
                match v.keystroke(key).await {
                    Ok(d) => w[window].push(d),
                    Err(e) => {
                        *s = Err(e);
                        break;
                    }
                }
            }
        }
    }
    viewers
        .iter()
        .zip(series)
        .map(|((name, _), s)| {
            (
                *name,
                s.and_then(|w| stats::latency_windows(&w).context("no samples")),
            )
        })
        .collect()
}
