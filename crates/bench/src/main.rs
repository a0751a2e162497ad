//! `vmgate-bench`: vmgate (all-in-one and split) against websockify and the
//! raw loopback ceiling, on one machine in one run, with one byte source and
//! one client. `bench/run` builds it and runs it; BENCHMARKS.md explains the
//! figures. Not a test: nothing here asserts a speed.
#![forbid(unsafe_code)]

mod aio;
mod client;
mod measure;
mod profile;
mod source;
mod stats;
mod systems;
mod vnc;

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
    /// Only these systems (raw, client, websockify, aio, split, tcp:
    /// split with sessions over TCP + TLS to the agent).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Only these measurements (bulk, echo, open, idle, profile, vnc).
    #[arg(long, value_delimiter = ',')]
    tests: Option<Vec<String>>,
    /// Seconds each throughput window lasts (default 1 quick, 2 full).
    #[arg(long)]
    secs: Option<u64>,
    /// Another `vmgate` binary (say, a copy of target/release/vmgate from
    /// before a change), run as a second split system beside the first:
    /// the change's before and after in one run (key `compare` for --only).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// The `--compare` binary's split system sends its sessions over TCP +
    /// TLS to the agent (`session_transport = "tcp"`), to compare with
    /// the `tcp` system: a change to that transport, before and after.
    #[arg(long)]
    compare_tcp: bool,
    /// Bulk windows are taken in this many rounds, each visiting every
    /// system (default 1: all of one system's windows, then the next's);
    /// more rounds spread a change in the machine's load over all systems.
    #[arg(long, default_value_t = 1)]
    bulk_rounds: usize,
    /// Windows each figure is the median of (default 5 quick, 7 full).
    #[arg(long)]
    windows: Option<usize>,
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
    bulk1: Option<measure::Bulk>,
    bulk8: Option<measure::Bulk>,
    echo: Option<Latency>,
    open: Option<Latency>,
    /// Keystroke to screen through the test guest's VNC.
    vnc: Option<Latency>,
    idle: Vec<Idle>,
}

/// Rounds the echo series is cut into, each visiting every system.
const ROUNDS: usize = 20;

