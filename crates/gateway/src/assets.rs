//! The web console's files, embedded in the binary at build time: the
//! page's own files from `web/`, xterm.js from its npm package, and noVNC's
//! ES module tree (`core/…`, `vendor/…`), served under `/novnc/`.

macro_rules! web {
    ($path:literal) => {
        include_bytes!(concat!(env!("VMGATE_WEB_DIR"), "/", $path))
    };
}

/// (URL name under `/assets/`, content type, bytes)
pub static ASSETS: &[(&str, &str, &[u8])] = &[
    ("console.js", "text/javascript", web!("console.js")),
    ("console.css", "text/css", web!("console.css")),
    ("screen.js", "text/javascript", web!("screen.js")),
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

pub static CONSOLE_HTML: &[u8] = web!("console.html");
pub static INDEX_HTML: &[u8] = web!("index.html");
pub static SCREEN_HTML: &[u8] = web!("screen.html");

/// noVNC's `.js` files by path under its package (`core/rfb.js`).
static NOVNC: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/novnc.rs"));

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
