//! The `audio` channel as a client hears it: send the format wanted, then
//! read the agent's framed PCM ([`vmgate_wire::audio`]) as owned items.
//!
//! ```no_run
//! # async fn f(ws: vmgate_client::Ws) -> Result<(), vmgate_wire::Close> {
//! use vmgate_client::audio::{AudioClient, AudioItem};
//! let mut audio = AudioClient::start(ws, vmgate_wire::audio::AudioHeader::CD).await?;
//! loop {
//!     for item in audio.next().await? {
//!         if let AudioItem::Pcm(pcm) = item { /* little-endian samples */ }
//!     }
//! }
//! # }
//! ```

use bytes::Bytes;
use vmgate_relay::FrameRx;
use vmgate_wire::audio::{AudioEvent, AudioHeader, AudioReader};
use vmgate_wire::{Close, CloseCode, Frame};

use crate::ws::{self, WsRx, WsTx};
use crate::Ws;

/// What the agent said, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioItem {
    /// The format of every PCM byte after it; always the first item.
    Header(AudioHeader),
    /// The guest started to play.
    Begin,
    /// The guest went quiet: nothing comes until the next begin.
    End,
    /// Samples, in order (a piece may end inside a frame).
    Pcm(Bytes),
    /// This many PCM bytes were dropped here: this client fell behind.
    Dropped(u32),
}

/// A session on a guest's `audio` channel.
pub struct AudioClient {
    rx: WsRx,
    tx: WsTx,
    reader: AudioReader,
}

impl AudioClient {
    /// Asks for `want` on a WebSocket opened on an `audio` channel.
    pub async fn start(ws: Ws, want: AudioHeader) -> Result<AudioClient, Close> {
        let (rx, mut tx) = ws::split(ws);
        tx.data(Bytes::copy_from_slice(&want.encode())).await?;
        Ok(AudioClient {
            rx,
            tx,
            reader: AudioReader::new(),
        })
    }

    /// The items of the gateway's next message (possibly none); the
    /// session's close once it ends (a stream that is not audio is closed
    /// here, with why).
    pub async fn next(&mut self) -> Result<Vec<AudioItem>, Close> {
        let data = match self.rx.recv().await? {
            Some(Frame::Data(d)) => d,
            Some(Frame::Close(c)) => return Err(c),
            None => {
                return Err(Close::new(
                    CloseCode::Internal,
                    "the gateway ended the session without a reason",
                ))
            }
            // Notices and the half-close say nothing about the sound.
            Some(_) => return Ok(Vec::new()),
        };
        let mut items = Vec::new();
        let parsed = self.reader.feed(&data, |e| {
            items.push(match e {
                AudioEvent::Header(h) => AudioItem::Header(h),
                AudioEvent::Begin => AudioItem::Begin,
                AudioEvent::End => AudioItem::End,
                AudioEvent::Pcm(p) => AudioItem::Pcm(data.slice_ref(p)),
                AudioEvent::Dropped(n) => AudioItem::Dropped(n),
            })
        });
        if let Err(e) = parsed {
            let close = Close::new(CloseCode::ProtocolError, format!("audio stream: {e}"));
            self.tx.close(close.clone()).await;
            return Err(close);
        }
        Ok(items)
    }

    /// Ends the session from this side.
    pub async fn close(mut self) {
        self.tx
            .close(Close::new(CloseCode::Normal, "done listening"))
            .await;
    }
}
