//! What a gateway remembers of a viewer so that its screen can move to
//! another QEMU when the guest live-migrates (docs/migration.md).
//!
//! A new RFB connection on the new node starts from nothing: its pixel
//! format is the server's default, it knows no encodings, and the guest
//! (whose keyboard state migrated with it) still holds down every key the
//! viewer pressed and has not released yet. [`ViewerState`] keeps, from
//! the viewer's messages as the filter passes them on, the last
//! SetPixelFormat and SetEncodings (to replay), the keys and buttons down
//! (to release) and the pointer's position. Sans-IO: messages go in whole,
//! bytes to send come out.

use crate::{server, Kind};

/// The most keys remembered as held down at once. A viewer that holds
/// more is either broken or hostile; the ones past this are not released
/// after a move (counted in [`ViewerState::keys_forgotten`]).
pub const MAX_KEYS_DOWN: usize = 64;

/// The viewer's state that a new server connection must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewerState {
    /// The last SetPixelFormat, whole.
    pixel_format: Option<[u8; 20]>,
    /// The last SetEncodings as passed on, whole (at most
    /// `4 + 4 * MAX_ENCODINGS` bytes, the parser's bound).
    encodings: Option<Vec<u8>>,
    /// Keysyms down (KeyEvent), in the order pressed.
    keys: Vec<u32>,
    /// Keys down by QEMU extended key event: (keysym, keycode).
    qemu_keys: Vec<(u32, u32)>,
    /// The pointer's button mask and position, as last sent.
    buttons: u8,
    pointer: (u16, u16),
    /// Key presses not remembered because [`MAX_KEYS_DOWN`] were down.
    pub keys_forgotten: u64,
}

fn be16(m: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([m[at], m[at + 1]])
}

fn be32(m: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
}

impl ViewerState {
    /// Takes note of one whole message the viewer sent (and the filter
    /// passed on); messages of other kinds, or of the wrong length, are
    /// ignored.
    pub fn record(&mut self, kind: Kind, msg: &[u8]) {
        match (kind, msg.len()) {
            (Kind::SetPixelFormat, 20) => {
                let mut pf = [0; 20];
                pf.copy_from_slice(msg);
                self.pixel_format = Some(pf);
            }
            (Kind::SetEncodings, n) if n >= 4 => self.encodings = Some(msg.to_vec()),
            (Kind::KeyEvent, 8) => {
                let key = be32(msg, 4);
                press(&mut self.keys, key, msg[1] != 0, &mut self.keys_forgotten);
            }
            (Kind::QemuExtendedKeyEvent, 12) => {
                let key = (be32(msg, 4), be32(msg, 8));
                let down = be16(msg, 2) != 0;
                press(&mut self.qemu_keys, key, down, &mut self.keys_forgotten);
            }
            (Kind::PointerEvent, 6) => {
                self.buttons = msg[1];
                self.pointer = (be16(msg, 2), be16(msg, 4));
            }
            _ => {}
        }
    }

    /// The 16-byte pixel format the viewer last set, if it set one.
    pub fn pixel_format(&self) -> Option<[u8; 16]> {
        self.pixel_format.map(|m| {
            let mut pf = [0; 16];
            pf.copy_from_slice(&m[4..]);
            pf
        })
    }

    /// Whether the viewer's last SetEncodings lists `encoding`.
    pub fn lists(&self, encoding: i32) -> bool {
        self.encodings.as_ref().is_some_and(|m| {
            m[4..]
                .chunks_exact(4)
                .any(|e| i32::from_be_bytes([e[0], e[1], e[2], e[3]]) == encoding)
        })
    }

    /// What a new server connection is sent once its handshake is over:
    /// the viewer's last SetPixelFormat and SetEncodings, then a request
    /// for the whole `width` × `height` screen (non-incremental).
    pub fn replay(&self, width: u16, height: u16) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(pf) = &self.pixel_format {
            out.extend_from_slice(pf);
        }
        if let Some(e) = &self.encodings {
            out.extend_from_slice(e);
        }
        out.extend_from_slice(&[3, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&width.to_be_bytes());
        out.extend_from_slice(&height.to_be_bytes());
        out
    }

