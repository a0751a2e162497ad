//! A flamegraph of the split gateway while it relays one bulk stream:
//! `perf record` of the gateway process alone, `perf script`, then folded
//! and drawn with the `inferno` crate into an SVG beside the run's logs.
//! Profiles come before optimising (issue 17); BENCHMARKS.md links the
//! before and after.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use crate::source::Mode;
use crate::systems::System;

/// Samples per second `perf` takes (an odd number, not in step with timers).
const FREQUENCY: &str = "997";
/// Bytes of stack `perf` copies per sample for DWARF unwinding (Rust
/// release builds have no frame pointers).
const STACK_BYTES: &str = "16384";

/// Profiles the gateway of `sys` (split) for `secs` under 1-stream bulk and
/// writes the flamegraph to `svg`; returns a line saying where and what.
pub async fn gateway(sys: &System, secs: Duration, svg: &Path) -> Result<String> {
    let pid = sys.mem_pid.context("no gateway process")?;
    let total = Arc::new(AtomicU64::new(0));
    let mut conn = sys.open(Mode::Bulk, false).await?;
    let reader = {
        let total = total.clone();
        tokio::spawn(async move {
            while let Ok(n) = conn.recv().await {
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let data = svg.with_extension("perf.data");
    let b0 = total.load(Ordering::Relaxed);
    let record = Command::new("perf")
        .args(["record", "-q", "-F", FREQUENCY, "--call-graph"])
        .arg(format!("dwarf,{STACK_BYTES}"))
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .arg("--")
        .arg("sleep")
        .arg(secs.as_secs_f64().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(secs + Duration::from_secs(30), record).await;
    let relayed = total.load(Ordering::Relaxed) - b0;
    reader.abort();
    let out = out
        .context("perf record did not end in time")?
        .context("running perf (the linux-perf package)")?;
    if !out.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // `--no-inline`: resolving inlined frames through addr2line takes
    // minutes on a release build; the frames that remain name the crates.
    let script = Command::new("perf")
        .args(["script", "--no-inline", "-i"])
        .arg(&data)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let script = tokio::time::timeout(Duration::from_secs(240), script)
        .await
        .context("perf script did not end in time")??;
    if !script.status.success() || script.stdout.is_empty() {
        bail!("perf script gave nothing (status {})", script.status);
    }
    let (svg_path, title) = (
        svg.to_path_buf(),
        format!(
            "vmgate split gateway ({}), 1-stream bulk, {:.0} MiB relayed in {} s",
            svg.file_stem().and_then(|s| s.to_str()).unwrap_or("?"),
            relayed as f64 / (1024.0 * 1024.0),
            secs.as_secs()
        ),
    );
    let cpu_ns = tokio::task::spawn_blocking(move || draw(&script.stdout, &title, &svg_path))
        .await
        .context("drawing the flamegraph")??;
    Ok(format!(
        "flamegraph of the gateway: {} ({:.0} ms of CPU sampled at {FREQUENCY} Hz over {} s; folded stacks beside it)",
        svg.display(),
        cpu_ns as f64 / 1e6,
        secs.as_secs()
    ))
}

/// Folds `perf script` output, keeps the folded stacks beside `svg`
/// (`.folded`, for reading by hand), and draws it; returns the CPU time the
/// samples stand for, in ns (`perf` weighs each cpu-clock sample by its
/// period).
fn draw(script: &[u8], title: &str, svg: &Path) -> Result<u64> {
    use inferno::collapse::Collapse;
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default())
        .collapse(script, &mut folded)
        .context("folding perf script output")?;
    let folded = String::from_utf8(folded).context("folded stacks are not UTF-8")?;
    std::fs::write(svg.with_extension("folded"), &folded)?;
    let cpu_ns = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    let file = std::fs::File::create(svg).with_context(|| format!("creating {}", svg.display()))?;
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), std::io::BufWriter::new(file))
        .context("drawing the flamegraph")?;
    Ok(cpu_ns)
}
