//! Reading a guest's console output until something expected shows up, with a deadline.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::error::KitError;

/// How much of the received output an error message quotes.
const TAIL_CHARS: usize = 400;

/// Reads from `stream` until `needle` has appeared, and returns everything read (which may
/// run past the needle). Fails after `timeout`, or when the other side closes first.
///
/// The stream's read timeout is changed while waiting and restored afterwards.
pub fn wait_for_output(
    stream: &mut UnixStream,
    needle: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, KitError> {
    let label = String::from_utf8_lossy(needle).into_owned();
    read_until(
        stream,
        |buf| needle.is_empty() || buf.windows(needle.len()).any(|w| w == needle),
        timeout,
        &label,
    )
}

/// Reads until `done` accepts everything received so far; `label` names what is awaited in
/// errors.
pub(crate) fn read_until(
    stream: &mut UnixStream,
    done: impl Fn(&[u8]) -> bool,
    timeout: Duration,
    label: &str,
) -> Result<Vec<u8>, KitError> {
    let previous = stream
        .read_timeout()
        .map_err(KitError::io("cannot read the stream's timeout"))?;
    let result = read_loop(stream, &done, timeout, label);
    // Best effort: the caller's own timeout matters less than the result.
    let _ = stream.set_read_timeout(previous);
    result
}

fn read_loop(
    stream: &mut UnixStream,
    done: &dyn Fn(&[u8]) -> bool,
    timeout: Duration,
    label: &str,
) -> Result<Vec<u8>, KitError> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if done(&received) {
            return Ok(received);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KitError::OutputTimeout {
                needle: label.to_owned(),
                timeout,
                tail: tail(&received),
            });
        }
        // A zero timeout would mean "block forever", hence the floor.
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(KitError::io("cannot set the stream's read timeout"))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(KitError::OutputClosed {
                    needle: label.to_owned(),
                    tail: tail(&received),
                })
            }
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(KitError::io("cannot read from the stream")(e)),
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let skip = text.chars().count().saturating_sub(TAIL_CHARS);
    text.chars().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn finds_a_needle_split_across_writes() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            b.write_all(b"hello wo").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            b.write_all(b"rld and more").unwrap();
            b
        });
        let got = wait_for_output(&mut a, b"world", Duration::from_secs(5)).unwrap();
        assert!(got.starts_with(b"hello world"));
        drop(writer.join().unwrap());
        assert_eq!(a.read_timeout().unwrap(), None);
    }

    #[test]
    fn times_out_with_the_tail() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"nope").unwrap();
        let err = wait_for_output(&mut a, b"yes", Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, KitError::OutputTimeout { ref tail, .. } if tail == "nope"));
    }

    #[test]
    fn reports_a_closed_stream() {
        let (mut a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = wait_for_output(&mut a, b"x", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, KitError::OutputClosed { .. }));
    }
}
