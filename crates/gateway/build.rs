//! Makes sure the web console's npm packages are installed, so the gateway
//! can embed them (`src/assets.rs`); the page's own files are in `web/`.

use std::path::Path;
use std::process::Command;

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../web")
        .canonicalize()
        .expect("the web/ folder sits at the workspace root");
    for f in [
        "package.json",
        "package-lock.json",
        "console.html",
        "console.js",
        "console.css",
        "index.html",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(f).display());
    }
    let marker = web.join("node_modules/@xterm/xterm/lib/xterm.js");
    println!("cargo:rerun-if-changed={}", marker.display());
    if !marker.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&web)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!(
                "the web console's npm packages are missing and `npm ci --prefix web` failed ({other:?}): \
                 install Node.js and npm (apt-get install nodejs npm), then run `npm ci --prefix web`"
            ),
        }
    }
    println!("cargo:rustc-env=VMGATE_WEB_DIR={}", web.display());
}
