//! `vmgate audio GUEST --out FILE.wav|- [--seconds N]`: records a guest's
//! sound from its `audio` channel (docs/audio.md) as a WAV file, or streams
//! it as WAV to stdout for `aplay`, `ffmpeg` or `sox`.
//!
//! The recording follows the wall clock from the moment the stream starts:
//! a silent guest sends nothing at all, so silence is written for the time
//! between its sounds, and for PCM the agent reports dropped. With
//! `--seconds N` the WAV is exactly N seconds long.
//!
//! The WAV header is hound's. A file gets the real lengths when the
//! recording ends; stdout cannot be rewound, so its header carries the
//! lengths of `--seconds` if given, else the largest ones (the convention
//! for a WAV stream, which the tools above read until it ends).

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;
use vmgate_client::audio::{AudioClient, AudioItem};
use vmgate_client::url;
use vmgate_ticket::Mode;
use vmgate_wire::audio::AudioHeader;
use vmgate_wire::CloseCode;

use crate::state::{self, State};
use crate::terminal::printable;
use crate::tickets::{self, TicketRequest};

/// QEMU's S16 sample format: what `vmgate audio` asks for.
const S16: u8 = 3;

/// `vmgate audio GUEST`.
#[derive(clap::Args, Debug)]
#[command(after_help = vmgate_wire::EXIT_STATUS)]
pub struct AudioArgs {
    /// The guest.
    pub guest: String,
    /// Where to write the WAV: a file, or `-` for stdout.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many seconds; the WAV is then exactly this long.
    /// Default: until Ctrl+C, or until the session ends.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub seconds: Option<u32>,
    /// Frames per second to ask for (QEMU resamples), 1 to 48000.
    #[arg(long, default_value_t = 44_100, value_parser = clap::value_parser!(u32).range(1..=48_000))]
    pub rate: u32,
    /// One channel instead of two.
    #[arg(long)]
    pub mono: bool,
    /// A ticket URL to use instead of minting one (it must name `audio`).
    #[arg(long)]
    pub url: Option<String>,
    /// CA certificate to trust for the gateway (default: the state dir's).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Where the signing key, CA and gateway address are.
    #[arg(long, env = "VMGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Runs `vmgate audio`; returns the exit status.
pub async fn run(a: AudioArgs) -> Result<i32> {
    let state = State::new(state::resolve(a.state_dir.clone()));
    let ca = a.ca.clone().unwrap_or_else(|| state.public_ca());
    let ws_url = match &a.url {
        Some(u) => url::ws_url_from(u, Some("audio"))?,
        None => {
            // Listening is not input: a read-only ticket.
            tickets::mint(
                &state,
                &TicketRequest {
                    guest: a.guest.clone(),
                    channels: vec!["audio".into()],
                    mode: Mode::ReadOnly,
                    ttl: Duration::from_secs(60),
                    max_session: None,
                },
            )?
            .ws_url
        }
    };
    let want = AudioHeader {
        sample: S16,
        channels: if a.mono { 1 } else { 2 },
        rate: a.rate,
    };
    let ws = crate::client::connect(&ws_url, &ca).await?;
    let mut audio = AudioClient::start(ws, want)
        .await
        .map_err(|c| anyhow::anyhow!("{}", printable(&c.to_string())))?;
    let limit = a.seconds.map(|s| u64::from(s) * u64::from(a.rate));
    let mut rec: Option<Recording> = None;
    let mut deadline = None;
    let status = loop {
        let items = tokio::select! {
            items = audio.next() => items,
            _ = tokio::signal::ctrl_c() => break 0,
            _ = sleep_until(deadline) => break 0,
        };
        let items = match items {
            Ok(items) => items,
            Err(close) if close.code == CloseCode::Normal => break 0,
            Err(close) => {
                eprintln!(
                    "[vmgate] audio of {}: {}",
                    a.guest,
                    printable(&close.to_string())
                );
                break close.code.exit_status();
            }
        };
        for item in items {
            match (item, &mut rec) {
                (AudioItem::Header(h), None) => {
                    if h != want {
                        bail!("the agent sent {h:?}, not the {want:?} asked for");
                    }
                    rec = Some(Recording::start(&a.out, h, limit).await?);
                    deadline = a
                        .seconds
                        .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
                    eprintln!(
                        "[vmgate] recording the sound of {} to {} (16-bit, {} Hz, {} channel{}){}",
                        a.guest,
                        a.out.display(),
                        h.rate,
                        h.channels,
                        if h.channels == 1 { "" } else { "s" },
                        match a.seconds {
                            Some(s) => format!(" for {s} s"),
                            None => "; Ctrl+C stops".into(),
                        }
                    );
                }
                (_, None) => bail!("the audio stream did not start with its header"),
                (AudioItem::Header(_), Some(_)) => bail!("the audio stream sent a second header"),
                (AudioItem::Begin, Some(r)) => r.silence_until(r.now()).await?,
                (AudioItem::End, Some(_)) => {}
                (AudioItem::Pcm(p), Some(r)) => r.pcm(&p).await?,
                (AudioItem::Dropped(n), Some(r)) => {
                    r.dropped += u64::from(n);
                    let frames = u64::from(n) / r.frame_bytes;
                    r.silence_until(r.written + frames).await?;
                }
            }
            if rec.as_ref().is_some_and(Recording::full) {
                break;
            }
        }
        if rec.as_ref().is_some_and(Recording::full) {
            break 0;
        }
    };
    audio.close().await;
    match rec {
        Some(r) => {
            let summary = r.finish().await?;
            eprintln!("[vmgate] {summary}");
        }
        None => eprintln!("[vmgate] nothing recorded"),
    }
    Ok(status)
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Where the samples go.
enum Sink {
    /// A file: hound writes the header and, at the end, its lengths.
    File(hound::WavWriter<BufWriter<std::fs::File>>),
    /// stdout, after a header written once.
    Stream(tokio::io::Stdout),
}

/// A WAV being written along the wall clock.
struct Recording {
    sink: Sink,
    rate: u32,
    channels: u16,
    /// Bytes per frame (2 per channel).
    frame_bytes: u64,
    /// When the stream started: frame 0.
    start: Instant,
    /// Frames written so far.
    written: u64,
    /// The most frames to write (`--seconds`).
    limit: Option<u64>,
    /// The bytes of a frame cut by a message boundary.
    partial: Vec<u8>,
    /// Frames of sound (not silence) written, and PCM bytes dropped.
    sound: u64,
    dropped: u64,
    what: String,
}

impl Recording {
    async fn start(out: &std::path::Path, h: AudioHeader, limit: Option<u64>) -> Result<Recording> {
        let spec = hound::WavSpec {
            channels: u16::from(h.channels),
            sample_rate: h.rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let frame_bytes = 2 * u64::from(h.channels);
        let sink = if out.as_os_str() == "-" {
            let mut stdout = tokio::io::stdout();
            stdout
                .write_all(&stream_header(spec, limit.map(|f| f * frame_bytes))?)
                .await
                .context("writing to stdout")?;
            Sink::Stream(stdout)
        } else {
            Sink::File(
                hound::WavWriter::create(out, spec)
                    .with_context(|| format!("creating {}", out.display()))?,
            )
        };
        Ok(Recording {
            sink,
            rate: h.rate,
            channels: u16::from(h.channels),
            frame_bytes,
            start: Instant::now(),
            written: 0,
            limit,
            partial: Vec::new(),
            sound: 0,
            dropped: 0,
            what: out.display().to_string(),
        })
    }

    /// The frame the wall clock is at.
    fn now(&self) -> u64 {
        (self.start.elapsed().as_secs_f64() * f64::from(self.rate)) as u64
    }

    fn full(&self) -> bool {
        self.limit.is_some_and(|l| self.written >= l)
    }

    /// How many of `frames` more fit under the limit.
    fn room(&self, frames: u64) -> u64 {
        match self.limit {
            Some(l) => frames.min(l.saturating_sub(self.written)),
            None => frames,
        }
    }

    /// Writes whole frames of little-endian samples.
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.sink {
            Sink::File(w) => {
                for s in bytes.chunks_exact(2) {
                    w.write_sample(i16::from_le_bytes([s[0], s[1]]))?;
                }
            }
            Sink::Stream(out) => out.write_all(bytes).await.context("writing to stdout")?,
        }
        self.written += bytes.len() as u64 / self.frame_bytes;
        Ok(())
    }

    /// Silence up to frame `frame`, if the recording is not there yet.
    async fn silence_until(&mut self, frame: u64) -> Result<()> {
        let missing = self.room(frame.saturating_sub(self.written));
        let zeros = vec![0u8; 4096 * self.frame_bytes as usize];
        let mut left = missing * self.frame_bytes;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.write(&zeros[..n]).await?;
            left -= n as u64;
        }
        Ok(())
    }

    async fn pcm(&mut self, pcm: &[u8]) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(pcm);
        let fb = self.frame_bytes as usize;
        let whole = bytes.len() / fb * fb;
        self.partial = bytes[whole..].to_vec();
        let frames = self.room((whole / fb) as u64);
        self.sound += frames;
        self.write(&bytes[..frames as usize * fb]).await
    }

