//! The measurements, identical for every system.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::source::Mode;
use crate::stats::{self, Latency};
use crate::systems::{Conn, Kind, System};

/// What a bulk measurement found: each figure the median over the windows
/// the measurement was cut into, so one noisy second does not decide it.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// Aggregate MiB/s at the client.
    pub mib_s: f64,
    /// CPU time the system's own processes spent per MiB carried (ms), a
    /// figure that other load on the machine disturbs less than MiB/s.
    pub cpu_ms_per_mib: Option<f64>,
    /// The same for each of the system's parts on its own (split: the
    /// gateway, the agent), and for the byte source and the harness's
    /// client, whose CPU the same MiB cost too.
    pub parts: Vec<(&'static str, f64)>,
}

impl Bulk {
    /// CPU ms per MiB of one part, by its name.
    pub fn part(&self, name: &str) -> Option<f64> {
        self.parts.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// The windows of bulk measurements of one system, gathered over rounds
/// (each round visits every system, so a change in the machine's load
/// falls on all of them alike), then summed up as medians ([`Bulk`]).
#[derive(Debug, Clone, Default)]
pub struct BulkWindows {
    rates: Vec<f64>,
    /// Per group (the system, then its parts, the source, the client): its
    /// name and CPU ms per MiB in each window.
    per_mib: Vec<(&'static str, Vec<f64>)>,
}

impl BulkWindows {
    /// Adds `other`'s windows (another round of the same system).
    pub fn extend(&mut self, other: BulkWindows) {
        self.rates.extend(other.rates);
        if self.per_mib.is_empty() {
            self.per_mib = other.per_mib;
            return;
        }
        for ((_, mine), (_, theirs)) in self.per_mib.iter_mut().zip(other.per_mib) {
            mine.extend(theirs);
        }
    }

    /// The medians over every window.
    pub fn summary(self) -> Bulk {
        let mut rates = self.rates;
        let mut medians = self
            .per_mib
            .into_iter()
            .map(|(name, mut v)| (name, stats::median(&mut v)));
        let cpu_ms_per_mib = medians.next().and_then(|(_, m)| m);
        let parts = medians.filter_map(|(name, m)| Some((name, m?))).collect();
        Bulk {
            mib_s: stats::median(&mut rates).unwrap_or(0.0),
            cpu_ms_per_mib,
            parts,
        }
    }
}

/// Aggregate MiB/s of `streams` bulk sessions read at once, counted in
/// `windows` windows of `window` each after `warmup`; `source` is the byte
/// source's process id.
pub async fn bulk(
    sys: &System,
    streams: usize,
    warmup: Duration,
    window: Duration,
    windows: usize,
    source: Option<u32>,
) -> Result<BulkWindows> {
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut conn = sys.open(Mode::Bulk, false).await?;
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(n) = conn.recv().await {
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    // Every group whose CPU is read at each window's edges: the system as
    // a whole first, then its parts, the source and this process.
    // The source and the client are read alone (the harness is every
    // system's parent), the system's processes with their descendants.
    let mut groups: Vec<(&'static str, Vec<u32>, bool)> = vec![("system", sys.cpu_pids(), true)];
    groups.extend(sys.cpu_parts().into_iter().map(|(n, p)| (n, p, true)));
    groups.extend(source.map(|p| ("source", vec![p], false)));
    groups.push(("client", vec![std::process::id()], false));
    let read = |groups: &[(&'static str, Vec<u32>, bool)]| -> Vec<u64> {
        groups
            .iter()
            .map(|(_, pids, with_children)| {
                pids.iter()
                    .map(|p| {
                        if *with_children {
                            cpu_ns_of_tree(*p)
                        } else {
                            cpu_ns_of(*p).unwrap_or(0)
                        }
                    })
                    .sum()
            })
            .collect()
    };
    let mut rates = Vec::with_capacity(windows);
    let mut per_mib: Vec<Vec<f64>> = vec![Vec::with_capacity(windows); groups.len()];
    let (mut b0, mut t0, mut c0) = (total.load(Ordering::Relaxed), Instant::now(), read(&groups));
    for _ in 0..windows.max(1) {
        tokio::time::sleep(window).await;
        let (b1, t1, c1) = (total.load(Ordering::Relaxed), Instant::now(), read(&groups));
        let mib = (b1 - b0) as f64 / (1024.0 * 1024.0);
        rates.push(stats::mib_per_s(b1 - b0, t1 - t0));
        for (g, series) in per_mib.iter_mut().enumerate() {
            if !groups[g].1.is_empty() && mib > 0.0 {
                series.push(c1[g].saturating_sub(c0[g]) as f64 / 1e6 / mib);
            }
        }
        (b0, t0, c0) = (b1, t1, c1);
    }
    let finished = tasks.iter().filter(|t| t.is_finished()).count();
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    anyhow::ensure!(finished == 0, "{finished} bulk stream(s) ended early");
    Ok(BulkWindows {
        rates,
        per_mib: groups
            .iter()
            .map(|(name, _, _)| *name)
            .zip(per_mib)
            .collect(),
    })
}

/// CPU time (user + system) of a process and its live descendants, in
/// nanoseconds: the sum of every thread's `schedstat`, which counts in
/// nanoseconds where `stat` counts in 10 ms ticks (too coarse for
/// one-second windows). Falls back to `stat` where `schedstat` is missing.
fn cpu_ns_of_tree(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .map(|pid| cpu_ns_of(pid).unwrap_or(0))
        .sum()
}

fn cpu_ns_of(pid: u32) -> Option<u64> {
    let from_threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| {
                    let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
                    s.split_whitespace().next()?.parse::<u64>().ok()
                })
                .sum::<u64>()
        })
        .filter(|ns| *ns > 0);
    from_threads.or_else(|| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: utime is field 14 of stat, the 12th here;
        // USER_HZ is 100 on every Linux architecture the harness runs on.
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) * 10_000_000)
    })
}

