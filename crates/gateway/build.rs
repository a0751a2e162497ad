//! Checks that the web console's npm packages are installed (by
//! `scripts/setup`, never by the build), so the gateway can embed them
//! (`src/assets.rs`); the page's own files are in `web/`. Without the `web`
//! feature there is nothing to embed and nothing to check.
//! noVNC is a tree of ES modules: its `core/` and `vendor/` files are listed
//! in `$OUT_DIR/novnc.rs`, one `include_bytes!` each.

use std::path::Path;

fn main() {
    if std::env::var_os("CARGO_FEATURE_WEB").is_none() {
        return;
    }
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
        "screen.html",
        "screen.js",
        "audio.js",
        "audio-worklet.js",
        "embed.js",
        "media.js",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(f).display());
    }
    let markers = [
        web.join("node_modules/@xterm/xterm/lib/xterm.js"),
        web.join("node_modules/@novnc/novnc/core/rfb.js"),
    ];
    for m in &markers {
        println!("cargo:rerun-if-changed={}", m.display());
    }
    if let Some(m) = markers.iter().find(|m| !m.exists()) {
        // The build never runs npm nor reaches the network: the packages
        // come from `scripts/setup`. One line says so (no panic trace).
        println!(
            "cargo::error=the web console's npm packages are missing ({} not found): run `bash scripts/setup`",
            m.display()
        );
        return;
    }
    println!("cargo:rustc-env=VMGATE_WEB_DIR={}", web.display());
    novnc_table(&web.join("node_modules/@novnc/novnc"));
}

/// Writes the table of noVNC's module files: (path under the package, bytes).
fn novnc_table(pkg: &Path) {
    let mut files = Vec::new();
    for top in ["core", "vendor"] {
        walk(&pkg.join(top), &mut files);
    }
    files.sort();
    let mut out = String::from("&[\n");
    for f in &files {
        let rel = f.strip_prefix(pkg).expect("under the package");
        let rel = rel.to_str().expect("UTF-8 path");
        out.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            f.display().to_string()
        ));
    }
    out.push(']');
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("novnc.rs");
    std::fs::write(dest, out).expect("writing novnc.rs");
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for e in entries {
        let path = e.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|x| x == "js") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
}
