//! Turns each cargo-fuzz target in `fuzz/fuzz_targets/` into a module of
//! this crate's tests, unchanged but for two lines: `#![no_main]` goes, and
//! the file's `//!` header becomes a plain comment (it no longer opens a
//! file). `fuzz_target!` then resolves to this crate's `libfuzzer_sys`
//! stand-in, which makes the target's body a function.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = String::new();
    for name in &names {
        let path = dir.join(format!("{name}.rs"));
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path).unwrap();
        writeln!(out, "pub mod {name} {{\n    use crate::libfuzzer_sys;").unwrap();
        for line in text.lines() {
            if line.trim() == "#![no_main]" {
                continue;
            }
            let line = match line.strip_prefix("//!") {
                Some(rest) => format!("//{rest}"),
                None => line.to_string(),
            };
            writeln!(out, "{line}").unwrap();
        }
        writeln!(
            out,
            "    #[test]\n    fn replay() {{\n        crate::tests::replay({name:?}, fuzz_target_entry);\n    }}\n}}"
        )
        .unwrap();
    }
    writeln!(out, "pub const TARGETS: &[(&str, crate::Target)] = &[").unwrap();
    for name in &names {
        writeln!(out, "    ({name:?}, {name}::fuzz_target_entry),").unwrap();
    }
    writeln!(out, "];").unwrap();
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("targets.rs");
    std::fs::write(dest, out).unwrap();
}