/// Round trips of 64-byte messages, one at a time, on one session per
/// system: `samples` per system in total, taken in `rounds` rounds that
/// visit every system in turn. The rounds are grouped into `windows`
/// windows, and each percentile is the median of the windows' own.
pub async fn echo_rounds(
    systems: &[&System],
    samples: usize,
    rounds: usize,
    windows: usize,
) -> Vec<(Kind, Result<Latency>)> {
    let msg = Bytes::from(vec![b'k'; 64]);
    let mut conns = Vec::new();
    for sys in systems {
        let c = async {
            let mut c = sys.open(Mode::Echo, false).await?;
            for _ in 0..samples / 10 + 10 {
                c.echo(&msg).await?;
            }
            anyhow::Ok(c)
        }
        .await;
        conns.push((sys.kind, c, Vec::new(), 0usize));
    }
    let rounds = rounds.max(1);
    let windows = windows.clamp(1, rounds);
    let per_round = samples.div_ceil(rounds);
    for round in 0..rounds {
        let window = round * windows / rounds;
        for (_, conn, series, taken) in conns.iter_mut() {
            let Ok(c) = conn else { continue };
            if series.len() <= window {
                series.push(Vec::new());
            }
            for _ in 0..per_round.min(samples - *taken) {
                let t = Instant::now();
                if let Err(e) = c.echo(&msg).await {
                    *conn = Err(e);
                    break;
                }
                series[window].push(t.elapsed());
                *taken += 1;
            }
        }
    }
    let mut out = Vec::new();
    for (kind, conn, series, _) in conns {
        out.push((
            kind,
            match conn {
                Ok(c) => {
                    c.close().await;
                    stats::latency_windows(&series).context("no samples")
                }
                Err(e) => Err(e),
            },
        ));
    }
    out
}

