//! `vmgate-bench-fleet`: what the store costs (BENCHMARKS.md, "A fleet").
//!
//! Boots the test guest behind one `vmgate agent`, then measures:
//!
//! 1. session open (ticket to the gateway's first message on a serial
//!    console), sequentially, against one gateway on the embedded store and
//!    against one gateway of a fleet on a `redis-server`, interleaved so
//!    both see the same load;
//! 2. N idle read-only serial sessions spread round robin over three
//!    gateways sharing Redis: each gateway's RSS and Redis's `used_memory`
//!    before and after, per session.
//!
//! Every process is the release `vmgate` binary (`--vmgate`), started and
//! stopped here; Redis is Debian's, on a free port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use vmgate::state::{write_toml, State};
use vmgate::tickets::{mint, TicketRequest};

#[derive(Parser)]
struct Args {
    /// The `vmgate` binary the services run as.
    #[arg(long, default_value = "target/release/vmgate")]
    vmgate: PathBuf,
    /// Session opens measured per store.
    #[arg(long, default_value_t = 300)]
    opens: usize,
    /// Idle sessions held over the three gateways.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
}

/// A service process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(vmgate: &Path, args: &[&str], log: &Path) -> Result<Proc> {
    let f = std::fs::File::create(log)?;
    Ok(Proc(
        Command::new(vmgate)
            .args(args)
            .env("VMGATE_LOG", "warn,vmgate_gateway=info,vmgate_agent=info")
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", vmgate.display()))?,
    ))
}

