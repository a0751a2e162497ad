//! The `audio` channel: a guest's sound from a VNC connection of the
//! agent's own, as PCM framed by [`vmgate_wire::audio`] (docs/audio.md).
//!
//! Each session gets a fresh VNC client connection to QEMU (the backend's
//! `open_vnc`, as for a screen session). On it the agent sends the RFB
//! handshake, SetEncodings with QEMU's audio pseudo-encoding (−259) alone,
//! the format the client asked for and *enable* (or, while the client has
//! paused, *disable*), and never asks for a framebuffer update, so QEMU
//! sends nothing on it but audio. The server's
//! bytes go through [`vmgate_rfb::ServerParser`]; begin, end and PCM become
//! records for the client.
//!
//! Bounded, and never in the screen's way: the agent reads QEMU as fast as
//! QEMU writes, and hands records to the session's relay through a queue of
//! at most [`QUEUE_BYTES`] (about 1.5 s of 44.1 kHz stereo; QEMU sends a
//! small message every 10 ms or so, so the bound is in bytes, not
//! records). When a listener falls behind and the queue is full, PCM is
//! dropped, counted,
//! and the listener told how much with a `dropped` record once there is
//! room again (begin/end changes missed meanwhile are sent then too). The
//! screen's own VNC connections are other sockets, which this one never
//! slows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use vmgate_relay::{FrameRx, FrameTx};
use vmgate_rfb::audio::{control_message, set_encodings_message, OP_DISABLE, OP_ENABLE};
use vmgate_rfb::{AudioFormat, ServerEvent, ServerParser, AUDIO_ENCODING};
use vmgate_wire::audio::{
    begin_record, dropped_record, end_record, put_pcm_record, AudioHeader, AUDIO_HEADER_LEN, PAUSE,
    RESUME,
};
use vmgate_wire::{Close, CloseCode, Frame};

use crate::duplex::Duplex;

/// Bytes of records waiting for the relay, at most: about 1.5 s of S16
/// stereo at 44.1 kHz, so a listener's hiccup loses nothing.
pub const QUEUE_BYTES: usize = 256 * 1024;
/// Records waiting, at most (a second bound; bytes come first).
const QUEUE_RECORDS: usize = 1024;
/// The most bytes read from QEMU at once, and so the largest PCM record:
/// about 90 ms of stereo S16 at 44.1 kHz.
pub const READ_CHUNK: usize = 16 * 1024;
/// Room for a dropped record and a begin/end, the reports a listener that
/// fell behind gets.
const REPORTS: usize = 5 + 1;
/// How long the client has to send its format request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long QEMU has to acknowledge the audio pseudo-encoding.
const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// How long the agent waits to hand the client a final Close.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// The records going to the client (the relay's guest side, receiving).
pub struct AudioRx {
    records: mpsc::Receiver<Frame>,
    queued: Arc<Queued>,
}

/// The bytes in the queue, shared by both ends.
#[derive(Default)]
struct Queued {
    bytes: AtomicUsize,
    /// Signalled when the relay took a record: there may be room again.
    room: Notify,
}

/// The client's bytes (the relay's guest side, sending): the format
/// request, then pause/resume commands, which the agent turns into QEMU's
/// disable/enable. Nothing the client sends reaches QEMU as it is.
pub struct AudioTx {
    request: Option<mpsc::Sender<Bytes>>,
}

/// Starts serving the audio of a fresh VNC connection `vnc`; `what` names
/// it in messages ("audio of demo").
pub fn start(vnc: Box<dyn Duplex>, what: String, session: u64) -> (AudioRx, AudioTx) {
    let (records_tx, records) = mpsc::channel(QUEUE_RECORDS);
    let queued = Arc::new(Queued::default());
    let (request_tx, request) = mpsc::channel(4);
    let pump_queued = queued.clone();
    tokio::spawn(async move {
        let mut out = Outbox::new(records_tx, pump_queued);
        let result = pump(vnc, request, &mut out, &what).await;
        tracing::info!(session, what, sent_bytes = out.sent, dropped_bytes = out.dropped_total,
            reason = %result.as_ref().err().map(|c| c.to_string()).unwrap_or_else(|| "the listener left".into()),
            "audio stream ended");
        if let Err(close) = result {
            // The queue may be full of PCM: the Close waits its turn, for a while.
            let _ = tokio::time::timeout(CLOSE_DEADLINE, out.tx.send(Frame::Close(close))).await;
        }
    });
    (
        AudioRx { records, queued },
        AudioTx {
            request: Some(request_tx),
        },
    )
}

