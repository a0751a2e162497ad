//! `vmgate-bench`: vmgate (all-in-one and split) against websockify and the
//! raw loopback ceiling, on one machine in one run, with one byte source and
//! one client. `bench/run` builds it and runs it; BENCHMARKS.md explains the
//! figures. Not a test: nothing here asserts a speed.
#![forbid(unsafe_code)]

mod aio;
mod client;
mod measure;
mod source;
mod stats;
mod systems;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::io::AsyncBufReadExt;
use vmgate::state::State;

use crate::measure::Idle;
use crate::stats::{Latency, SummaryInputs};
use crate::systems::{Env, Kind, System};

#[derive(Parser)]
#[command(
    name = "vmgate-bench",
    about = "vmgate against websockify, side by side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Short measurements (under 5 minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Work directory (state, sockets, logs).
    #[arg(long, default_value = "target/bench-work")]
    work: PathBuf,
    /// websockify executable.
    #[arg(long, default_value = "target/bench-venv/bin/websockify")]
    websockify: PathBuf,
    /// Idle session counts to try (comma-separated); default 1000,10000.
    #[arg(long, value_delimiter = ',')]
    idle: Option<Vec<usize>>,
    /// Most idle sessions asked of websockify (a process per session).
    #[arg(long)]
    websockify_idle_max: Option<usize>,
    /// Only these systems (raw, client, websockify, aio, split).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Only these measurements (bulk, echo, open, idle).
    #[arg(long, value_delimiter = ',')]
    tests: Option<Vec<String>>,
    /// Seconds each throughput window lasts (default 2 quick, 5 full).
    #[arg(long)]
    secs: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) The byte source.
    Source {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// (internal) Gateway and agent in one process.
    Aio {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        agent_config: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Some(Cmd::Source { dir, cert, key }) => rt.block_on(source::run(&dir, &cert, &key)),
        Some(Cmd::Aio {
            state,
            agent_config,
        }) => {
            let filter = tracing_subscriber::EnvFilter::try_from_env("VMGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            rt.block_on(aio::run(&state, &agent_config))
        }
        None => rt.block_on(run(cli.run)),
    }
}

/// Raises the open-file limit for this process and its children (the
/// systems inherit it): 10,000 sessions hold 20,000+ descriptors in one
/// process. As root the hard limit can be raised too.
fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if setrlimit(Resource::RLIMIT_NOFILE, want.max(soft), want.max(hard)).is_ok() {
        return want.max(soft);
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|l| l.0)
        .unwrap_or(soft)
}

/// Everything measured of one system; `None` where it does not apply or failed.
#[derive(Default)]
struct Row {
    bulk1: Option<f64>,
    bulk8: Option<f64>,
    /// CPU ms per MiB of the system's processes, 1 stream.
    cpu1: Option<f64>,
    echo: Option<Latency>,
    open: Option<Latency>,
    idle: Vec<Idle>,
}

/// Rounds the echo series is cut into, each visiting every system.
const ROUNDS: usize = 20;

struct Plan {
    tests: Vec<String>,
    warmup: Duration,
    dur: Duration,
    echo_samples: usize,
    open_samples: usize,
    idle: Vec<usize>,
    websockify_idle_max: usize,
}

