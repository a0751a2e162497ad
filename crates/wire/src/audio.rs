//! The `audio` channel's byte stream: a guest's sound as PCM, out of QEMU's
//! VNC audio messages (docs/audio.md). One place for the framing: the agent
//! writes it, `vmgate audio` and the web page's player read it.
//!
//! ```text
//! client → agent   header (11 bytes): the format the client wants
//!                  then commands, one byte each, at any time:
//!                    0             pause: the agent stops QEMU's audio
//!                    1             resume (the default after the header)
//! agent → client   header (11 bytes): the format that follows
//!                  records, until the session ends:
//!                    1             begin: the guest started to play
//!                    2             end: the guest went quiet
//!                    3 u32 n  PCM  n bytes of samples (n ≤ MAX_PCM_RECORD)
//!                    4 u32 n       n bytes of PCM were dropped here (the
//!                                  listener fell behind)
//!
//! header: "VMGA" u8 version=1 u8 sample-format u8 channels u32 rate
//! ```
//!
//! Numbers are big-endian; samples are little-endian and interleaved, as
//! QEMU sends them. Sample formats are QEMU's numbers (0 U8, 1 S8, 2 U16,
//! 3 S16, 4 U32, 5 S32). The header only frames the request: whether QEMU
//! takes the format is the agent's to check. A silent guest sends nothing
//! at all, so a reader that wants wall-clock time fills the gaps itself.
//!
//! Sans-IO: [`AudioReader`] takes the bytes in whatever chunks they came
//! and hands PCM out as slices of them.

use bytes::{BufMut, Bytes, BytesMut};

/// The header's first four bytes.
pub const AUDIO_MAGIC: [u8; 4] = *b"VMGA";
/// The framing's version.
pub const AUDIO_VERSION: u8 = 1;
/// The header's length.
pub const AUDIO_HEADER_LEN: usize = 11;
/// The largest PCM record: QEMU's own largest audio message.
pub const MAX_PCM_RECORD: u32 = 1 << 20;

/// Client command: stop the sound (a page waiting for its user's click).
pub const PAUSE: u8 = 0;
/// Client command: start it again.
pub const RESUME: u8 = 1;

const BEGIN: u8 = 1;
const END: u8 = 2;
const PCM: u8 = 3;
const DROPPED: u8 = 4;

/// A format, as a header carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioHeader {
    /// QEMU's sample format number (3: S16).
    pub sample: u8,
    pub channels: u8,
    /// Frames per second.
    pub rate: u32,
}

/// Why bytes are not an audio stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// The header does not start with `VMGA`.
    #[error("not a vmgate audio stream (no VMGA header)")]
    Magic,
    /// A version this build does not speak.
    #[error("audio stream version {0} is not supported (this build speaks 1)")]
    Version(u8),
    /// A record kind this build does not know.
    #[error("unknown audio record {0}")]
    Record(u8),
    /// A PCM record over [`MAX_PCM_RECORD`].
    #[error("audio record of {0} bytes exceeds {MAX_PCM_RECORD}")]
    TooLong(u32),
}

impl AudioHeader {
    /// S16, stereo, 44.1 kHz: what QEMU sends by default.
    pub const CD: AudioHeader = AudioHeader {
        sample: 3,
        channels: 2,
        rate: 44_100,
    };

    pub fn encode(&self) -> [u8; AUDIO_HEADER_LEN] {
        let r = self.rate.to_be_bytes();
        let m = AUDIO_MAGIC;
        [
            m[0],
            m[1],
            m[2],
            m[3],
            AUDIO_VERSION,
            self.sample,
            self.channels,
            r[0],
            r[1],
            r[2],
            r[3],
        ]
    }

