//! Serial console logs on disk: size-capped, rotated, private, and written
//! off the async runtime.
//!
//! A guest decides how much its console prints, so nothing here may let it
//! fill the node's disk or hold up its own console:
//!
//! * **Cap.** `<log_dir>/<guest>.<console>.log` is rotated before it would
//!   pass `max_bytes`: `.log` becomes `.log.1`, `.log.1` becomes `.log.2`,
//!   … up to `.log.<keep>`, whose previous content is overwritten. A
//!   console never holds more than `max_bytes × (keep + 1)` bytes on disk.
//!   A file is never written past the cap: a chunk that does not fit is
//!   split across the rotation, and output that cannot be written within
//!   the cap (a rotation failed) is dropped and counted.
//! * **Private.** Files are created 0640 (an existing file is set to 0640)
//!   with `O_NOFOLLOW`: a symbolic link planted at the path is refused, with
//!   the reason logged and counted, and nothing is written through it. Only
//!   regular files are written. The directory is created 0750
//!   ([`ConsoleLogs::new`]).
//! * **Never in the way.** The hub hands each chunk to [`ConsoleLog::write`],
//!   which never blocks: it goes through a bounded queue to the console's
//!   own writer thread. When the thread falls behind (a slow or stuck disk)
//!   the chunk is dropped and counted; the scrollback and the sessions
//!   still get it, and the guest's console never waits for the disk.
//! * **Errors.** Write, open and rotation failures are logged at most once
//!   per [`REPORT_EVERY`] per console, with how many were not logged since,
//!   and counted ([`LogStats`]).
//! * **External rotation.** [`ConsoleLogs::reopen`] (the agent calls it on
//!   SIGHUP) makes every writer reopen its file before its next write, for
//!   logrotate's `create` mode.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::fcntl::OFlag;

use crate::config::ConsoleLogConfig;

/// How often a recurring failure of one console's log is reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Chunks of output (each at most a serial read, 4 KiB) queued for a
/// console's writer thread: a disk may stall this long before output is
/// dropped from the log, and at most this much memory waits for it.
const QUEUE_DEPTH: usize = 256;
/// Mode of the log files.
const FILE_MODE: u32 = 0o640;
/// Mode of the log directory when the agent creates it.
const DIR_MODE: u32 = 0o750;

/// Why a console log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A symbolic link sits where the log file goes.
    #[error("{0} is a symbolic link: refused, nothing is written through it (remove it; the agent creates the file itself)")]
    Symlink(PathBuf),
    /// Something other than a regular file sits there.
    #[error("{0} is not a regular file: refused (remove it; the agent creates the file itself)")]
    NotRegular(PathBuf),
    /// The directory could not be created.
    #[error("cannot create the console log directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    /// Opening, renaming or removing a file failed.
    #[error("console log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Counters of every console log of an agent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of output the log did not get (the writer fell behind, a
    /// write failed, no file could be opened); the scrollback had them.
    pub dropped_bytes: u64,
    /// Chunks dropped because the writer thread's queue was full.
    pub dropped_chunks: u64,
    /// Failed writes, rotations and opens (each counted once).
    pub errors: u64,
    /// Opens refused for what was at the path (a symbolic link, not a
    /// regular file).
    pub refused: u64,
    /// Rotations done.
    pub rotations: u64,
}