fn note<T>(what: &str, r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("  {what}: FAILED: {e:#}");
            None
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let tests = args
        .tests
        .clone()
        .unwrap_or_else(|| ["bulk", "echo", "open", "idle"].map(String::from).to_vec());
    let plan = if args.quick {
        Plan {
            tests: tests.clone(),
            warmup: Duration::from_millis(500),
            dur: Duration::from_secs(args.secs.unwrap_or(2)),
            echo_samples: 2_000,
            open_samples: 50,
            idle: args.idle.clone().unwrap_or(vec![1_000, 10_000]),
            websockify_idle_max: args.websockify_idle_max.unwrap_or(1_000),
        }
    } else {
        Plan {
            tests,
            warmup: Duration::from_secs(1),
            dur: Duration::from_secs(args.secs.unwrap_or(5)),
            echo_samples: 10_000,
            open_samples: 200,
            idle: args.idle.clone().unwrap_or(vec![1_000, 10_000]),
            websockify_idle_max: args.websockify_idle_max.unwrap_or(1_000),
        }
    };
    let nofile = raise_nofile(65_536);
    let max_idle = plan.idle.iter().copied().max().unwrap_or(0);
    println!(
        "# vmgate-bench ({})",
        if args.quick { "quick" } else { "full" }
    );
    println!("machine: {}", machine());
    println!("open-file limit (ulimit -n) for the harness and every system: {nofile}");
    if (nofile as usize) < 2 * max_idle + 1000 {
        println!("  (below 2 x {max_idle} + 1000: the largest idle level may not fit)");
    }

    let work = std::path::absolute(&args.work)?;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let state = State::new(work.join("state"));
    state.init()?;
    let source_dir = work.join("source");
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("executable has no directory")?
        .to_path_buf();

    // The byte source, a process of its own.
    let mut source = tokio::process::Command::new(bin_dir.join("vmgate-bench"))
        .arg("source")
        .arg("--dir")
        .arg(&source_dir)
        .arg("--cert")
        .arg(state.path("gateway-public.pem"))
        .arg("--key")
        .arg(state.path("gateway-public.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut line = String::new();
    tokio::io::BufReader::new(source.stdout.take().expect("piped"))
        .read_line(&mut line)
        .await?;
    let ports: source::Ports =
        serde_json::from_str(line.trim()).with_context(|| format!("source said {line:?}"))?;

    let env = Env {
        work: work.clone(),
        client: client::Client::new(&state.public_ca())?,
        state,
        source_dir,
        ports,
        channels: [32, 32, max_idle + plan.open_samples + 64],
        bin_dir,
        websockify: args.websockify.clone(),
    };

    let kinds = [
        (Kind::Raw, "raw"),
        (Kind::Client, "client"),
        (Kind::Websockify, "websockify"),
        (Kind::VmgateAio, "aio"),
        (Kind::VmgateSplit, "split"),
    ];
    // All systems run at once (idle but for the one measured), so the
    // latency series can be taken in interleaved rounds: a burst of load
    // from elsewhere on the machine then hits every system alike.
    let mut started: Vec<(Kind, Option<System>)> = Vec::new();
    for (kind, key) in kinds {
        if let Some(only) = &args.only {
            if !only.iter().any(|o| o == key) {
                continue;
            }
        }
        let sys = note(
            &format!("starting {}", kind.label()),
            System::start(kind, &env).await,
        );
        started.push((kind, sys));
    }
    let mut rows: Vec<(Kind, Row)> = started.iter().map(|(k, _)| (*k, Row::default())).collect();
    let want = |t: &str| plan.tests.iter().any(|x| x == t);
    if want("bulk") {
        for ((kind, sys), (_, row)) in started.iter().zip(rows.iter_mut()) {
            let Some(sys) = sys else { continue };
            eprintln!("== bulk: {}", kind.label());
            let b1 = note(
                "bulk x1",
                measure::bulk(sys, 1, plan.warmup, plan.dur).await,
            );
            eprintln!("  x1: {b1:?}");
            row.bulk1 = b1.map(|b| b.mib_s);
            row.cpu1 = b1.and_then(|b| b.cpu_ms_per_mib);
            let b8 = note(
                "bulk x8",
                measure::bulk(sys, 8, plan.warmup, plan.dur).await,
            );
            eprintln!("  x8: {b8:?}");
            row.bulk8 = b8.map(|b| b.mib_s);
        }
    }
    let live: Vec<&System> = started.iter().filter_map(|(_, s)| s.as_ref()).collect();
    let order: Vec<Kind> = rows.iter().map(|(k, _)| *k).collect();
    let index = |k: Kind| order.iter().position(|kk| *kk == k).expect("row");
    if want("echo") {
        eprintln!("== echo, {ROUNDS} interleaved rounds");
        for (k, r) in measure::echo_rounds(&live, plan.echo_samples, ROUNDS).await {
            let i = index(k);
            rows[i].1.echo = note("echo", r);
            eprintln!("  {}: {:?}", k.label(), rows[i].1.echo);
        }
    }
    if want("open") {
        eprintln!("== session open, interleaved");
        for (k, r) in measure::open_rounds(&live, plan.open_samples).await {
            let i = index(k);
            rows[i].1.open = note("open", r);
            eprintln!("  {}: {:?}", k.label(), rows[i].1.open);
        }
    }
    for (_, sys) in started {
        if let Some(sys) = sys {
            sys.stop().await;
        }
    }
    if want("idle") {
        for (kind, row) in rows.iter_mut() {
            if matches!(kind, Kind::Raw | Kind::Client) {
                continue;
            }
            eprintln!("== idle: {}", kind.label());
            row.idle = measure_idle(*kind, &env, &plan).await;
        }
    }
    drop(source.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(2), source.wait()).await;

    report(&rows, &plan, args.quick);
    Ok(())
}

/// Idle sessions, each level on a freshly started system: memory freed by
/// the earlier tests would otherwise be reused and hide what sessions cost.
async fn measure_idle(kind: Kind, env: &Env, plan: &Plan) -> Vec<Idle> {
    let mut out = Vec::new();
    for &n in &plan.idle {
        if kind == Kind::Websockify && n > plan.websockify_idle_max {
            eprintln!("  idle x{n}: skipped for websockify (one process per session)");
            continue;
        }
        let Some(sys) = note("restart", System::start(kind, env).await) else {
            break;
        };
        if sys.mem_pid.is_none() {
            sys.stop().await;
            break;
        }
        let r = note(&format!("idle x{n}"), measure::idle(&sys, n, 32).await);
        sys.stop().await;
        let Some(i) = r else { break };
        eprintln!("  idle x{n}: {i:?}");
        let stop = i.opened < n || i.new_session.is_err();
        out.push(i);
        if stop {
            break;
        }
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "nproc {n}, {cpu}, {} GiB RAM, load average at start {}",
        mem / (1024 * 1024),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn f0(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

fn ratio_s(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

fn report(rows: &[(Kind, Row)], plan: &Plan, quick: bool) {
    let get = |k: Kind| rows.iter().find(|(kk, _)| *kk == k).map(|(_, r)| r);
    let ws = get(Kind::Websockify);
    let wsb1 = ws.and_then(|r| r.bulk1);
    let wsb8 = ws.and_then(|r| r.bulk8);
    let wsp99 = ws.and_then(|r| r.echo).map(|l| l.p99);

    println!();
    println!(
        "Throughput backend -> client ({} s after {} ms warm-up), MiB/s; ratio = system / websockify",
        plan.dur.as_secs(),
        plan.warmup.as_millis()
    );
    println!(
        "| {:<34} | {:>9} | {:>7} | {:>12} | {:>7} | {:>14} |",
        "system", "1 stream", "ratio", "8 streams", "ratio", "CPU ms per MiB"
    );
    println!(
        "|{:-<36}|{:->11}|{:->9}|{:->14}|{:->9}|{:->16}|",
        "", "", "", "", "", ""
    );
    for (k, r) in rows {
        println!(
            "| {:<34} | {:>9} | {:>7} | {:>12} | {:>7} | {:>14} |",
            k.label(),
            f0(r.bulk1),
            ratio_s(stats::ratio(r.bulk1, wsb1)),
            f0(r.bulk8),
            ratio_s(stats::ratio(r.bulk8, wsb8)),
            r.cpu1
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!();
    println!(
        "Echo of 64-byte messages ({} round trips, one at a time), µs; session open (fresh ticket to first byte, {} samples), ms; ratio = websockify / system",
        plan.echo_samples, plan.open_samples
    );
    println!(
        "| {:<34} | {:>8} | {:>8} | {:>8} | {:>9} | {:>8} | {:>8} |",
        "system", "echo p50", "echo p99", "echo max", "p99 ratio", "open p50", "open p99"
    );
    println!(
        "|{:-<36}|{:->10}|{:->10}|{:->10}|{:->11}|{:->10}|{:->10}|",
        "", "", "", "", "", "", ""
    );
    for (k, r) in rows {
        let e = r.echo;
        let o = r.open;
        println!(
            "| {:<34} | {:>8} | {:>8} | {:>8} | {:>9} | {:>8} | {:>8} |",
            k.label(),
            f0(e.map(|l| l.p50)),
            f0(e.map(|l| l.p99)),
            f0(e.map(|l| l.max)),
            ratio_s(stats::ratio(wsp99, e.map(|l| l.p99))),
            o.map(|l| format!("{:.2}", l.p50 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            o.map(|l| format!("{:.2}", l.p99 / 1000.0))
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!();
    println!("Idle sessions: memory per session (RSS delta / N of the gateway process; all-in-one: gateway+agent; websockify: sum over its processes, PSS alongside), and one more session opened while they are held");
    println!(
        "| {:<34} | {:>6} | {:>6} | {:>9} | {:>9} | {:>11} | {:>8} | {:>14} |",
        "system", "wanted", "held", "KiB RSS", "KiB PSS", "agent KiB", "open s", "new session"
    );
    println!(
        "|{:-<36}|{:->8}|{:->8}|{:->11}|{:->11}|{:->13}|{:->10}|{:->16}|",
        "", "", "", "", "", "", "", ""
    );
    for (k, r) in rows {
        for i in &r.idle {
            println!(
                "| {:<34} | {:>6} | {:>6} | {:>9.1} | {:>9.1} | {:>11} | {:>8.1} | {:>14} |",
                k.label(),
                i.wanted,
                i.opened,
                i.rss_kib,
                i.pss_kib,
                i.other_rss_kib
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into()),
                i.open_secs,
                match &i.new_session {
                    Ok(d) => format!("yes, {:.1} ms", d.as_secs_f64() * 1e3),
                    Err(_) => "NO".into(),
                }
            );
        }
    }
    for (k, r) in rows {
        for i in &r.idle {
            if let Err(e) = &i.new_session {
                println!("  {} x{}: new session failed: {e}", k.label(), i.wanted);
            }
        }
    }

    let aio = get(Kind::VmgateAio);
    let split = get(Kind::VmgateSplit);
    // Latency: the worse of the two vmgate setups.
    let p99 = [aio, split]
        .iter()
        .filter_map(|r| stats::ratio(wsp99, r.and_then(|r| r.echo).map(|l| l.p99)))
        .reduce(f64::min);
    // Sessions held: the largest level the split gateway (a gateway
    // process of its own, as deployed) held in full while still opening a
    // new session; memory: gateway and agent together per session at that
    // level. The all-in-one figures are in the table.
    let held_level = |r: Option<&Row>| {
        r.and_then(|r| {
            r.idle
                .iter()
                .filter(|i| i.opened == i.wanted && i.new_session.is_ok())
                .max_by_key(|i| i.wanted)
                .cloned()
        })
    };
    let best = held_level(split).or_else(|| held_level(aio));
    let held = best.as_ref().map(|i| i.wanted).unwrap_or(0);
    let idle_kib = best
        .as_ref()
        .map(|i| i.rss_kib + i.other_rss_kib.unwrap_or(0.0));
    let s = SummaryInputs {
        bulk_ratio: stats::ratio(aio.and_then(|r| r.bulk1), wsb1),
        split_bulk_ratio: stats::ratio(split.and_then(|r| r.bulk1), wsb1),
        p99_echo_ratio: p99,
        idle_kib_per_session: idle_kib,
        sessions_held: held,
    };
    println!();
    println!(
        "8-stream aggregate vs websockify: all-in-one {}, split {}",
        ratio_s(stats::ratio(aio.and_then(|r| r.bulk8), wsb8)),
        ratio_s(stats::ratio(split.and_then(|r| r.bulk8), wsb8)),
    );
    if quick {
        println!("(quick run: short windows on a shared machine, figures are noisy)");
    }
    println!("{}", stats::summary_line(&s));
}
