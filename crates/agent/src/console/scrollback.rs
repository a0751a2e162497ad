//! A bounded scrollback: the last N bytes a console printed.

use std::collections::VecDeque;

/// The newest `capacity` bytes of a console's output. Older bytes fall off
/// the front; the append-only log keeps everything.
#[derive(Debug)]
pub struct Scrollback {
    buf: VecDeque<u8>,
    capacity: usize,
}

impl Scrollback {
    pub fn new(capacity: usize) -> Scrollback {
        Scrollback {
            buf: VecDeque::new(),
            capacity,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.capacity);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }

    /// The whole scrollback, oldest byte first.
    pub fn snapshot(&self) -> Vec<u8> {
        let (a, b) = self.buf.as_slices();
        [a, b].concat()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_within_capacity() {
        let mut s = Scrollback::new(8);
        s.push(b"hello ");
        assert_eq!(s.snapshot(), b"hello ");
        s.push(b"world");
        assert_eq!(s.snapshot(), b"lo world");
        s.push(b"0123456789abc");
        assert_eq!(s.snapshot(), b"56789abc");
        assert_eq!(s.len(), 8);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut s = Scrollback::new(0);
        s.push(b"abc");
        assert!(s.is_empty());
    }
}
