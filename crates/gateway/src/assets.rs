//! The web console's files, embedded in the binary at build time: the
//! page's own files from `web/` and xterm.js from its npm package.

macro_rules! web {
    ($path:literal) => {
        include_bytes!(concat!(env!("VMGATE_WEB_DIR"), "/", $path))
    };
}

/// (URL name under `/assets/`, content type, bytes)
pub static ASSETS: &[(&str, &str, &[u8])] = &[
    ("console.js", "text/javascript", web!("console.js")),
    ("console.css", "text/css", web!("console.css")),
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

pub fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, mime, bytes)| (*mime, *bytes))
}