/// The `addr=` of the first log line containing `marker`, within 30 s.
async fn listening(log: &Path, marker: &str) -> Result<std::net::SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text.lines().filter(|l| l.contains(marker)).find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.trim_matches(|c: char| !c.is_ascii_graphic()).parse().ok())
        });
        if let Some(a) = found {
            return Ok(a);
        }
        if Instant::now() > deadline {
            bail!("no {marker:?} in {}:\n{text}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens a read-only serial session at `gw` and waits for its first
/// message; the open WebSocket.
async fn open(state: &State, gw: std::net::SocketAddr) -> Result<vmgate::client::Ws> {
    let t = mint(
        state,
        &TicketRequest {
            guest: "demo".into(),
            channels: vec!["serial0".into()],
            mode: vmgate_ticket::Mode::ReadOnly,
            ttl: Duration::from_secs(300),
            max_session: None,
        },
    )?;
    let url = format!("wss://{gw}/ws/demo/serial0?ticket={}", t.ticket);
    let mut ws = vmgate::client::connect(&url, &state.public_ca()).await?;
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        Ok(Some(Ok(Message::Close(f)))) => bail!("refused: {f:?}"),
        Ok(Some(Ok(_))) => Ok(ws),
        other => bail!("no first message: {other:?}"),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Many sessions: descriptors for every one, here and in the children.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    let dir = tempfile_dir()?;
    let state = State::new(dir.join("state"));
    state.init()?;
    // Tickets are minted here; only their text is used, each sent to the
    // gateway being measured.
    state.write_gateway_info(&vmgate::state::GatewayInfo {
        url: "https://127.0.0.1:1".into(),
    })?;
    eprintln!("[fleet] booting the test guest");
    let image = vmgate_testkit::build_image(&vmgate_testkit::default_cache_dir())?;
    let guest = vmgate_testkit::Guest::boot(
        &image,
        &vmgate_testkit::BootOptions::new("demo", dir.join("guest")),
    )?;
    guest.serial_ready(Duration::from_secs(60))?;

    let agent_cfg = state.agent_config(
        "127.0.0.1:0".parse()?,
        vec![vmgate::demo::guest_config(&guest)],
    );
    write_toml(&state.path("agent.toml"), &agent_cfg)?;
    let agent_log = dir.join("agent.log");
    let _agent = spawn(
        &args.vmgate,
        &[
            "agent",
            "--config",
            state.path("agent.toml").to_str().unwrap(),
        ],
        &agent_log,
    )?;
    let agent = listening(&agent_log, "agent listening").await?;

    let mut redis = vmgate_testkit::Redis::start(&dir)?;
    let base = |store: Option<String>, file: &str| -> Result<PathBuf> {
        let mut cfg = state.gateway_config("127.0.0.1:0".parse()?, &[agent]);
        cfg.limits.max_sessions = 0;
        cfg.limits.max_sessions_per_guest = 0;
        cfg.limits.max_unauthenticated_per_address = 4096;
        cfg.store.url = store;
        cfg.store.path = Some(dir.join(format!("{file}.redb")));
        let p = dir.join(format!("{file}.toml"));
        write_toml(&p, &cfg)?;
        Ok(p)
    };
    let embedded_cfg = base(None, "embedded")?;
    let fleet_cfg = base(Some(redis.url()), "fleet")?;
    let gw = |cfg: &Path, name: &str| -> Result<(Proc, PathBuf)> {
        let log = dir.join(format!("{name}.log"));
        Ok((
            spawn(
                &args.vmgate,
                &["gateway", "--config", cfg.to_str().unwrap()],
                &log,
            )?,
            log,
        ))
    };
    let (emb, emb_log) = gw(&embedded_cfg, "embedded")?;
    let emb_addr = listening(&emb_log, "gateway listening").await?;
    let mut fleet = Vec::new();
    for i in 1..=3 {
        let (p, log) = gw(&fleet_cfg, &format!("fleet{i}"))?;
        let a = listening(&log, "gateway listening").await?;
        fleet.push((p, a));
    }
    // Every gateway routes the guest, and accepts tickets minted now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for a in std::iter::once(emb_addr).chain(fleet.iter().map(|f| f.1)) {
        open(&state, a)
            .await
            .with_context(|| format!("first session at {a}"))?;
    }

    eprintln!("[fleet] session open, {} each, interleaved", args.opens);
    let (mut e, mut r) = (Vec::new(), Vec::new());
    for _ in 0..args.opens {
        for (addr, v) in [(emb_addr, &mut e), (fleet[0].1, &mut r)] {
            let t = Instant::now();
            let ws = open(&state, addr).await?;
            v.push(t.elapsed());
            drop(ws);
        }
    }
    e.sort();
    r.sort();
    println!(
        "session open, embedded store: p50 {:.2} ms, p99 {:.2} ms ({} opens)",
        ms(pct(&e, 0.5)),
        ms(pct(&e, 0.99)),
        e.len()
    );
    println!(
        "session open, redis store:    p50 {:.2} ms, p99 {:.2} ms ({} opens)",
        ms(pct(&r, 0.5)),
        ms(pct(&r, 0.99)),
        r.len()
    );
    drop(emb);

    eprintln!("[fleet] {} idle sessions over three gateways", args.idle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redis_mem = |r: &vmgate_testkit::Redis| -> u64 {
        r.cli(&["INFO", "memory"])
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let pids: Vec<u32> = fleet.iter().map(|f| f.0 .0.id()).collect();
    let before: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let redis_before = redis_mem(&redis);
    let t = Instant::now();
    let addrs: Vec<_> = fleet.iter().map(|f| f.1).collect();
    let held: Vec<Result<vmgate::client::Ws>> = futures_util::stream::iter(0..args.idle)
        .map(|i| open(&state, addrs[i % 3]))
        .buffer_unordered(32)
        .collect()
        .await;
    let opened = held.iter().filter(|h| h.is_ok()).count();
    if let Some(Err(e)) = held.iter().find(|h| h.is_err()) {
        eprintln!("  {} failed; first: {e:#}", args.idle - opened);
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let redis_after = redis_mem(&redis);
    println!(
        "{opened} idle sessions over three gateways (opened in {:.1} s):",
        took.as_secs_f64()
    );
    for i in 0..3 {
        let n = (0..args.idle).filter(|j| j % 3 == i).count().max(1);
        println!(
            "  gateway {}: RSS {} -> {} KiB, {:.1} KiB per session",
            i + 1,
            before[i],
            after[i],
            (after[i] as f64 - before[i] as f64) / n as f64
        );
    }
    println!(
        "  redis used_memory: {} -> {} bytes, {:.0} bytes per session",
        redis_before,
        redis_after,
        (redis_after as f64 - redis_before as f64) / opened.max(1) as f64
    );
    drop(held);
    redis.kill();
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("vmgate-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