#[derive(Default)]
struct Counters {
    dropped_bytes: AtomicU64,
    dropped_chunks: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
    rotations: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Every console log of one agent: where and how large, and the reopen
/// signal. Cheap to clone.
#[derive(Clone)]
pub struct ConsoleLogs {
    inner: Arc<LogsInner>,
}

struct LogsInner {
    dir: PathBuf,
    cfg: ConsoleLogConfig,
    /// Bumped by [`ConsoleLogs::reopen`]: a writer that sees a new value
    /// reopens its file before it writes.
    generation: AtomicU64,
    /// Each live writer's queue, to wake it for a reopen.
    writers: Mutex<HashMap<u64, SyncSender<Msg>>>,
    next_id: AtomicU64,
    counters: Counters,
    /// Tests hold this to stand for a disk that does not answer.
    #[cfg(test)]
    stall: Mutex<()>,
}

enum Msg {
    Data(Bytes),
    /// Look at the generation now (it changed).
    Wake,
}

impl ConsoleLogs {
    /// Creates `dir` 0750 if it does not exist (a directory that exists is
    /// left as it is, with a warning if anybody may write into it).
    pub fn new(dir: &Path, cfg: ConsoleLogConfig) -> Result<ConsoleLogs, LogError> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) => {
                let mode = m.permissions().mode();
                if mode & 0o002 != 0 {
                    tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o7777),
                        "the console log directory is world-writable: anybody could plant files there (chmod 0750 it)");
                }
            }
            Err(_) => {
                let dir_err = |source| LogError::Dir {
                    path: dir.to_path_buf(),
                    source,
                };
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(dir)
                    .map_err(dir_err)?;
                // Exactly 0750, whatever the umask.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(dir_err)?;
            }
        }
        Ok(ConsoleLogs {
            inner: Arc::new(LogsInner {
                dir: dir.to_path_buf(),
                cfg,
                generation: AtomicU64::new(0),
                writers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                counters: Counters::default(),
                #[cfg(test)]
                stall: Mutex::new(()),
            }),
        })
    }

    /// Where the log of console `console` of `guest` is written.
    pub fn path(&self, guest: &str, console: &str) -> PathBuf {
        self.inner.dir.join(format!("{guest}.{console}.log"))
    }

    /// Starts the log of one console: its writer thread opens the file.
    pub fn open(&self, guest: &str, console: &str) -> ConsoleLog {
        let path = self.path(guest, console);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let writer = Writer::new(path.clone(), self.inner.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("log {guest}.{console}"))
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            // The queue's receiver is gone: every write counts as dropped.
            Counters::add(&self.inner.counters.errors, 1);
            tracing::error!(log = %path.display(), error = %e, "cannot start the console log's writer thread; output is kept in scrollback only");
        } else {
            self.inner
                .writers
                .lock()
                .expect("writers lock")
                .insert(id, tx.clone());
        }
        ConsoleLog {
            id,
            tx,
            path,
            logs: self.inner.clone(),
            behind: Throttle::new(REPORT_EVERY),
        }
    }

    /// Makes every console log reopen its file before its next write
    /// (after an external log rotator moved it away).
    pub fn reopen(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        for tx in self.inner.writers.lock().expect("writers lock").values() {
            // A full queue is fine: the writer checks the generation before
            // each chunk.
            let _ = tx.try_send(Msg::Wake);
        }
    }

    /// Stands for a disk that does not answer until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn stall(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.stall.lock().expect("stall lock")
    }

    /// The counters so far, for every console of this agent.
    pub fn stats(&self) -> LogStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogStats {
            dropped_bytes: get(&c.dropped_bytes),
            dropped_chunks: get(&c.dropped_chunks),
            errors: get(&c.errors),
            refused: get(&c.refused),
            rotations: get(&c.rotations),
        }
    }
}

/// One console's log, as its hub holds it. Dropping it lets the writer
/// thread finish what is queued and exit.
pub struct ConsoleLog {
    id: u64,
    tx: SyncSender<Msg>,
    path: PathBuf,
    logs: Arc<LogsInner>,
    /// Reports of a writer that fell behind.
    behind: Throttle,
}

impl ConsoleLog {
    /// Queues `chunk` for the file. Never blocks: when the writer is behind
    /// the chunk is dropped from the log (counted, reported at a bounded
    /// rate).
    pub fn write(&mut self, chunk: Bytes) {
        let len = chunk.len() as u64;
        match self.tx.try_send(Msg::Data(chunk)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let c = &self.logs.counters;
                Counters::add(&c.dropped_bytes, len);
                Counters::add(&c.dropped_chunks, 1);
                if let Some(more) = self.behind.hit(Instant::now()) {
                    tracing::warn!(log = %self.path.display(), chunks_dropped_since_last_report = more,
                        total_bytes_dropped = c.dropped_bytes.load(Ordering::Relaxed),
                        "console log writer is behind (slow disk?): output dropped from the log; the scrollback has it");
                }
            }
        }
    }
}

impl Drop for ConsoleLog {
    fn drop(&mut self) {
        self.logs
            .writers
            .lock()
            .expect("writers lock")
            .remove(&self.id);
    }
}

/// Says when to report a recurring failure: the first at once, then at
/// most once per `every`, with how many were not reported in between.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One more failure at `now`: `Some(n)` to report it now, `n` being
    /// the failures not reported since the last report.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The open log file and how much of the cap it uses.