    /// The header at the start of `b`, once all of it is there.
    pub fn decode(b: &[u8]) -> Result<Option<AudioHeader>, AudioError> {
        let n = b.len().min(4);
        if b[..n] != AUDIO_MAGIC[..n] {
            return Err(AudioError::Magic);
        }
        if b.len() < AUDIO_HEADER_LEN {
            return Ok(None);
        }
        if b[4] != AUDIO_VERSION {
            return Err(AudioError::Version(b[4]));
        }
        Ok(Some(AudioHeader {
            sample: b[5],
            channels: b[6],
            rate: u32::from_be_bytes([b[7], b[8], b[9], b[10]]),
        }))
    }
}

/// The begin record.
pub fn begin_record() -> Bytes {
    Bytes::from_static(&[BEGIN])
}

/// The end record.
pub fn end_record() -> Bytes {
    Bytes::from_static(&[END])
}

/// The record saying `n` bytes of PCM were dropped.
pub fn dropped_record(n: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(DROPPED);
    b.put_u32(n);
    b.freeze()
}

/// Appends a PCM record of `pcm` (at most [`MAX_PCM_RECORD`] bytes) to `out`.
pub fn put_pcm_record(out: &mut BytesMut, pcm: &[u8]) {
    let n = u32::try_from(pcm.len())
        .ok()
        .filter(|&n| n <= MAX_PCM_RECORD)
        .expect("PCM records are cut at MAX_PCM_RECORD");
    out.reserve(5 + pcm.len());
    out.put_u8(PCM);
    out.put_u32(n);
    out.put_slice(pcm);
}

/// What an audio stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioEvent<'a> {
    /// The header: the format of every PCM byte after it.
    Header(AudioHeader),
    Begin,
    End,
    /// PCM, in order; a record may come in several slices, and a slice may
    /// end inside a frame.
    Pcm(&'a [u8]),
    /// This many PCM bytes were dropped before what follows.
    Dropped(u32),
}

/// Reads the agent's side of an audio stream.
#[derive(Debug, Clone, Default)]
pub struct AudioReader {
    /// Header or record-header bytes seen (at most the header's 11).
    hdr: Vec<u8>,
    header_done: bool,
    /// PCM bytes left in the current record.
    pcm_left: usize,
    failed: Option<AudioError>,
}

impl AudioReader {
    pub fn new() -> AudioReader {
        AudioReader::default()
    }