impl FrameRx for AudioRx {
    async fn recv(&mut self) -> Result<Option<Frame>, Close> {
        let f = self.records.recv().await;
        if let Some(Frame::Data(d)) = &f {
            self.queued.bytes.fetch_sub(d.len(), Ordering::Relaxed);
            self.queued.room.notify_one();
        }
        Ok(f)
    }
}

impl FrameTx for AudioTx {
    async fn send(&mut self, frame: Frame) -> Result<(), Close> {
        match frame {
            Frame::Data(d) => {
                // Waits while the pump is busy: a client flooding commands
                // is slowed down, not buffered.
                if let Some(tx) = &self.request {
                    if tx.send(d).await.is_err() {
                        self.request = None;
                    }
                }
            }
            // The client is done: the stream runs until it closes.
            Frame::Eof => self.request = None,
            _ => {}
        }
        Ok(())
    }
}

/// Reads the format request, starts QEMU's audio, and forwards it until
/// the listener leaves (`Ok`) or something ends the session (`Err`).
async fn pump(
    vnc: Box<dyn Duplex>,
    mut request: mpsc::Receiver<Bytes>,
    out: &mut Outbox,
    what: &str,
) -> Result<(), Close> {
    let mut asked = Vec::with_capacity(AUDIO_HEADER_LEN);
    // What came after the header in the same message: commands.
    let mut rest = Bytes::new();
    let header = tokio::time::timeout(REQUEST_DEADLINE, async {
        loop {
            let bad = |e: &dyn std::fmt::Display| {
                Close::new(CloseCode::ProtocolError, format!("audio request: {e}"))
            };
            if let Some(h) = AudioHeader::decode(&asked).map_err(|e| bad(&e))? {
                return Ok(Some(h));
            }
            let Some(b) = request.recv().await else {
                return Ok(None);
            };
            let n = b.len().min(AUDIO_HEADER_LEN - asked.len());
            asked.extend_from_slice(&b[..n]);
            rest = b.slice(n..);
        }
    })
    .await
    .map_err(|_| {
        Close::new(
            CloseCode::ProtocolError,
            format!(
                "no audio request within {REQUEST_DEADLINE:?}: send the 11-byte VMGA header first"
            ),
        )
    })??;
    let Some(header) = header else {
        return Ok(());
    };
    let format = AudioFormat::check(header.sample, header.channels, header.rate).map_err(|e| {
        Close::new(
            CloseCode::ProtocolError,
            format!("audio format refused: {e}"),
        )
    })?;
    // Playing unless the client paused in the same breath (a web page
    // that waits for its user's click).
    let mut wanted = commands(&rest, true)?;

    let (mut r, mut w) = tokio::io::split(vnc);
    let mut hello = ServerParser::CLIENT_HANDSHAKE.to_vec();
    hello.extend_from_slice(&set_encodings_message(&[AUDIO_ENCODING]));
    hello.extend_from_slice(&format.set_format_message());
    if wanted {
        hello.extend_from_slice(&control_message(OP_ENABLE));
    }
    let mut enabled = wanted;
    let lost = |e: std::io::Error| {
        Close::new(
            CloseCode::GuestDown,
            format!("{what}: the VNC connection to QEMU failed: {e}"),
        )
    };
    w.write_all(&hello).await.map_err(lost)?;
    out.send(Bytes::copy_from_slice(&header.encode())).await?;

    let mut parser = ServerParser::new();
    let mut acked = false;
    let ack_deadline = tokio::time::Instant::now() + ACK_DEADLINE;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut records: Vec<Record> = Vec::new();
    // Waited on beside reads, while `out` is changed.
    let (queue, queued) = (out.tx.clone(), out.queued.clone());
    loop {
        buf.clear();
        tokio::select! {
            n = r.read_buf(&mut buf) => {
                if n.map_err(lost)? == 0 {
                    return Err(Close::new(
                        CloseCode::GuestDown,
                        format!("{what}: QEMU closed the VNC connection (the guest stopped?)"),
                    ));
                }
            }
            _ = tokio::time::sleep_until(ack_deadline), if !acked => {
                return Err(Close::new(
                    CloseCode::BackendError,
                    format!("{what}: QEMU did not acknowledge VNC audio within {ACK_DEADLINE:?}"),
                ));
            }
            _ = queue.closed() => return Ok(()),
            // The listener caught up: tell it what it missed, now.
            _ = queued.room.notified(), if out.behind() => {
                // Only once a listener has made real room: telling it
                // about each lost record as it drains would flood it.
                if out.room() >= READ_CHUNK + REPORTS {
                    out.catch_up();
                }
                continue;
            }
            more = request.recv(), if !request.is_closed() => {
                if let Some(b) = more {
                    wanted = commands(&b, wanted)?;
                    if wanted != enabled {
                        let op = if wanted { OP_ENABLE } else { OP_DISABLE };
                        w.write_all(&control_message(op)).await.map_err(lost)?;
                        enabled = wanted;
                    }
                }
                continue;
            }
        }
        parser
            .feed(&buf, |e| match e {
                ServerEvent::Rect {
                    encoding: AUDIO_ENCODING,
                } => acked = true,
                ServerEvent::AudioBegin => records.push(Record::Playing(true)),
                ServerEvent::AudioEnd => records.push(Record::Playing(false)),
                ServerEvent::AudioData(d) => match records.last_mut() {
                    Some(Record::Pcm(p)) => p.extend_from_slice(d),
                    _ => records.push(Record::Pcm(BytesMut::from(d))),
                },
                ServerEvent::Ready { .. }
                | ServerEvent::Rect { .. }
                | ServerEvent::Other(_)
                | ServerEvent::TightControl(_) => {}
            })
            .map_err(|e| {
                Close::new(
                    CloseCode::BackendError,
                    format!("{what}: QEMU's VNC audio: {e}"),
                )
            })?;
        for rec in records.drain(..) {
            match rec {
                Record::Playing(p) => out.playing(p),
                Record::Pcm(pcm) => out.pcm(&pcm),
            }
            if out.gone {
                return Ok(());
            }
        }
    }
}