struct Current {
    file: File,
    size: u64,
}

/// A console's writer thread.
struct Writer {
    path: PathBuf,
    logs: Arc<LogsInner>,
    current: Option<Current>,
    /// The generation the file was opened at.
    generation: u64,
    /// When opening last failed: retried after [`REPORT_EVERY`] or a reopen.
    failed_open: Option<Instant>,
    errors: Throttle,
}

impl Writer {
    fn new(path: PathBuf, logs: Arc<LogsInner>) -> Writer {
        Writer {
            path,
            logs,
            current: None,
            generation: 0,
            failed_open: None,
            errors: Throttle::new(REPORT_EVERY),
        }
    }

    /// Writes until every [`ConsoleLog`] handle is gone and the queue is
    /// empty.
    fn run(mut self, rx: Receiver<Msg>) {
        self.generation = self.logs.generation.load(Ordering::SeqCst);
        self.open();
        for msg in rx {
            #[cfg(test)]
            drop(self.logs.stall.lock());
            let generation = self.logs.generation.load(Ordering::SeqCst);
            if generation != self.generation {
                self.generation = generation;
                tracing::info!(log = %self.path.display(), "reopening the console log");
                self.current = None;
                self.open();
            }
            if let Msg::Data(chunk) = msg {
                self.write(&chunk);
            }
        }
    }

    /// Opens the file (counting and reporting a failure).
    fn open(&mut self) {
        match open_log(&self.path) {
            Ok(c) => {
                self.current = Some(c);
                self.failed_open = None;
            }
            Err(e) => {
                let c = &self.logs.counters;
                if matches!(e, LogError::Symlink(_) | LogError::NotRegular(_)) {
                    Counters::add(&c.refused, 1);
                }
                self.failed_open = Some(Instant::now());
                self.fail(
                    &e,
                    "cannot open the console log; output is kept in scrollback only",
                );
            }
        }
    }

    /// Counts a failure and reports it at a bounded rate.
    fn fail(&mut self, e: &LogError, what: &'static str) {
        Counters::add(&self.logs.counters.errors, 1);
        if let Some(more) = self.errors.hit(Instant::now()) {
            tracing::error!(error = %e, not_reported_since_last = more, "{what}");
        }
    }