struct Plan {
    tests: Vec<String>,
    warmup: Duration,
    /// One throughput window; each figure is the median of `windows`.
    dur: Duration,
    windows: usize,
    /// How long the gateway is profiled.
    profile: Duration,
    /// Keystrokes timed through VNC, per system.
    keys: usize,
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
    let tests = args.tests.clone().unwrap_or_else(|| {
        ["bulk", "profile", "echo", "open", "vnc", "idle"]
            .map(String::from)
            .to_vec()
    });
    let plan = if args.quick {
        Plan {
            tests: tests.clone(),
            warmup: Duration::from_millis(500),
            dur: Duration::from_secs(args.secs.unwrap_or(1)),
            windows: args.windows.unwrap_or(5),
            profile: Duration::from_secs(3),
            keys: 200,
            echo_samples: 2_000,
            open_samples: 50,
            idle: args.idle.clone().unwrap_or(vec![1_000, 10_000]),
            websockify_idle_max: args.websockify_idle_max.unwrap_or(1_000),
        }
    } else {
        Plan {
            tests,
            warmup: Duration::from_secs(1),
            dur: Duration::from_secs(args.secs.unwrap_or(2)),
            windows: args.windows.unwrap_or(7),
            profile: Duration::from_secs(5),
            keys: 200,
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

    let want = |t: &str| plan.tests.iter().any(|x| x == t);
    let wants = |key: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == key))
    };
    // The test guest boots first: the split agent's configuration names it.
    let guest = if want("vnc") && wants("split") && wants("websockify") {
        eprintln!("== booting the test guest for the VNC workload");
        note("booting the test guest", vnc::boot(&work).await)
    } else {
        None
    };
    let env = Env {
        work: work.clone(),
        client: client::Client::new(&state.public_ca())?,
        state,
        source_dir,
        ports,
        // Each bulk round takes 1 + 8 channels of every system.
        channels: [
            32.max(9 * args.bulk_rounds.clamp(1, plan.windows.max(1)) + 8),
            32,
            max_idle + plan.open_samples + 64,
        ],
        bin_dir,
        websockify: args.websockify.clone(),
        compare: args.compare.as_ref().map(std::path::absolute).transpose()?,
        compare_tcp: args.compare_tcp,
        vnc: guest.as_ref().map(|g| g.vnc_socket.clone()),
    };

    let kinds = [
        (Kind::Raw, "raw"),
        (Kind::Client, "client"),
        (Kind::Websockify, "websockify"),
        (Kind::VmgateAio, "aio"),
        (Kind::VmgateSplit, "split"),
        (Kind::VmgateSplitCompare, "compare"),
        (Kind::VmgateSplitTcp, "tcp"),
    ];
    // All systems run at once (idle but for the one measured), so the
    // latency series can be taken in interleaved rounds: a burst of load
    // from elsewhere on the machine then hits every system alike.
    let mut started: Vec<(Kind, Option<System>)> = Vec::new();
    for (kind, key) in kinds {
        if !wants(key) || (kind == Kind::VmgateSplitCompare && args.compare.is_none()) {
            continue;
        }
        let sys = note(
            &format!("starting {}", kind.label()),
            System::start(kind, &env).await,
        );
        started.push((kind, sys));
    }
    let mut rows: Vec<(Kind, Row)> = started.iter().map(|(k, _)| (*k, Row::default())).collect();
    if want("bulk") {
        // Each round visits every system; a system that fails once is
        // left out of the later rounds.
        let rounds = args.bulk_rounds.clamp(1, plan.windows.max(1));
        let per_round = plan.windows.div_ceil(rounds);
        let mut gathered: Vec<[Option<measure::BulkWindows>; 2]> =
            vec![Default::default(); started.len()];
        let mut failed = vec![false; started.len()];
        for round in 0..rounds {
            for (i, (kind, sys)) in started.iter().enumerate() {
                let Some(sys) = sys else { continue };
                if failed[i] {
                    continue;
                }
                eprintln!(
                    "== bulk: {} (round {} of {rounds})",
                    kind.label(),
                    round + 1
                );
                for (slot, streams) in [1, 8].into_iter().enumerate() {
                    let b = note(
                        &format!("bulk x{streams}"),
                        measure::bulk(sys, streams, plan.warmup, plan.dur, per_round, source.id())
                            .await,
                    );
                    eprintln!("  x{streams}: {b:?} (load {})", load_average());
                    match b {
                        Some(b) => gathered[i][slot]
                            .get_or_insert_with(Default::default)
                            .extend(b),
                        None => failed[i] = true,
                    }
                }
            }
        }
        for ((i, (_, row)), failed) in rows.iter_mut().enumerate().zip(failed) {
            if failed {
                continue;
            }
            let [one, eight] = std::mem::take(&mut gathered[i]);
            row.bulk1 = one.map(measure::BulkWindows::summary);
            row.bulk8 = eight.map(measure::BulkWindows::summary);
        }
    }
    if want("profile") {
        let splits = started.iter().filter_map(|(k, s)| match k {
            Kind::VmgateSplit => Some(("split", s.as_ref()?)),
            Kind::VmgateSplitCompare => Some(("compare", s.as_ref()?)),
            Kind::VmgateSplitTcp => Some(("tcp", s.as_ref()?)),
            _ => None,
        });
        for (name, sys) in splits {
            eprintln!("== profile: the {name} gateway during 1-stream bulk");
            let svg = work.join(format!("flamegraph-gateway-{name}.svg"));
            if let Some(p) = note("profile", profile::gateway(sys, plan.profile, &svg).await) {
                println!("{p}");
            }
        }
    }
    let live: Vec<&System> = started.iter().filter_map(|(_, s)| s.as_ref()).collect();
    let order: Vec<Kind> = rows.iter().map(|(k, _)| *k).collect();
    let index = |k: Kind| order.iter().position(|kk| *kk == k).expect("row");
    if want("echo") {
        eprintln!("== echo, {ROUNDS} interleaved rounds");
        for (k, r) in measure::echo_rounds(&live, plan.echo_samples, ROUNDS, plan.windows).await {
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
    if let Some(g) = &guest {
        let split = started
            .iter()
            .find(|(k, _)| *k == Kind::VmgateSplit)
            .and_then(|(_, s)| s.as_ref());
        if let Some(split) = split {
            eprintln!(
                "== keystroke to screen through VNC (load {})",
                load_average()
            );
            for (k, r) in measure_vnc(&env, split, g, &plan).await {
                let Some(i) = order.iter().position(|kk| *kk == k) else {
                    continue;
                };
                rows[i].1.vnc = note("vnc", r);
                eprintln!("  {}: {:?}", k.label(), rows[i].1.vnc);
            }
        }
    }
    drop(guest);
    for (_, sys) in started {
        if let Some(sys) = sys {
            sys.stop().await;
        }
    }
    if want("idle") {
        for (kind, row) in rows.iter_mut() {
            if matches!(kind, Kind::Raw | Kind::Client | Kind::VmgateSplitCompare) {
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

/// Keystroke to screen through the test guest's VNC: vmgate split (the
/// agent on QEMU's VNC socket) and a websockify on the same socket.
async fn measure_vnc(
    env: &Env,
    split: &System,
    guest: &vnc::Guest,
    plan: &Plan,
) -> Vec<(Kind, Result<Latency>)> {
    let (ws_child, ws_port) = match vnc::websockify(
        &env.websockify,
        &env.state.path("gateway-public.pem"),
        &env.state.path("gateway-public.key"),
        &guest.vnc_socket,
        &env.work.join("websockify-vnc.log"),
    )
    .await
    {
        Ok(w) => w,
        Err(e) => return vec![(Kind::Websockify, Err(e))],
    };
    let mut viewers = Vec::new();
    let mut out = Vec::new();
    let vmgate = async {
        let port = split.vmgate_port().context("not a vmgate system")?;
        let path = split.ticket_path_for(vnc::GUEST, "vnc")?;
        vnc::Viewer::connect(&env.client, port, &path).await
    };
    match vmgate.await {
        Ok(v) => viewers.push(("split", v)),
        Err(e) => out.push((Kind::VmgateSplit, Err(e))),
    }
    match vnc::Viewer::connect(&env.client, ws_port, "/").await {
        Ok(v) => viewers.push(("websockify", v)),
        Err(e) => out.push((Kind::Websockify, Err(e))),
    }
    for (name, r) in vnc::key_to_screen(&mut viewers, plan.keys, ROUNDS / 2, plan.windows).await {
        let kind = if name == "split" {
            Kind::VmgateSplit
        } else {
            Kind::Websockify
        };
        out.push((kind, r));
    }
    drop(viewers);
    drop(ws_child);
    out
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

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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
    let mib = |r: Option<&Row>, eight: bool| {
        r.and_then(|r| {
            if eight {
                r.bulk8.as_ref()
            } else {
                r.bulk1.as_ref()
            }
        })
        .map(|b| b.mib_s)
    };
    let ws = get(Kind::Websockify);
    let wsb1 = mib(ws, false);
    let wsb8 = mib(ws, true);
    let wsp99 = ws.and_then(|r| r.echo).map(|l| l.p99);

    println!();
    println!(
        "Throughput backend -> client (median of {} windows of {} s, after {} ms warm-up), MiB/s; ratio = system / websockify",
        plan.windows,
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
        let b1 = r.bulk1.as_ref().map(|b| b.mib_s);
        let b8 = r.bulk8.as_ref().map(|b| b.mib_s);
        println!(
            "| {:<34} | {:>9} | {:>7} | {:>12} | {:>7} | {:>14} |",
            k.label(),
            f0(b1),
            ratio_s(stats::ratio(b1, wsb1)),
            f0(b8),
            ratio_s(stats::ratio(b8, wsb8)),
            f2(r.bulk1.as_ref().and_then(|b| b.cpu_ms_per_mib)),
        );
    }
    println!();
    println!(
        "CPU ms per MiB relayed, from /proc per-thread times (median of {} windows), 1 stream / 8 streams; \
         'pipeline' adds the byte source and the harness's client, and '2-core cap' is 2000 ms/s over it: \
         the most MiB/s two cores could carry at that cost",
        plan.windows
    );
    println!(
        "| {:<34} | {:>13} | {:>13} | {:>13} | {:>13} | {:>13} | {:>13} | {:>15} |",
        "system", "whole", "gateway", "agent", "source", "client", "pipeline", "2-core cap MiB/s"
    );
    println!(
        "|{:-<36}|{:->15}|{:->15}|{:->15}|{:->15}|{:->15}|{:->15}|{:->17}|",
        "", "", "", "", "", "", "", ""
    );
    for (k, r) in rows {
        let pair = |f: &dyn Fn(&measure::Bulk) -> Option<f64>| {
            format!(
                "{} / {}",
                f2(r.bulk1.as_ref().and_then(f)),
                f2(r.bulk8.as_ref().and_then(f))
            )
        };
        let pipeline = |b: &measure::Bulk| {
            let rest: f64 = ["source", "client"].iter().filter_map(|p| b.part(p)).sum();
            Some(b.cpu_ms_per_mib.unwrap_or(0.0) + rest)
        };
        let cap = |b: &measure::Bulk| pipeline(b).filter(|v| *v > 0.0).map(|v| 2000.0 / v);
        println!(
            "| {:<34} | {:>13} | {:>13} | {:>13} | {:>13} | {:>13} | {:>13} | {:>15} |",
            k.label(),
            pair(&|b| b.cpu_ms_per_mib),
            pair(&|b| b.part("gateway")),
            pair(&|b| b.part("agent")),
            pair(&|b| b.part("source")),
            pair(&|b| b.part("client")),
            pair(&pipeline),
            format!(
                "{} / {}",
                f0(r.bulk1.as_ref().and_then(cap)),
                f0(r.bulk8.as_ref().and_then(cap))
            ),
        );
    }
    println!();
    println!(
        "Echo of 64-byte messages ({} round trips, one at a time, percentiles the median of {} windows), µs; session open (fresh ticket to first byte, {} samples), ms; ratio = websockify / system",
        plan.echo_samples, plan.windows, plan.open_samples
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
            f2(o.map(|l| l.p50 / 1000.0)),
            f2(o.map(|l| l.p99 / 1000.0)),
        );
    }
    let vnc_rows: Vec<_> = rows.iter().filter_map(|(k, r)| Some((k, r.vnc?))).collect();
    if !vnc_rows.is_empty() {
        println!();
        println!("Keystroke to screen through the test guest's VNC (a key sent, until the FramebufferUpdate showing it), ms");
        println!(
            "| {:<34} | {:>8} | {:>8} | {:>8} | {:>7} |",
            "system", "p50", "p99", "max", "keys"
        );
        println!(
            "|{:-<36}|{:->10}|{:->10}|{:->10}|{:->9}|",
            "", "", "", "", ""
        );
        for (k, l) in vnc_rows {
            println!(
                "| {:<34} | {:>8.2} | {:>8.2} | {:>8.2} | {:>7} |",
                k.label(),
                l.p50 / 1000.0,
                l.p99 / 1000.0,
                l.max / 1000.0,
                l.samples
            );
        }
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
    let client = get(Kind::Client);
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
    let echo = |r: Option<&Row>| r.and_then(|r| r.echo);
    let s = SummaryInputs {
        bulk_ratio: stats::ratio(mib(aio, false), wsb1),
        split_bulk_ratio: stats::ratio(mib(split, false), wsb1),
        p99_echo_ratio: p99,
        idle_kib_per_session: idle_kib,
        sessions_held: held,
        gateway_cpu_ratio: stats::ratio(
            split.and_then(|r| r.bulk1.as_ref()?.part("gateway")),
            ws.and_then(|r| r.bulk1.as_ref()?.cpu_ms_per_mib),
        ),
        bulk_vs_client_ceiling: stats::ratio(mib(split, false), mib(client, false)),
        streams8_ratio: stats::ratio(mib(split, true), wsb8),
        echo_p50_over_ceiling_us: echo(split).zip(echo(client)).map(|(s, c)| s.p50 - c.p50),
        key_to_screen_p50_ratio: stats::ratio(
            ws.and_then(|r| r.vnc).map(|l| l.p50),
            split.and_then(|r| r.vnc).map(|l| l.p50),
        ),
    };
    println!();
    println!(
        "8-stream aggregate vs websockify: all-in-one {}, split {}",
        ratio_s(stats::ratio(mib(aio, true), wsb8)),
        ratio_s(s.streams8_ratio),
    );
    println!();
    println!("Issue 17's targets (split mode unless said), this run:");
    let open_p99 = split.and_then(|r| r.open).map(|l| l.p99 / 1000.0);
    let targets: [(&str, String, Option<bool>); 7] = [
        (
            "gateway CPU per MiB / websockify's <= 0.50",
            f2(s.gateway_cpu_ratio),
            s.gateway_cpu_ratio.map(|v| v <= 0.5),
        ),
        (
            "1-stream bulk / client ceiling >= 0.80",
            f2(s.bulk_vs_client_ceiling),
            s.bulk_vs_client_ceiling.map(|v| v >= 0.8),
        ),
        (
            "8 streams / websockify's >= 2.00",
            f2(s.streams8_ratio),
            s.streams8_ratio.map(|v| v >= 2.0),
        ),
        (
            "echo p50 - client ceiling's <= 40 µs",
            f0(s.echo_p50_over_ceiling_us),
            s.echo_p50_over_ceiling_us.map(|v| v <= 40.0),
        ),
        (
            "echo p99 / websockify's <= 0.50",
            f2(stats::ratio(echo(split).map(|l| l.p99), wsp99)),
            stats::ratio(echo(split).map(|l| l.p99), wsp99).map(|v| v <= 0.5),
        ),
        (
            "idle KiB per session (gateway + agent) <= 32",
            f0(idle_kib),
            idle_kib.map(|v| v <= 32.0),
        ),
        (
            "session open p99 <= 10 ms",
            f2(open_p99),
            open_p99.map(|v| v <= 10.0),
        ),
    ];
    for (what, value, met) in targets {
        let met = match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        println!("  {what:<46} {value:>8}  {met}");
    }
    if quick {
        println!("(quick run: short windows on a shared machine, figures are noisy)");
    }
    println!("load average at the end: {}", load_average());
    println!("{}", stats::summary_line(&s));
}

fn f2(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}