/// Whether the client wants sound after its commands `b`, starting from
/// `playing`: 0 pauses, 1 resumes (vmgate_wire::audio).
fn commands(b: &[u8], mut playing: bool) -> Result<bool, Close> {
    for &c in b {
        playing = match c {
            PAUSE => false,
            RESUME => true,
            c => {
                return Err(Close::new(
                    CloseCode::ProtocolError,
                    format!("unknown audio command {c} (0 pauses, 1 resumes)"),
                ))
            }
        };
    }
    Ok(playing)
}

/// What one read from QEMU said, in order.
enum Record {
    Playing(bool),
    Pcm(BytesMut),
}

/// The queue to the relay, with the drop policy.
struct Outbox {
    tx: mpsc::Sender<Frame>,
    queued: Arc<Queued>,
    /// PCM bytes dropped and not reported to the listener yet.
    dropped: u64,
    /// A begin/end the listener has not been told because the queue was full.
    pending: Option<bool>,
    /// PCM bytes queued, and dropped, in all.
    sent: u64,
    dropped_total: u64,
    /// The relay is gone.
    gone: bool,
}

impl Outbox {
    fn new(tx: mpsc::Sender<Frame>, queued: Arc<Queued>) -> Outbox {
        Outbox {
            tx,
            queued,
            dropped: 0,
            pending: None,
            sent: 0,
            dropped_total: 0,
            gone: false,
        }
    }

