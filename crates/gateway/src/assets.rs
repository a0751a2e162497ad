//! The web console's files, embedded in the binary at build time: the
//! page's own files from `web/`, xterm.js from its npm package, and noVNC's
//! ES module tree (`core/…`, `vendor/…`), served under `/novnc/`.
//!
//! Built without the `web` feature (the fuzz workspace does), the gateway
//! has no pages: each page says so, and no asset is found.

#[cfg(feature = "web")]
macro_rules! web {
    ($path:literal) => {
        include_bytes!(concat!(env!("VMGATE_WEB_DIR"), "/", $path))
    };
}

/// (URL name under `/assets/`, content type, bytes)
#[cfg(feature = "web")]
pub static ASSETS: &[(&str, &str, &[u8])] = &[
    ("console.js", "text/javascript", web!("console.js")),
    ("console.css", "text/css", web!("console.css")),
    ("screen.js", "text/javascript", web!("screen.js")),
    ("audio.js", "text/javascript", web!("audio.js")),
    (
        "audio-worklet.js",
        "text/javascript",
        web!("audio-worklet.js"),
    ),
    ("embed.js", "text/javascript", web!("embed.js")),
    ("media.js", "text/javascript", web!("media.js")),
    (
        "xterm.js",
        "text/javascript",
        web!("node_modules/@xterm/xterm/lib/xterm.js"),
    ),
    (
        "xterm.css",
        "text/css",
        web!("node_modules/@xterm/xterm/css/xterm.css"),
    ),
    (
        "addon-fit.js",
        "text/javascript",
        web!("node_modules/@xterm/addon-fit/lib/addon-fit.js"),
    ),
];

#[cfg(feature = "web")]
pub static CONSOLE_HTML: &[u8] = web!("console.html");
#[cfg(feature = "web")]
pub static INDEX_HTML: &[u8] = web!("index.html");
#[cfg(feature = "web")]
pub static SCREEN_HTML: &[u8] = web!("screen.html");

/// noVNC's `.js` files by path under its package (`core/rfb.js`).
#[cfg(feature = "web")]
static NOVNC: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/novnc.rs"));

#[cfg(not(feature = "web"))]
mod absent {
    const NO_WEB: &[u8] = b"<!doctype html><title>vmgate</title><p>This gateway was built without its web console.</p>\n";
    pub static ASSETS: &[(&str, &str, &[u8])] = &[];
    pub static CONSOLE_HTML: &[u8] = NO_WEB;
    pub static INDEX_HTML: &[u8] = NO_WEB;
    pub static SCREEN_HTML: &[u8] = NO_WEB;
    pub(super) static NOVNC: &[(&str, &[u8])] = &[];
}
#[cfg(not(feature = "web"))]
use absent::NOVNC;
#[cfg(not(feature = "web"))]
pub use absent::{ASSETS, CONSOLE_HTML, INDEX_HTML, SCREEN_HTML};

/// A noVNC module, by its path under `/novnc/`.
pub fn novnc(path: &str) -> Option<(&'static str, &'static [u8])> {
    NOVNC
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| ("text/javascript", *bytes))
}

pub fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, mime, bytes)| (*mime, *bytes))
}