    /// Releases, on the new server, every key and button the viewer held
    /// down on the old one (the guest's keyboard state moved with it), and
    /// forgets them: the messages to send.
    ///
    /// Each is pressed there first, then released: QEMU passes a key-up to
    /// the guest only for a key it saw go down on that display
    /// (`ui/kbd-state.c` drops the others), and a button-up only as a
    /// change from the buttons that connection last sent; the new node's
    /// QEMU has seen neither. To the guest, which holds them down already,
    /// the press is a repeat: nothing for a modifier or a button, one
    /// autorepeat for a held character key (which was repeating anyway).
    pub fn release(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for key in self.keys.drain(..).rev() {
            for down in [1, 0] {
                out.extend_from_slice(&[4, down, 0, 0]);
                out.extend_from_slice(&key.to_be_bytes());
            }
        }
        for (sym, code) in self.qemu_keys.drain(..).rev() {
            for down in [1, 0] {
                out.extend_from_slice(&[255, 0, 0, down]);
                out.extend_from_slice(&sym.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
            }
        }
        if self.buttons != 0 {
            for mask in [std::mem::take(&mut self.buttons), 0] {
                out.push(5);
                out.push(mask);
                out.extend_from_slice(&self.pointer.0.to_be_bytes());
                out.extend_from_slice(&self.pointer.1.to_be_bytes());
            }
        }
        out
    }

    /// Whether any key or button is down.
    pub fn holds_input(&self) -> bool {
        !self.keys.is_empty() || !self.qemu_keys.is_empty() || self.buttons != 0
    }
}

/// A key went down (remembered, once) or up (forgotten).
fn press<K: PartialEq>(keys: &mut Vec<K>, key: K, down: bool, forgotten: &mut u64) {
    let at = keys.iter().position(|k| *k == key);
    match (down, at) {
        (true, None) if keys.len() < MAX_KEYS_DOWN => keys.push(key),
        (true, None) => *forgotten += 1,
        (false, Some(i)) => {
            keys.remove(i);
        }
        _ => {}
    }
}

/// A FramebufferUpdate telling a viewer the screen is now `width` ×
/// `height` (one DesktopSize rectangle).
pub fn desktop_size(width: u16, height: u16) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 1, 0, 0, 0, 0];
    out.extend_from_slice(&width.to_be_bytes());
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&server::DESKTOP_SIZE.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(down: bool, sym: u32) -> Vec<u8> {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&sym.to_be_bytes());
        m
    }

    #[test]
    fn keys_and_buttons_down_are_released_once() {
        let mut v = ViewerState::default();
        v.record(Kind::KeyEvent, &key(true, 0x61));
        v.record(Kind::KeyEvent, &key(true, 0xffe1));
        v.record(Kind::KeyEvent, &key(true, 0x61)); // auto-repeat
        v.record(Kind::KeyEvent, &key(false, 0x61));
        v.record(Kind::KeyEvent, &key(true, 0x62));
        v.record(
            Kind::QemuExtendedKeyEvent,
            &[255, 0, 0, 1, 0, 0, 0, 0x63, 0, 0, 0, 0x2e],
        );
        v.record(Kind::PointerEvent, &[5, 1, 0, 10, 0, 20]);
        assert!(v.holds_input());
        // Each pressed on the new server, then released.
        let mut want = key(true, 0x62);
        want.extend(key(false, 0x62));
        want.extend(key(true, 0xffe1));
        want.extend(key(false, 0xffe1));
        want.extend([255, 0, 0, 1, 0, 0, 0, 0x63, 0, 0, 0, 0x2e]);
        want.extend([255, 0, 0, 0, 0, 0, 0, 0x63, 0, 0, 0, 0x2e]);
        want.extend([5, 1, 0, 10, 0, 20]);
        want.extend([5, 0, 0, 10, 0, 20]);
        assert_eq!(v.release(), want);
        assert!(!v.holds_input());
        assert_eq!(v.release(), Vec::<u8>::new());
    }

    #[test]
    fn at_most_so_many_keys_are_remembered() {
        let mut v = ViewerState::default();
        for k in 0..(MAX_KEYS_DOWN as u32 + 3) {
            v.record(Kind::KeyEvent, &key(true, k));
        }
        assert_eq!(v.keys_forgotten, 3);
        assert_eq!(v.release().len(), 2 * 8 * MAX_KEYS_DOWN);
    }

    #[test]
    fn the_last_format_and_encodings_are_replayed_with_a_full_update_request() {
        let mut v = ViewerState::default();
        assert_eq!(v.replay(720, 400), [3, 0, 0, 0, 0, 0, 2, 208, 1, 144]);
        let pf = [
            0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ];
        v.record(Kind::SetPixelFormat, &pf);
        let enc = [2, 0, 0, 2, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0x21];
        v.record(Kind::SetEncodings, &[2, 0, 0, 1, 0, 0, 0, 0]);
        v.record(Kind::SetEncodings, &enc);
        assert!(v.lists(server::DESKTOP_SIZE) && v.lists(5) && !v.lists(0));
        assert_eq!(v.pixel_format().unwrap(), pf[4..]);
        let r = v.replay(640, 480);
        assert_eq!(&r[..20], &pf);
        assert_eq!(&r[20..32], &enc);
        assert_eq!(&r[32..], &[3, 0, 0, 0, 0, 0, 2, 128, 1, 224]);
        assert_eq!(
            desktop_size(640, 480),
            [0, 0, 0, 1, 0, 0, 0, 0, 2, 128, 1, 224, 0xff, 0xff, 0xff, 0x21]
        );
    }
}