    /// Queues `b`, waiting for room (only for the header, at the start).
    async fn send(&mut self, b: Bytes) -> Result<(), Close> {
        self.queued.bytes.fetch_add(b.len(), Ordering::Relaxed);
        if self.tx.send(Frame::Data(b)).await.is_err() {
            self.gone = true;
        }
        Ok(())
    }

    /// Queues `b` if there is room; whether it was.
    fn try_queue(&mut self, b: Bytes) -> bool {
        let n = b.len();
        // Only this task adds: the count can only have gone down since.
        if self.queued.bytes.load(Ordering::Relaxed) + n > QUEUE_BYTES {
            return false;
        }
        self.queued.bytes.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Frame::Data(b)) {
            Ok(()) => true,
            Err(e) => {
                self.queued.bytes.fetch_sub(n, Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                    self.gone = true;
                }
                false
            }
        }
    }

    /// Whether the listener missed something it has not been told yet.
    fn behind(&self) -> bool {
        self.dropped > 0 || self.pending.is_some()
    }

    /// Tells the listener what it missed; whether it is up to date.
    fn catch_up(&mut self) -> bool {
        while self.dropped > 0 {
            let n = u32::try_from(self.dropped).unwrap_or(u32::MAX);
            if !self.try_queue(dropped_record(n)) {
                return false;
            }
            self.dropped -= u64::from(n);
        }
        if let Some(p) = self.pending {
            if !self.try_queue(if p { begin_record() } else { end_record() }) {
                return false;
            }
            self.pending = None;
        }
        true
    }

    fn playing(&mut self, p: bool) {
        if !self.catch_up() || !self.try_queue(if p { begin_record() } else { end_record() }) {
            self.pending = Some(p);
        }
    }

    /// Bytes that fit in the queue now.
    fn room(&self) -> usize {
        QUEUE_BYTES.saturating_sub(self.queued.bytes.load(Ordering::Relaxed))
    }

    fn pcm(&mut self, pcm: &[u8]) {
        let n = pcm.len() as u64;
        let mut rec = BytesMut::with_capacity(5 + pcm.len());
        put_pcm_record(&mut rec, pcm);
        // The reports and the record together, or neither: a report per
        // lost record would flood a listener that is already behind.
        let reports = if self.behind() { REPORTS } else { 0 };
        if self.room() >= rec.len() + reports && self.catch_up() && self.try_queue(rec.freeze()) {
            self.sent += n;
        } else {
            self.dropped += n;
            self.dropped_total += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmgate_wire::audio::{AudioEvent, AudioReader};

    /// A fake QEMU: what a VNC server sends an audio-only client.
    fn server_hello() -> Vec<u8> {
        let mut s = b"RFB 003.008\n\x01\x01\x00\x00\x00\x00".to_vec();
        s.extend_from_slice(&[
            0, 4, 0, 4, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0,
        ]);
        s.extend_from_slice(&[0, 0, 0, 0, 0]);
        s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 4]);
        s.extend_from_slice(&AUDIO_ENCODING.to_be_bytes());
        s
    }

    fn pcm_message(pcm: &[u8]) -> Vec<u8> {
        let mut m = vec![255, 1, 0, 2];
        m.extend_from_slice(&(pcm.len() as u32).to_be_bytes());
        m.extend_from_slice(pcm);
        m
    }

    /// What a client made of the agent's records: events, PCM as byte counts.
    #[derive(Default)]
    struct Listener {
        reader: AudioReader,
        seen: Vec<String>,
    }

    impl Listener {
        fn take(&mut self, f: Option<Frame>) {
            let seen = &mut self.seen;
            match f {
                Some(Frame::Data(d)) => self
                    .reader
                    .feed(&d, |e| {
                        seen.push(match e {
                            AudioEvent::Pcm(p) => format!("pcm {}", p.len()),
                            e => format!("{e:?}"),
                        })
                    })
                    .unwrap(),
                other => seen.push(format!("{other:?}")),
            }
        }

        /// Reads records until `until` holds of the events.
        async fn until(&mut self, rx: &mut AudioRx, until: impl Fn(&[String]) -> bool) {
            while !until(&self.seen) {
                let f = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .expect("a record")
                    .unwrap();
                self.take(f);
            }
        }
    }

    #[tokio::test]
    async fn the_request_starts_qemu_audio_and_records_follow_in_order() {
        let (ours, mut qemu) = tokio::io::duplex(1 << 16);
        let (mut rx, mut tx) = start(Box::new(ours), "audio of t".into(), 1);
        let want = AudioHeader {
            sample: 3,
            channels: 2,
            rate: 48_000,
        };
        tx.send(Frame::Data(Bytes::copy_from_slice(&want.encode()[..5])))
            .await
            .unwrap();
        tx.send(Frame::Data(Bytes::copy_from_slice(&want.encode()[5..])))
            .await
            .unwrap();
        // What the agent tells QEMU: handshake, [-259] only, the format, enable.
        let mut hello = vec![0; 14 + 8 + 10 + 4];
        qemu.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello[..14], b"RFB 003.008\n\x01\x01");
        assert_eq!(&hello[14..22], &[2, 0, 0, 1, 0xff, 0xff, 0xfe, 0xfd]);
        assert_eq!(&hello[22..32], &[255, 1, 0, 2, 3, 2, 0, 0, 0xbb, 0x80]);
        assert_eq!(&hello[32..], &[255, 1, 0, 0]);
        let mut s = server_hello();
        s.extend_from_slice(&[255, 1, 0, 1]);
        s.extend_from_slice(&pcm_message(&[7; 400]));
        s.extend_from_slice(&pcm_message(&[8; 100]));
        s.extend_from_slice(&[255, 1, 0, 0]);
        qemu.write_all(&s).await.unwrap();
        let mut l = Listener::default();
        l.until(&mut rx, |s| s.last().is_some_and(|l| l == "End"))
            .await;
        let seen = l.seen;
        let pcm: usize = seen
            .iter()
            .filter_map(|e| e.strip_prefix("pcm ")?.parse::<usize>().ok())
            .sum();
        assert_eq!(seen[0], format!("Header({want:?})"));
        assert_eq!(seen[1], "Begin");
        assert_eq!(pcm, 500);
    }

    #[tokio::test]
    async fn a_bad_request_ends_the_session_with_its_reason() {
        let (ours, _qemu) = tokio::io::duplex(1 << 16);
        let (mut rx, mut tx) = start(Box::new(ours), "audio of t".into(), 1);
        let bad = AudioHeader {
            sample: 3,
            channels: 2,
            rate: 96_000,
        };
        tx.send(Frame::Data(Bytes::copy_from_slice(&bad.encode())))
            .await
            .unwrap();
        match rx.recv().await.unwrap() {
            Some(Frame::Close(c)) => {
                assert_eq!(c.code, CloseCode::ProtocolError);
                assert!(c.reason.contains("audio rate of 96000 Hz"), "{c}");
            }
            other => panic!("{other:?}"),
        }
        let (ours, _qemu) = tokio::io::duplex(1 << 16);
        let (mut rx, mut tx) = start(Box::new(ours), "audio of t".into(), 1);
        tx.send(Frame::Data(Bytes::from_static(b"RFB 003.008\n")))
            .await
            .unwrap();
        match rx.recv().await.unwrap() {
            Some(Frame::Close(c)) => assert!(c.reason.contains("VMGA"), "{c}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn pause_and_resume_become_qemus_disable_and_enable_and_nothing_else_passes() {
        let (ours, mut qemu) = tokio::io::duplex(1 << 16);
        let (mut rx, mut tx) = start(Box::new(ours), "audio of t".into(), 1);
        // Paused in the same message as the request: no enable.
        let mut first = AudioHeader::CD.encode().to_vec();
        first.push(PAUSE);
        tx.send(Frame::Data(first.into())).await.unwrap();
        let mut hello = vec![0; 32];
        qemu.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello[22..], &[255, 1, 0, 2, 3, 2, 0, 0, 0xac, 0x44]);
        // Resume, resume again (no change), pause: enable, then disable.
        for c in [RESUME, RESUME, PAUSE] {
            tx.send(Frame::Data(Bytes::copy_from_slice(&[c])))
                .await
                .unwrap();
        }
        let mut ops = [0; 8];
        qemu.read_exact(&mut ops).await.unwrap();
        assert_eq!(ops, [255, 1, 0, 0, 255, 1, 0, 1]);
        tx.send(Frame::Data(Bytes::from_static(&[7])))
            .await
            .unwrap();
        assert!(
            matches!(rx.recv().await.unwrap(), Some(Frame::Data(_))),
            "the header"
        );
        match rx.recv().await.unwrap() {
            Some(Frame::Close(c)) => {
                assert_eq!(c.code, CloseCode::ProtocolError);
                assert!(c.reason.contains("unknown audio command 7"), "{c}");
            }
            other => panic!("{other:?}"),
        }
        // QEMU got nothing more.
        drop((rx, tx));
        let mut more = Vec::new();
        qemu.read_to_end(&mut more).await.unwrap();
        assert!(more.is_empty(), "{more:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_qemu_that_never_acknowledges_audio_ends_the_session_at_the_deadline() {
        let (ours, mut qemu) = tokio::io::duplex(1 << 16);
        let (mut rx, mut tx) = start(Box::new(ours), "audio of t".into(), 1);
        tx.send(Frame::Data(Bytes::copy_from_slice(
            &AudioHeader::CD.encode(),
        )))
        .await
        .unwrap();
        let mut hello = vec![0; 36];
        qemu.read_exact(&mut hello).await.unwrap();
        // The handshake, but no -259 rectangle.
        let s = server_hello();
        qemu.write_all(&s[..s.len() - 16]).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(
            matches!(rx.recv().await.unwrap(), Some(Frame::Data(_))),
            "the header"
        );
        match rx.recv().await.unwrap() {
            Some(Frame::Close(c)) => {
                assert_eq!(c.code, CloseCode::BackendError);
                assert!(c.reason.contains("did not acknowledge VNC audio"), "{c}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(started.elapsed(), ACK_DEADLINE);
    }

    #[tokio::test]
    async fn a_listener_that_stops_reading_gets_drops_counted_not_a_growing_queue() {
        let (ours, mut qemu) = tokio::io::duplex(1 << 20);
        let (mut rx, mut tx) = start(Box::new(ours), "audio of t".into(), 1);
        tx.send(Frame::Data(Bytes::copy_from_slice(
            &AudioHeader::CD.encode(),
        )))
        .await
        .unwrap();
        let mut hello = vec![0; 36];
        qemu.read_exact(&mut hello).await.unwrap();
        let mut s = server_hello();
        s.extend_from_slice(&[255, 1, 0, 1]);
        qemu.write_all(&s).await.unwrap();
        // Nobody reads `rx` while QEMU sends 100 messages of 4 KiB.
        for _ in 0..100 {
            qemu.write_all(&pcm_message(&[1; 4096])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        qemu.write_all(&[255, 1, 0, 0]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // At most the queue's worth waited; then the listener learns what it
        // missed, and that the guest went quiet (the end came while the
        // queue was full).
        let mut l = Listener::default();
        let mut queued = 0;
        while let Ok(Ok(Some(f))) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
        {
            if let Frame::Data(d) = &f {
                queued += d.len();
            }
            let end = l.seen.iter().any(|e| e == "End");
            l.take(Some(f));
            if end {
                break;
            }
        }
        assert!(queued <= QUEUE_BYTES, "{queued} bytes queued");
        // Without anything more from QEMU, as soon as there is room.
        l.until(&mut rx, |s| s.iter().any(|e| e == "End")).await;
        let seen = l.seen;
        let dropped: u64 = seen
            .iter()
            .filter_map(|e| {
                e.strip_prefix("Dropped(")?
                    .strip_suffix(')')?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        assert!(dropped > 0, "{seen:?}");
        assert_eq!(seen.iter().filter(|e| e.starts_with("Dropped")).count(), 1);
    }
}
