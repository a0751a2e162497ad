//! The fuzz targets in `fuzz/fuzz_targets/` (a cargo-fuzz workspace of its
//! own, which needs nightly sanitizer flags to fuzz with coverage) run here
//! as plain tests on stable, in `cargo test`: each target over its corpus
//! in `fuzz/corpus/NAME/` if there is one, then over random inputs for a
//! time ([`SECS_VAR`], 1 s by default). That keeps every target compiling
//! against today's code and catches what shallow inputs break (panics,
//! arithmetic overflow in a debug build); `fuzz/run` is the real fuzzing.
//!
//! `build.rs` includes each target's source as a module; the
//! `fuzz_target!` it names is the stand-in below, which makes the target's
//! body `pub fn fuzz_target_entry(data: &[u8])`.

#![forbid(unsafe_code)]

/// A target's body: one input, no result (it panics on a failure).
pub type Target = fn(&[u8]);

/// Seconds of random inputs per target.
pub const SECS_VAR: &str = "VMGATE_FUZZ_REPLAY_SECS";

/// What the targets import as `libfuzzer_sys`.
#[cfg(test)]
mod libfuzzer_sys {
    macro_rules! fuzz_target {
        (|$data:ident: &[u8]| $body:block) => {
            pub fn fuzz_target_entry($data: &[u8]) $body
        };
    }
    pub(crate) use fuzz_target;
}

#[cfg(test)]
mod targets {
    include!(concat!(env!("OUT_DIR"), "/targets.rs"));
}

#[cfg(test)]
mod tests;