    /// Reads `data`, calling `out` for each event; stops at the first error.
    pub fn feed<'a>(
        &mut self,
        mut data: &'a [u8],
        mut out: impl FnMut(AudioEvent<'a>),
    ) -> Result<(), AudioError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !data.is_empty() {
            if self.pcm_left > 0 {
                let n = self.pcm_left.min(data.len());
                out(AudioEvent::Pcm(&data[..n]));
                self.pcm_left -= n;
                data = &data[n..];
                continue;
            }
            let need = self.need()?;
            if self.hdr.len() < need {
                let n = (need - self.hdr.len()).min(data.len());
                self.hdr.extend_from_slice(&data[..n]);
                data = &data[n..];
                if !self.header_done {
                    if let Err(e) = AudioHeader::decode(&self.hdr) {
                        return Err(self.fail(e));
                    }
                }
                // A record's kind byte tells how long its header is.
                if self.hdr.len() < self.need()? {
                    continue;
                }
            }
            let h = std::mem::take(&mut self.hdr);
            if !self.header_done {
                let header = AudioHeader::decode(&h)
                    .map_err(|e| self.fail(e))?
                    .expect("a whole header");
                self.header_done = true;
                out(AudioEvent::Header(header));
                continue;
            }
            match h[0] {
                BEGIN => out(AudioEvent::Begin),
                END => out(AudioEvent::End),
                kind => {
                    let n = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
                    if kind == DROPPED {
                        out(AudioEvent::Dropped(n));
                    } else if n > MAX_PCM_RECORD {
                        return Err(self.fail(AudioError::TooLong(n)));
                    } else {
                        self.pcm_left = n as usize;
                    }
                }
            }
        }
        Ok(())
    }

    /// Header bytes the current header or record header takes.
    fn need(&mut self) -> Result<usize, AudioError> {
        if !self.header_done {
            return Ok(AUDIO_HEADER_LEN);
        }
        match self.hdr.first() {
            None | Some(&BEGIN) | Some(&END) => Ok(1),
            Some(&PCM) | Some(&DROPPED) => Ok(5),
            Some(&k) => Err(self.fail(AudioError::Record(k))),
        }
    }

    fn fail(&mut self, e: AudioError) -> AudioError {
        self.failed = Some(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream() -> Vec<u8> {
        let mut b = BytesMut::new();
        b.extend_from_slice(&AudioHeader::CD.encode());
        b.extend_from_slice(&begin_record());
        put_pcm_record(&mut b, &[1, 2, 3, 4, 5, 6, 7, 8]);
        b.extend_from_slice(&dropped_record(4096));
        put_pcm_record(&mut b, &[]);
        put_pcm_record(&mut b, &[9; 300]);
        b.extend_from_slice(&end_record());
        b.to_vec()
    }

    /// Events as owned strings, PCM joined per run, reading `s` cut at `cuts`.
    fn read(s: &[u8], cuts: &[usize]) -> Result<(Vec<String>, Vec<u8>), AudioError> {
        let mut r = AudioReader::new();
        let (mut events, mut pcm) = (Vec::new(), Vec::new());
        let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < s.len()).collect();
        bounds.sort_unstable();
        bounds.push(s.len());
        let mut at = 0;
        for b in bounds {
            r.feed(&s[at..b], |e| match e {
                AudioEvent::Pcm(d) => pcm.extend_from_slice(d),
                e => events.push(format!("{e:?}")),
            })?;
            at = b;
        }
        Ok((events, pcm))
    }

    #[test]
    fn a_stream_reads_back_as_written() {
        let (events, pcm) = read(&stream(), &[]).unwrap();
        assert_eq!(
            events,
            [
                "Header(AudioHeader { sample: 3, channels: 2, rate: 44100 })",
                "Begin",
                "Dropped(4096)",
                "End"
            ]
        );
        let mut want = vec![1, 2, 3, 4, 5, 6, 7, 8];
        want.extend_from_slice(&[9; 300]);
        assert_eq!(pcm, want);
        let s = stream();
        let all: Vec<usize> = (1..s.len()).collect();
        assert_eq!(read(&s, &all).unwrap(), (events, pcm));
    }

    #[test]
    fn bad_streams_are_refused_with_their_cause() {
        assert_eq!(read(b"RFB 003.008\n", &[]).unwrap_err(), AudioError::Magic);
        assert_eq!(read(b"VMGB", &[]).unwrap_err(), AudioError::Magic);
        assert_eq!(
            read(b"VMGA\x02\x03\x02\x00\x00\xac\x44", &[]).unwrap_err(),
            AudioError::Version(2)
        );
        let mut s = AudioHeader::CD.encode().to_vec();
        s.push(9);
        assert_eq!(read(&s, &[]).unwrap_err(), AudioError::Record(9));
        let mut s = AudioHeader::CD.encode().to_vec();
        s.extend_from_slice(&[3, 0, 0x10, 0, 1]);
        assert_eq!(read(&s, &[]).unwrap_err(), AudioError::TooLong(0x10_0001));
        // An incomplete header is not an error yet.
        assert_eq!(read(b"VMG", &[]).unwrap(), (vec![], vec![]));
    }

    proptest! {
        #[test]
        fn any_chunking_reads_the_same(cuts in proptest::collection::vec(0usize..400, 0..20)) {
            let s = stream();
            prop_assert_eq!(read(&s, &cuts).unwrap(), read(&s, &[]).unwrap());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..300,
        ) {
            let data = [&AudioHeader::CD.encode()[..], &tail].concat();
            if let Ok((_, pcm)) = read(&data, &[cut]) {
                prop_assert!(pcm.len() <= data.len());
            }
        }
    }
}