/// Fresh ticket in hand to the first byte of the source, one at a time,
/// visiting every system in turn for each sample.
pub async fn open_rounds(systems: &[&System], samples: usize) -> Vec<(Kind, Result<Latency>)> {
    let mut series: Vec<(Kind, Result<Vec<Duration>>)> = systems
        .iter()
        .map(|s| (s.kind, Ok(Vec::with_capacity(samples))))
        .collect();
    for _ in 0..samples {
        for (sys, (_, times)) in systems.iter().zip(series.iter_mut()) {
            let Ok(v) = times else { continue };
            let one = async {
                let path = sys.prepare(Mode::Hello)?;
                let t = Instant::now();
                let mut conn = sys.open_prepared(Mode::Hello, &path, true).await?;
                conn.recv().await?;
                let d = t.elapsed();
                conn.close().await;
                anyhow::Ok(d)
            };
            match one.await {
                Ok(d) => v.push(d),
                Err(e) => *times = Err(e),
            }
        }
    }
    series
        .into_iter()
        .map(|(k, t)| (k, t.and_then(|v| stats::latency(&v).context("no samples"))))
        .collect()
}

/// What holding many idle sessions cost.
#[derive(Debug, Clone)]
pub struct Idle {
    pub wanted: usize,
    pub opened: usize,
    /// RSS delta of the system's process(es) per session, KiB.
    pub rss_kib: f64,
    /// The same in PSS (shared pages divided among their sharers): fairer
    /// for websockify's forked processes.
    pub pss_kib: f64,
    /// RSS delta of the second process (split: the agent), KiB/session.
    pub other_rss_kib: Option<f64>,
    /// Time to the first byte of one more session opened while all are held.
    pub new_session: Result<Duration, String>,
    /// Wall time to open them all.
    pub open_secs: f64,
}

/// Opens `n` sessions to the idle source (each confirmed by its first
/// byte), measures, opens one more, then closes them all.
pub async fn idle(sys: &System, n: usize, concurrency: usize) -> Result<Idle> {
    let pid = sys.mem_pid.context("no process to measure")?;
    // Let the start-up probe's session finish closing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = Mem::of_tree(pid);
    let other_before = sys.other_pid.map(Mem::of_tree);
    let t = Instant::now();
    let paths: Vec<String> = (0..n)
        .map(|_| sys.prepare(Mode::Hello))
        .collect::<Result<_>>()?;
    let results: Vec<Result<Conn>> = futures_util::stream::iter(paths)
        .map(|path| async move {
            let mut c = sys.open_prepared(Mode::Hello, &path, true).await?;
            c.recv().await?;
            Ok(c)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let open_secs = t.elapsed().as_secs_f64();
    let mut conns = Vec::with_capacity(n);
    let mut first_err = None;
    for r in results {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &first_err {
        eprintln!(
            "  {} of {n} idle sessions failed to open; first: {e:#}",
            n - conns.len()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Mem::of_tree(pid);
    let other_after = sys.other_pid.map(Mem::of_tree);
    let new_session = async {
        let path = sys.prepare(Mode::Hello)?;
        let t = Instant::now();
        let mut c = sys.open_prepared(Mode::Hello, &path, true).await?;
        c.recv().await?;
        let d = t.elapsed();
        c.close().await;
        anyhow::Ok(d)
    }
    .await
    .map_err(|e| format!("{e:#}"));
    let opened = conns.len();
    futures_util::stream::iter(conns)
        .for_each_concurrent(256, |c| c.close())
        .await;
    Ok(Idle {
        wanted: n,
        opened,
        rss_kib: stats::kib_per_session(before.rss_kib, after.rss_kib, opened),
        pss_kib: stats::kib_per_session(before.pss_kib, after.pss_kib, opened),
        other_rss_kib: match (other_before, other_after) {
            (Some(b), Some(a)) => Some(stats::kib_per_session(b.rss_kib, a.rss_kib, opened)),
            _ => None,
        },
        new_session,
        open_secs,
    })
}

/// Memory of a process and all its descendants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl Mem {
    pub fn of_tree(root: u32) -> Mem {
        let mut m = Mem::default();
        for pid in tree(root) {
            m.rss_kib += field_kib(&format!("/proc/{pid}/status"), "VmRSS:");
            m.pss_kib += field_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
        }
        m
    }
}

fn field_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `root` and its descendants, from /proc/*/stat parent ids.
fn tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command may hold spaces and parentheses: fields after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}
