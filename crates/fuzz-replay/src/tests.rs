//! Runs a target over its corpus and random inputs; checks that every
//! target is a `[[bin]]` of the cargo-fuzz workspace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// xorshift64*: inputs follow from the seed (the target's name), so a run
/// is the same every time and a failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One input: a length that is mostly short, and bytes of one kind
/// (any, printable text, boundary values, mostly zero).
fn random_input(rng: &mut Rng, buf: &mut Vec<u8>) {
    buf.clear();
    let len = match rng.below(4) {
        0 => rng.below(16),
        1 => rng.below(64),
        2 => rng.below(512),
        _ => rng.below(8192),
    };
    let kind = rng.below(4);
    for _ in 0..len {
        let b = match kind {
            0 => rng.next() as u8,
            1 => b' ' + rng.below(95) as u8,
            2 => [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            _ if rng.below(4) == 0 => rng.next() as u8,
            _ => 0,
        };
        buf.push(b);
    }
}

/// Runs `run` on `data`; on a panic, says which input before passing it on.
fn run_one(name: &str, run: fn(&[u8]), data: &[u8], what: &dyn Fn() -> String) {
    if let Err(e) = std::panic::catch_unwind(|| run(data)) {
        let head: String = data.iter().take(256).map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "fuzz target {name} failed on {} ({} bytes, first 256 in hex): {head}",
            what(),
            data.len()
        );
        std::panic::resume_unwind(e);
    }
}

/// Runs target `name`: its corpus (`fuzz/corpus/NAME/`, when there is one)
/// and then random inputs for `VMGATE_FUZZ_REPLAY_SECS` (1 s by default).
pub fn replay(name: &str, run: fn(&[u8])) {
    let mut corpus = 0;
    if let Ok(dir) = std::fs::read_dir(fuzz_dir().join("corpus").join(name)) {
        for entry in dir {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            run_one(name, run, &data, &|| path.display().to_string());
            corpus += 1;
        }
    }
    let secs = std::env::var(crate::SECS_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed | 1);
    let mut buf = Vec::new();
    let mut runs = 0u64;
    while Instant::now() < until {
        random_input(&mut rng, &mut buf);
        run_one(name, run, &buf, &|| format!("random input {runs}"));
        runs += 1;
    }
    eprintln!("{name}: {corpus} corpus inputs, {runs} random inputs in {secs} s");
    assert!(runs > 0, "{name} ran no random input");
}

/// Every target here is a `[[bin]]` of `fuzz/Cargo.toml` and the other way
/// round, so `cargo fuzz run NAME` works for each.
#[test]
fn every_target_is_a_bin_of_the_fuzz_workspace() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&manifest).unwrap();
    let mut bins: Vec<(String, String)> = manifest["bin"]
        .as_array()
        .expect("[[bin]] entries")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    bins.sort();
    let mut targets: Vec<(String, String)> = TARGETS
        .iter()
        .map(|(n, _)| (n.to_string(), format!("fuzz_targets/{n}.rs")))
        .collect();
    targets.sort();
    assert_eq!(bins, targets);
    assert!(!TARGETS.is_empty());
}
