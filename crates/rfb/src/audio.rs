//! QEMU's audio extension to RFB (rfbproto: "QEMU Client Message", "QEMU
//! Audio pseudo-encoding", "Audio"): the formats a client may ask for and
//! the client messages that ask.
//!
//! A client lists pseudo-encoding [`AUDIO_ENCODING`] in SetEncodings; the
//! server acknowledges with an empty rectangle of that encoding. The client
//! then sends `255, 1, u16 op`: [`OP_SET_FORMAT`] (`u8 format, u8 channels,
//! u32 rate`), [`OP_ENABLE`], [`OP_DISABLE`]. The server answers with
//! `255, 1, u16 op` too: begin, end, and data (`u32 length` and PCM), see
//! [`crate::server`].

use crate::RfbError;

/// QEMU's audio pseudo-encoding.
pub const AUDIO_ENCODING: i32 = -259;
/// Client audio operation: start sending audio.
pub const OP_ENABLE: u16 = 0;
/// Client audio operation: stop sending audio.
pub const OP_DISABLE: u16 = 1;
/// Client audio operation: the format to send it in.
pub const OP_SET_FORMAT: u16 = 2;
/// Server audio operation: a stream ended (the guest went quiet).
pub const OP_END: u16 = 0;
/// Server audio operation: a stream begins (the guest plays).
pub const OP_BEGIN: u16 = 1;
/// Server audio operation: PCM follows, `u32` length first.
pub const OP_DATA: u16 = 2;
/// The highest rate QEMU accepts (it refuses more as too much data for a
/// socket); it resamples to any rate up to it.
pub const MAX_RATE: u32 = 48_000;

/// A sample's encoding, numbered as QEMU numbers them on the wire. Samples
/// are little-endian, channels interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleFormat {
    U8 = 0,
    S8 = 1,
    U16 = 2,
    S16 = 3,
    U32 = 4,
    S32 = 5,
}

impl SampleFormat {
    /// The format numbered `n` on the wire.
    pub fn from_wire(n: u8) -> Option<SampleFormat> {
        Some(match n {
            0 => SampleFormat::U8,
            1 => SampleFormat::S8,
            2 => SampleFormat::U16,
            3 => SampleFormat::S16,
            4 => SampleFormat::U32,
            5 => SampleFormat::S32,
            _ => return None,
        })
    }

    /// Bytes per sample of one channel.
    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::U8 | SampleFormat::S8 => 1,
            SampleFormat::U16 | SampleFormat::S16 => 2,
            SampleFormat::U32 | SampleFormat::S32 => 4,
        }
    }
}

/// What a client asks QEMU to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    pub sample: SampleFormat,
    /// 1 or 2.
    pub channels: u8,
    /// Frames per second, 1 to [`MAX_RATE`].
    pub rate: u32,
}

impl AudioFormat {
    /// What QEMU sends when the client does not say: S16, stereo, 44.1 kHz.
    pub const QEMU_DEFAULT: AudioFormat = AudioFormat {
        sample: SampleFormat::S16,
        channels: 2,
        rate: 44_100,
    };

    /// The format of a set-format message's fields, if QEMU accepts it.
    pub fn check(sample: u8, channels: u8, rate: u32) -> Result<AudioFormat, RfbError> {
        let sample = SampleFormat::from_wire(sample).ok_or(RfbError::AudioSampleFormat(sample))?;
        if !(1..=2).contains(&channels) {
            return Err(RfbError::AudioChannels(channels));
        }
        if !(1..=MAX_RATE).contains(&rate) {
            return Err(RfbError::AudioRate(rate));
        }
        Ok(AudioFormat {
            sample,
            channels,
            rate,
        })
    }

    /// Bytes per frame (one sample of every channel).
    pub fn frame_bytes(&self) -> usize {
        self.sample.bytes() * usize::from(self.channels)
    }

    /// Bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.frame_bytes() as u64 * u64::from(self.rate)
    }

    /// The set-format client message.
    pub fn set_format_message(&self) -> [u8; 10] {
        let r = self.rate.to_be_bytes();
        let op = OP_SET_FORMAT.to_be_bytes();
        [
            255,
            1,
            op[0],
            op[1],
            self.sample as u8,
            self.channels,
            r[0],
            r[1],
            r[2],
            r[3],
        ]
    }
}

/// The client message for audio operation `op` ([`OP_ENABLE`], [`OP_DISABLE`]).
pub fn control_message(op: u16) -> [u8; 4] {
    let op = op.to_be_bytes();
    [255, 1, op[0], op[1]]
}

/// A SetEncodings client message listing `encodings`, in preference order.
pub fn set_encodings_message(encodings: &[i32]) -> Vec<u8> {
    let n = u16::try_from(encodings.len()).expect("a handful of encodings");
    let mut m = vec![2, 0];
    m.extend_from_slice(&n.to_be_bytes());
    for e in encodings {
        m.extend_from_slice(&e.to_be_bytes());
    }
    m
}