    /// Pads to the limit (or to now), writes the lengths; a summary line.
    async fn finish(mut self) -> Result<String> {
        let end = self.limit.unwrap_or_else(|| self.now());
        self.silence_until(end).await?;
        match self.sink {
            Sink::File(w) => w
                .finalize()
                .with_context(|| format!("finishing {}", self.what))?,
            Sink::Stream(mut out) => {
                // The reader may have gone: there is nothing left to tell it.
                let _ = out.flush().await;
            }
        }
        let secs = |frames: u64| frames as f64 / f64::from(self.rate);
        Ok(format!(
            "wrote {:.2} s to {} ({} channel{}, {:.2} s of sound{})",
            secs(self.written),
            self.what,
            self.channels,
            if self.channels == 1 { "" } else { "s" },
            secs(self.sound),
            if self.dropped > 0 {
                format!(", {} bytes dropped on the way", self.dropped)
            } else {
                String::new()
            }
        ))
    }
}

/// hound's header for a stream of `data` bytes (unknown: the largest).
fn stream_header(spec: hound::WavSpec, data: Option<u64>) -> Result<Vec<u8>> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    hound::WavWriter::new(&mut cursor, spec)?.finalize()?;
    let mut h = cursor.into_inner();
    // hound wrote the lengths of an empty file; a stream cannot go back to
    // fix them, so they are set now: the data chunk's, and RIFF's (the
    // whole file but its first 8 bytes).
    let at = h
        .windows(4)
        .rposition(|w| w == b"data")
        .context("hound's WAV header has a data chunk")?;
    let data = data.and_then(|d| u32::try_from(d).ok()).unwrap_or(u32::MAX);
    let riff = u32::try_from(h.len() - 8)
        .ok()
        .and_then(|n| n.checked_add(data))
        .unwrap_or(u32::MAX);
    h[at + 4..at + 8].copy_from_slice(&data.to_le_bytes());
    h[4..8].copy_from_slice(&riff.to_le_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> hound::WavSpec {
        hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        }
    }

    #[test]
    fn a_stream_header_reads_back_with_hound_and_its_lengths() {
        // With --seconds 2: exactly 2 s of data follow.
        let data = 2 * 44_100 * 4;
        let mut wav = stream_header(spec(), Some(data)).unwrap();
        wav.extend(std::iter::repeat_n(0u8, data as usize));
        let r = hound::WavReader::new(std::io::Cursor::new(&wav)).unwrap();
        assert_eq!(r.spec(), spec());
        assert_eq!(r.duration(), 2 * 44_100);
        // Unbounded: the largest lengths, as streams carry them.
        let h = stream_header(spec(), None).unwrap();
        let at = h.windows(4).rposition(|w| w == b"data").unwrap();
        assert_eq!(&h[at + 4..at + 8], &u32::MAX.to_le_bytes());
        assert_eq!(&h[4..8], &u32::MAX.to_le_bytes());
    }
}