    /// Writes `data`, rotating whenever the file is full; what cannot be
    /// written within the cap is dropped and counted.
    fn write(&mut self, mut data: &[u8]) {
        let max = self.logs.cfg.max_bytes;
        if self.current.is_none()
            && self
                .failed_open
                .is_none_or(|at| at.elapsed() >= REPORT_EVERY)
        {
            self.open();
        }
        while !data.is_empty() {
            let Some(cur) = self.current.as_mut() else {
                break;
            };
            if cur.size >= max {
                if let Err(e) = self.rotate() {
                    self.fail(
                        &e,
                        "console log rotation failed; output dropped from the log until it works",
                    );
                    break;
                }
                continue;
            }
            // Bounded by `data.len()`, so it fits a usize.
            let n = (max - cur.size).min(data.len() as u64) as usize;
            match cur.file.write(&data[..n]) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    self.fail_write(e);
                    break;
                }
                Ok(w) => {
                    cur.size += w as u64;
                    data = &data[w..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_write(e);
                    break;
                }
            }
        }
        if !data.is_empty() {
            Counters::add(&self.logs.counters.dropped_bytes, data.len() as u64);
        }
    }

    fn fail_write(&mut self, source: io::Error) {
        let e = LogError::Io {
            path: self.path.clone(),
            source,
        };
        self.fail(&e, "console log write failed; output dropped from the log");
        // What is in the file now decides the cap, not what we think.
        if let Some(cur) = self.current.as_mut() {
            if let Ok(m) = cur.file.metadata() {
                cur.size = m.len();
            }
        }
    }

    /// `.log.<keep-1>` → `.log.<keep>`, …, `.log` → `.log.1`, then a fresh
    /// `.log`; with `keep = 0` the file is removed and started over.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.current = None;
        let keep = self.logs.cfg.keep;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        let numbered = |k: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{k}"));
            PathBuf::from(p)
        };
        if keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path)).map_err(io_err(&self.path))?;
        } else {
            for k in (1..keep).rev() {
                let from = numbered(k);
                ignore_missing(std::fs::rename(&from, numbered(k + 1))).map_err(io_err(&from))?;
            }
            ignore_missing(std::fs::rename(&self.path, numbered(1))).map_err(io_err(&self.path))?;
        }
        Counters::add(&self.logs.counters.rotations, 1);
        let cur = open_log(&self.path)?;
        self.current = Some(cur);
        Ok(())
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Opens (creating 0640) a log file for appending, refusing a symbolic
/// link or anything but a regular file at `path`.
fn open_log(path: &Path) -> Result<Current, LogError> {
    let io_err = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        // O_NONBLOCK: opening a FIFO planted there must not hang the
        // writer (it is refused below); it means nothing for regular files.
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                LogError::Symlink(path.to_path_buf())
            }
            // A FIFO without a reader (ENXIO), a device: say what it is.
            _ if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) => {
                LogError::NotRegular(path.to_path_buf())
            }
            _ => io_err(e),
        })?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(LogError::NotRegular(path.to_path_buf()));
    }
    // A file from before (an older agent, another umask) becomes 0640.
    if meta.permissions().mode() & 0o7777 != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(io_err)?;
    }
    Ok(Current {
        file,
        size: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn logs(dir: &Path, max_bytes: u64, keep: u32) -> ConsoleLogs {
        ConsoleLogs::new(dir, ConsoleLogConfig { max_bytes, keep }).unwrap()
    }

    /// Waits (bounded: a failing test only) until `ok` holds.
    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap_or_default()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// Writes `n` chunks of `size` bytes (each chunk names its number);
    /// `n` fits the queue, so none is dropped.
    fn flood(log: &mut ConsoleLog, n: usize, size: usize) -> Vec<u8> {
        assert!(n <= QUEUE_DEPTH);
        let mut all = Vec::new();
        for i in 0..n {
            let mut chunk = format!("<{i}>").into_bytes();
            chunk.resize(size, b'.' + (i % 40) as u8);
            all.extend_from_slice(&chunk);
            log.write(Bytes::from(chunk));
        }
        all
    }

    #[test]
    fn rotation_keeps_every_file_within_the_cap_and_the_newest_output_whole() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(&dir.path().join("logs"), 1000, 2);
        let mut log = logs.open("g", "serial0");
        let path = logs.path("g", "serial0");
        // 30 KiB in chunks that do not divide the cap: rotations split them.
        let all = flood(&mut log, 100, 307);
        drop(log);
        let p = |k: u32| PathBuf::from(format!("{}.{k}", path.display()));
        let rest = all.len() % 1000;
        wait_for("the last bytes on disk", || {
            read(&path) == all[all.len() - rest..]
        });
        let (cur, one, two) = (read(&path), read(&p(1)), read(&p(2)));
        assert_eq!(one.len(), 1000);
        assert_eq!(two.len(), 1000);
        assert_eq!(
            cur.len(),
            all.len() % 1000,
            "the current file holds the rest"
        );
        assert!(!p(3).exists(), "more than `keep` rotated files");
        // Oldest to newest, they are exactly the end of the output.
        let kept = [two, one, cur].concat();
        assert!(all.ends_with(&kept), "the files are not the output's end");
        let s = logs.stats();
        assert_eq!(s.rotations, (all.len() / 1000) as u64);
        assert_eq!((s.dropped_bytes, s.errors), (0, 0), "{s:?}");
    }

    #[test]
    fn keep_zero_starts_the_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 4096, 0);
        let mut log = logs.open("g", "s");
        let all = flood(&mut log, 10, 1000);
        drop(log);
        let path = logs.path("g", "s");
        wait_for("the tail on disk", || read(&path) == all[8192..]);
        assert!(!PathBuf::from(format!("{}.1", path.display())).exists());
    }

    #[test]
    fn files_are_created_0640_in_a_directory_created_0750_and_old_files_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let logdir = dir.path().join("a/b");
        let logs = logs(&logdir, 1 << 20, 1);
        assert_eq!(mode(&logdir), 0o750);
        assert_eq!(mode(&dir.path().join("a")), 0o750);
        let mut log = logs.open("g", "s");
        log.write(Bytes::from_static(b"hello\n"));
        let path = logs.path("g", "s");
        wait_for("the file", || read(&path) == b"hello\n");
        assert_eq!(mode(&path), 0o640);

        // A file an older agent left world-readable is narrowed on open.
        let old = logs.path("g", "old");
        std::fs::write(&old, b"before\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut log = logs.open("g", "old");
        log.write(Bytes::from_static(b"after\n"));
        wait_for("appended", || read(&old) == b"before\nafter\n");
        assert_eq!(mode(&old), 0o640);
        // An existing directory is left alone.
        std::fs::set_permissions(&logdir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = ConsoleLogs::new(&logdir, ConsoleLogConfig::default()).unwrap();
        assert_eq!(mode(&logdir), 0o755);
    }

    #[test]
    fn a_symlink_at_the_log_path_is_refused_and_nothing_is_written_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(&dir.path().join("logs"), 1 << 20, 1);
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious\n").unwrap();
        let path = logs.path("g", "s");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let mut log = logs.open("g", "s");
        log.write(Bytes::from_static(b"guest output\n"));
        wait_for("the refusal counted", || logs.stats().refused == 1);
        wait_for("the chunk dropped", || logs.stats().dropped_bytes == 13);
        assert_eq!(read(&target), b"precious\n");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
        let e = open_log(&path).err().unwrap();
        assert!(matches!(e, LogError::Symlink(_)), "{e}");
        assert!(e.to_string().contains("is a symbolic link: refused"), "{e}");

        // A FIFO is refused too, without hanging the writer.
        let fifo = logs.path("g", "fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = open_log(&fifo).err().unwrap();
        assert!(matches!(e, LogError::NotRegular(_)), "{e}");

        // Once the link is gone, a reopen (SIGHUP) writes a real file.
        std::fs::remove_file(&path).unwrap();
        logs.reopen();
        log.write(Bytes::from_static(b"later\n"));
        wait_for("the new file", || read(&path) == b"later\n");
        assert_eq!(read(&target), b"precious\n");
    }

    #[test]
    fn a_symlink_planted_while_the_agent_writes_is_moved_by_the_rotation_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 4096, 1);
        let mut log = logs.open("g", "s");
        let path = logs.path("g", "s");
        log.write(Bytes::from(vec![b'a'; 4096]));
        wait_for("a full file", || read(&path).len() == 4096);
        // The file is moved away and a link put in its place.
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious\n").unwrap();
        let rotated = PathBuf::from(format!("{}.1", path.display()));
        std::fs::rename(&path, &rotated).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        // The next output rotates: the link is renamed as a name, and the
        // new file is created fresh, not opened through a link.
        log.write(Bytes::from_static(b"next\n"));
        wait_for("the new file", || {
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) && read(&path) == b"next\n"
        });
        assert_eq!(read(&target), b"precious\n");
        assert!(std::fs::symlink_metadata(&rotated).unwrap().is_symlink());
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn reopen_after_an_external_rotation_writes_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 1 << 20, 1);
        let mut log = logs.open("g", "s");
        let path = logs.path("g", "s");
        log.write(Bytes::from_static(b"old\n"));
        wait_for("old", || read(&path) == b"old\n");
        let moved = dir.path().join("moved");
        std::fs::rename(&path, &moved).unwrap();
        logs.reopen();
        // The writer reopens on the wake-up, before any more output.
        wait_for("the new file", || path.exists());
        log.write(Bytes::from_static(b"new\n"));
        wait_for("new", || read(&path) == b"new\n");
        assert_eq!(read(&moved), b"old\n");
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn a_stalled_disk_never_blocks_the_console_and_drops_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path(), 1 << 20, 1);
        let mut log = logs.open("g", "s");
        let path = logs.path("g", "s");
        let stall = logs.stall();
        // Far more than the queue holds, while the disk does not answer.
        let started = Instant::now();
        for _ in 0..(QUEUE_DEPTH * 4) {
            log.write(Bytes::from(vec![b'x'; 100]));
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "writes blocked for {took:?}");
        let s = logs.stats();
        // The writer may hold one chunk besides the queue.
        assert!(s.dropped_chunks >= (QUEUE_DEPTH * 3 - 1) as u64, "{s:?}");
        assert_eq!(s.dropped_bytes, s.dropped_chunks * 100);
        drop(stall);
        let kept = (QUEUE_DEPTH * 4) as u64 - s.dropped_chunks;
        wait_for("the queue written", || {
            read(&path).len() as u64 == kept * 100
        });
    }

    #[test]
    fn the_throttle_reports_once_per_period_with_what_it_held_back() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.hit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.hit(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(25)), Some(1));
    }
}
