//! Virtual media end to end: an ISO on the host, served by `vmgate media`
//! over NBD through the gateway's TLS WebSocket, QUIC with mutual TLS and
//! the agent, becomes the real test guest's `/dev/sr0` (an IDE CD-ROM,
//! `-machine pc`), which the guest mounts and reads (docs/media.md).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{for_each_backend, Backend, Stack, WAIT};

// Scenarios that run against both agent backends (`qemu::…`, `libvirt::…`).
for_each_backend!(
    an_iso_is_read_by_the_guest_and_ejected,
    one_medium_per_drive_force_takes_over_and_read_only_tickets_cannot_insert,
    a_killed_client_leaves_the_guest_an_eio_and_an_empty_drive_not_a_hang,
    the_guest_stopping_ends_the_insert_with_guest_down,
);
use vmgate_testkit::CDROM_READY;

/// The drive the demo guest's agent exposes (its qdev id `cd0`).
const DRIVE: &str = "media";

/// An ISO 9660 image (xorriso) holding `blob`, `size` pseudo-random bytes;
/// returns the image and the blob's SHA-256 as `sha256sum` prints it.
fn make_iso(dir: &Path, size: usize, seed: u64) -> (PathBuf, String) {
    let tree = dir.join(format!("tree-{seed}"));
    std::fs::create_dir_all(&tree).unwrap();
    let mut x = seed | 1;
    let blob: Vec<u8> = (0..size)
        .map(|_| {
            // xorshift64: enough to make every sector different.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(tree.join("blob"), &blob).unwrap();
    let iso = dir.join(format!("x{seed}.iso"));
    let made = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .arg(&tree)
        .output()
        .expect("running xorriso (scripts/setup installs it)");
    assert!(made.status.success(), "{made:?}");
    let sum = Command::new("sha256sum")
        .arg(tree.join("blob"))
        .output()
        .unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    (iso, sum.split_whitespace().next().unwrap().to_string())
}

/// `vmgate media GUEST ARGS…` with stdout piped, stderr in `<log>.log`.
fn media_cli(stack: &Stack, log: &str, args: &[&str]) -> Child {
    let file = std::fs::File::create(stack.dir.path().join(format!("{log}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vmgate"))
        .args(["media", &stack.name])
        .args(args)
        .env("VMGATE_STATE_DIR", &stack.state.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .expect("spawning vmgate media")
}

/// Runs `vmgate media` to its end: exit status and stdout.
async fn media_run(stack: &Stack, log: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut child = media_cli(stack, log, args);
    let status = exit_status(&mut child, log, stack).await;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    (status, out)
}

/// Waits for `child` to exit, at most [`WAIT`].
async fn exit_status(child: &mut Child, log: &str, stack: &Stack) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "vmgate media ({log}) did not exit; its log:\n{}\nagent log:\n{}",
                stack.log(&format!("{log}.log")),
                stack.log("agent.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `vmgate media insert`, and waits for its `inserted` line: returns
/// the process and how long that took.
async fn insert(stack: &Stack, log: &str, args: &[&str]) -> (Child, Duration) {
    let started = Instant::now();
    let mut child = media_cli(stack, log, args);
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        line
    });
    let line = tokio::time::timeout(WAIT, line).await;
    let line = match line {
        Ok(Ok(l)) => l,
        _ => {
            let _ = child.kill();
            panic!(
                "no line from vmgate media insert; its log:\n{}\nagent log:\n{}",
                stack.log(&format!("{log}.log")),
                stack.log("agent.log")
            );
        }
    };
    assert_eq!(
        line,
        "inserted\n",
        "vmgate media insert said {line:?}; its log:\n{}\nagent log:\n{}",
        stack.log(&format!("{log}.log")),
        stack.log("agent.log")
    );
    (child, started.elapsed())
}

/// Runs `cmd` in the guest's shell; returns what it printed between
/// `<tag>=` and `=<tag>`, and how long the round trip took.
async fn guest_says(stack: &Stack, cmd: &str, tag: &str) -> (String, Duration) {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let tag = &format!("{tag}{}", CALLS.fetch_add(1, Ordering::Relaxed));
    // With --force: a session the test just dropped may hold the keyboard
    // for a moment longer.
    let t = stack.ticket(&stack.name, &["serial0"], false);
    let mut s = common::Session::new(
        stack
            .connect(&vmgate_client::url::with_force(&t.ws_url))
            .await,
    );
    s.expect_notice("you ").await;
    let sent = Instant::now();
    // The tag is assembled by the shell so the echoed command never matches.
    s.send(format!("echo {tag}\"=\"$({cmd})\"=\"{tag}\n").as_bytes())
        .await;
    let open = format!("{tag}=");
    let start = s.expect_since(0, &open).await;
    let end = s.expect_since(start, &format!("={tag}")).await;
    let took = sent.elapsed();
    let text = s.text();
    (text[start..end - tag.len() - 1].to_string(), took)
}

/// Waits in the guest until `/dev/sr0`'s size in bytes is `want` (0: no
/// medium, which cannot be opened), polling 0.2 s at a time, at most 30 s;
/// returns the size last seen. Opening the device is what makes Linux look
/// at the drive again (besides its own polling every 0.5 s).
async fn guest_sr0_size(stack: &Stack, want: u64) -> u64 {
    let size = "$(blockdev --getsize64 /dev/sr0 2>/dev/null || echo 0)";
    let cmd = format!(
        "for i in $(seq 150); do [ \"{size}\" = {want} ] && break; \
         read -t 0.2 _ <>/run/nap; done; echo {size}"
    );
    let (out, _) = guest_says(stack, &cmd, "size").await;
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("sr0 size: {out:?}"))
}

/// Waits until the guest's CD-ROM driver is up.
async fn cdrom_ready(stack: &Stack) {
    let cmd = format!(
        "for i in $(seq 150); do [ -e {CDROM_READY} ] && break; read -t 0.2 _ <>/run/nap; done; \
         [ -e {CDROM_READY} ] && echo ready"
    );
    assert_eq!(guest_says(stack, &cmd, "cd").await.0.trim(), "ready");
}

fn media_status(json: &str) -> serde_json::Value {
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json:?}"))
}

#[tokio::test]
async fn an_iso_served_by_the_cli_is_read_by_the_guest_and_ejected_on_request() {
    let mut stack = Stack::start_secure(|_| {}).await;
    let (iso, sum) = make_iso(stack.dir.path(), 8 << 20, 1);
    let iso_size = std::fs::metadata(&iso).unwrap().len();
    cdrom_ready(&stack).await;
    assert_eq!(guest_sr0_size(&stack, 0).await, 0, "the drive starts empty");

    let (mut server, took) = insert(&stack, "insert", &["insert", iso.to_str().unwrap()]).await;
    eprintln!("inserted {iso_size} bytes after {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let seen = guest_sr0_size(&stack, iso_size).await;
    assert_eq!(seen, iso_size, "the guest sees the image's size");

    let (out, took) = guest_says(
        &stack,
        "mount -t iso9660 -o ro /dev/sr0 /mnt && sha256sum /mnt/blob; umount /mnt",
        "sum",
    )
    .await;
    eprintln!("mount + sha256sum of 8 MiB took {took:?}");
    assert!(out.contains(&sum), "guest: {out:?}, host: {sum}");

    // Sequential read of the whole device, measured in the guest's shell
    // round trip (drop the page cache first: the mount read the blob).
    let (out, took) = guest_says(
        &stack,
        "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sr0 of=/dev/null bs=1M 2>&1 | tail -1",
        "dd",
    )
    .await;
    let mib_s = iso_size as f64 / (1 << 20) as f64 / took.as_secs_f64();
    eprintln!("dd of {iso_size} bytes through vmgate: {took:?}, {mib_s:.1} MiB/s ({out:?})");
    // The medium is read-only to the guest.
    let (out, _) = guest_says(
        &stack,
        "dd if=/dev/zero of=/dev/sr0 bs=2048 count=1 2>&1; echo rc=$?",
        "write",
    )
    .await;
    assert!(
        out.contains("rc=") && !out.contains("rc=0"),
        "the guest wrote: {out:?}"
    );

    // Status, from another command: what is inserted and what was read.
    let (st, out) = media_run(&stack, "status", &["status", "--json"]).await;
    assert!(st.success(), "{st:?}: {}", stack.log("status.log"));
    let status = media_status(&out);
    assert_eq!(status["drive"], DRIVE);
    let medium = &status["medium"];
    assert_eq!(medium["name"], iso.file_name().unwrap().to_str().unwrap());
    assert_eq!(medium["size"], iso_size);
    let read = medium["bytes_read"].as_u64().unwrap();
    assert!(read >= 8 << 20, "bytes_read {read}");

    // Eject from another command: both exit 0 and the guest sees no medium.
    let ejecting = Instant::now();
    let (st, out) = media_run(&stack, "eject", &["eject"]).await;
    assert!(st.success(), "{st:?}: {}", stack.log("eject.log"));
    assert!(
        out.contains("medium ejected from drive media of demo"),
        "{out:?}"
    );
    let st = exit_status(&mut server, "insert", &stack).await;
    eprintln!("eject: both commands done after {:?}", ejecting.elapsed());
    assert!(
        st.success(),
        "insert exited {st:?}: {}",
        stack.log("insert.log")
    );
    assert!(
        stack.log("insert.log").contains("ejected: the guest read"),
        "{}",
        stack.log("insert.log")
    );
    assert_eq!(guest_sr0_size(&stack, 0).await, 0);
    let (out, _) = guest_says(
        &stack,
        "mount -t iso9660 -o ro /dev/sr0 /mnt 2>&1; echo rc=$?",
        "gone",
    )
    .await;
    assert!(!out.contains("rc=0"), "mounted after the eject: {out:?}");
    let (st, out) = media_run(&stack, "status2", &["status", "--json"]).await;
    assert!(st.success());
    assert!(media_status(&out)["medium"].is_null(), "{out}");

    // The audit line and the metrics carry the bytes read.
    let audit = stack.audit();
    let end = audit
        .iter()
        .find(|l| l["event"] == "session_end" && l["channel"] == DRIVE && l["bytes_read"].is_u64())
        .unwrap_or_else(|| panic!("no media session_end line: {audit:?}"));
    assert!(end["bytes_read"].as_u64().unwrap() >= read, "{end}");
    assert_eq!(end["close_code"], 1000, "{end}");
    let metrics = stack.admin_get("/metrics").await.body;
    let total: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vmgate_media_bytes_read_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(total >= read, "{total} < {read}");
    let _ = stack.qemu_guest();
}

/// The plain round, on either backend: insert, the guest mounts the ISO and
/// checksums its file, an eject from another command ends both commands
/// with 0 and the guest sees no medium.
async fn an_iso_is_read_by_the_guest_and_ejected(backend: Backend) {
    let stack = Stack::start_backend(backend).await;
    let (iso, sum) = make_iso(stack.dir.path(), 1 << 20, 5);
    let iso_size = std::fs::metadata(&iso).unwrap().len();
    cdrom_ready(&stack).await;
    let (mut server, took) = insert(&stack, "insert", &["insert", iso.to_str().unwrap()]).await;
    eprintln!("{backend:?}: inserted after {took:?}");
    assert_eq!(guest_sr0_size(&stack, iso_size).await, iso_size);
    let (out, _) = guest_says(
        &stack,
        "mount -t iso9660 -o ro /dev/sr0 /mnt && sha256sum /mnt/blob; umount /mnt",
        "sum",
    )
    .await;
    assert!(out.contains(&sum), "guest: {out:?}, host: {sum}");
    let (st, _) = media_run(&stack, "eject", &["eject"]).await;
    assert!(st.success(), "{st:?}: {}", stack.log("eject.log"));
    let st = exit_status(&mut server, "insert", &stack).await;
    assert!(
        st.success(),
        "insert exited {st:?}: {}",
        stack.log("insert.log")
    );
    assert_eq!(guest_sr0_size(&stack, 0).await, 0);
}

async fn one_medium_per_drive_force_takes_over_and_read_only_tickets_cannot_insert(
    backend: Backend,
) {
    let stack = Stack::start_backend(backend).await;
    let (iso, _) = make_iso(stack.dir.path(), 64 << 10, 2);
    let iso = iso.to_str().unwrap();
    cdrom_ready(&stack).await;
    let (mut first, _) = insert(&stack, "first", &["insert", iso]).await;

    // A second insert is refused with its reason (4409: exit 3).
    let (st, _) = media_run(&stack, "second", &["insert", iso]).await;
    assert_eq!(st.code(), Some(3), "{}", stack.log("second.log"));
    let log = stack.log("second.log");
    assert!(
        log.contains(&format!(
            "drive media of {} holds x2.iso (session",
            stack.name
        )) && log.contains("(4409)"),
        "{log}"
    );

    // A read-only ticket cannot insert, nor eject (4403: exit 3), at the
    // gateway; it may ask what is in the drive.
    let ro = stack.ticket(&stack.name, &[DRIVE], true);
    for (log, args) in [
        ("ro-insert", vec!["--url", &ro.url, "insert", iso]),
        ("ro-eject", vec!["--url", &ro.url, "eject"]),
    ] {
        let ro = stack.ticket(&stack.name, &[DRIVE], true);
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if a.starts_with("https://") {
                    ro.url.as_str()
                } else {
                    a
                }
            })
            .collect();
        let (st, _) = media_run(&stack, log, &args).await;
        assert_eq!(
            st.code(),
            Some(3),
            "{log}: {}",
            stack.log(&format!("{log}.log"))
        );
        let text = stack.log(&format!("{log}.log"));
        assert!(
            text.contains("a read-only ticket cannot insert or eject media")
                && text.contains("(4403)"),
            "{log}: {text}"
        );
    }
    let gw = stack.log("gateway.log");
    assert!(gw.contains("ending a media session"), "{gw}");
    let ro = stack.ticket(&stack.name, &[DRIVE], true);
    let (st, out) = media_run(&stack, "ro-status", &["--url", &ro.url, "status", "--json"]).await;
    assert!(st.success(), "{}", stack.log("ro-status.log"));
    assert_eq!(media_status(&out)["medium"]["name"], "x2.iso");

    // --force takes the drive: the first server ends 4411 (exit 5).
    let (mut third, _) = insert(
        &stack,
        "third",
        &["insert", "--force", "--name", "third", iso],
    )
    .await;
    let st = exit_status(&mut first, "first", &stack).await;
    assert_eq!(st.code(), Some(5), "{}", stack.log("first.log"));
    assert!(
        stack.log("first.log").contains("(4411)"),
        "{}",
        stack.log("first.log")
    );
    let (_, out) = media_run(&stack, "status", &["status", "--json"]).await;
    assert_eq!(media_status(&out)["medium"]["name"], "third");
    // SIGINT: the clean eject, exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(third.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = exit_status(&mut third, "third", &stack).await;
    assert!(st.success(), "{st:?}: {}", stack.log("third.log"));
    let (_, out) = media_run(&stack, "status2", &["status", "--json"]).await;
    assert!(media_status(&out)["medium"].is_null(), "{out}");
}

async fn a_killed_client_leaves_the_guest_an_eio_and_an_empty_drive_not_a_hang(backend: Backend) {
    let mut stack = Stack::start_backend(backend).await;
    let (iso, _) = make_iso(stack.dir.path(), 8 << 20, 3);
    cdrom_ready(&stack).await;
    let (mut server, _) = insert(&stack, "insert", &["insert", iso.to_str().unwrap()]).await;
    let iso_size = std::fs::metadata(&iso).unwrap().len();
    assert_eq!(guest_sr0_size(&stack, iso_size).await, iso_size);

    // The guest reads one sector at a time, slowly, until a read fails;
    // its serial console is a separate session, untouched by the medium's.
    let mut reader = stack.serial().await;
    reader.expect_notice("you hold the keyboard").await;
    // Markers are assembled by the shell, so the echoed command never
    // matches them.
    reader
        .send(
            b"i=0; while dd if=/dev/sr0 of=/dev/null bs=2048 count=1 skip=$i 2>/tmp/dd.err; \
              do i=$((i+1)); [ $i = 20 ] && echo read\"\"ing-$i; read -t 0.05 _ <>/run/nap; done; \
              echo \"stop\"\"ped-at-$i err=$(tr '\\n' ' ' </tmp/dd.err)=e\"\"nd\"\n",
        )
        .await;
    reader.expect_since(0, "reading-20").await;
    // Stopped, the client answers nothing: the guest's next read (it reads
    // every 50 ms) waits in flight, as the agent's status shows. Then the
    // client dies with it unanswered.
    let pid = nix::unistd::Pid::from_raw(server.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let waiting = Instant::now();
    loop {
        let (_, out) = media_run(&stack, "status", &["status", "--json"]).await;
        if media_status(&out)["medium"]["in_flight"].as_u64() >= Some(1) {
            break;
        }
        assert!(waiting.elapsed() < WAIT, "no read in flight: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Instant::now();
    server.kill().unwrap();
    let _ = server.wait();
    let at = reader.expect_since(0, "stopped-at-").await;
    let stopped = killed.elapsed();
    let end = reader.expect_since(at, "=end").await;
    let error_line = reader.text()[at..end].to_string();
    eprintln!("client killed: the guest's read failed after {stopped:?} ({error_line:?})");
    assert!(stopped < Duration::from_secs(10), "{stopped:?}");
    // An I/O error, not "No medium found": the read was in flight.
    assert!(
        error_line.contains("I/O error") || error_line.contains("Input/output error"),
        "{error_line:?}"
    );
    drop(reader);
    // The drive is empty, QEMU still runs, the agent logged why.
    assert_eq!(guest_sr0_size(&stack, 0).await, 0);
    if let Some(qemu) = stack.guest.as_mut() {
        assert!(qemu.is_running());
    }
    // The guest's serial console answers: QEMU runs.
    assert_eq!(guest_says(&stack, "echo alive", "alive").await.0, "alive");
    let agent = stack.log("agent.log");
    assert!(agent.contains("medium ejected"), "{agent}");
    // The drive is free again.
    let (mut again, _) = insert(&stack, "again", &["insert", iso.to_str().unwrap()]).await;
    again.kill().unwrap();
    let _ = again.wait();
}

/// A client that breaks NBD after the insert: the session ends with the
/// reason (4400), the agent logs it, and the drive is empty again.
#[tokio::test]
async fn a_reply_to_no_request_ends_the_session_with_its_reason_and_ejects() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use vmgate_nbd::media::{encode, nbd_messages, Decoder, Direction, Item};

    let stack = Stack::start().await;
    cdrom_ready(&stack).await;
    let t = stack.ticket(&stack.name, &[DRIVE], false);
    let mut ws = stack.connect(&t.ws_url).await;
    let mut server = vmgate_nbd::Server::new(vmgate_nbd::Export {
        name: String::new(),
        size: 1 << 20,
    });
    let send = |b: bytes::Bytes| Message::Binary(b);
    ws.send(send(encode(&Item::Insert { name: "bad".into() })))
        .await
        .unwrap();
    for m in nbd_messages(&server.take_output()) {
        ws.send(send(m)).await.unwrap();
    }
    let mut decoder = Decoder::new(Direction::AgentToClient);
    let deadline = Instant::now() + WAIT;
    let mut inserted = false;
    let close = loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("the session ended in time")
            .expect("a message")
            .expect("no error");
        let data = match msg {
            Message::Binary(b) => b,
            Message::Close(f) => break f.expect("a close frame"),
            _ => continue,
        };
        let mut items = Vec::new();
        decoder.feed(data, &mut items).unwrap();
        for item in items {
            match item {
                Item::Nbd(b) => {
                    server.receive(&b).unwrap();
                    for m in nbd_messages(&server.take_output()) {
                        ws.send(send(m)).await.unwrap();
                    }
                }
                Item::Inserted(_) => {
                    inserted = true;
                    // A reply to a request QEMU never made.
                    let reply = vmgate_nbd::server::read_reply(0xdead);
                    for m in nbd_messages(&reply) {
                        ws.send(send(m)).await.unwrap();
                    }
                }
                _ => {}
            }
        }
    };
    assert!(inserted);
    assert_eq!(u16::from(close.code), 4400, "{close:?}");
    assert!(
        close
            .reason
            .contains("answered NBD handle 0xdead, which is not in flight"),
        "{close:?}"
    );
    assert!(
        stack.log("agent.log").contains("not in flight"),
        "{}",
        stack.log("agent.log")
    );
    assert_eq!(guest_sr0_size(&stack, 0).await, 0);
    let (_, out) = media_run(&stack, "status", &["status", "--json"]).await;
    assert!(media_status(&out)["medium"].is_null(), "{out}");
}

/// Sequential reads of a 64 MiB ISO in the guest (`dd bs=1M`), through
/// vmgate and from the same file attached by QEMU directly: the same bytes
/// both ways (the guest's SHA-256 of the device equals the host's of the
/// file), and each way's throughput printed for BENCHMARKS.md. Three rounds
/// each, the page cache dropped before every round; timed in the guest.
#[tokio::test]
async fn sequential_reads_through_vmgate_and_from_a_local_file_give_the_same_bytes() {
    let stack = Stack::start().await;
    let (iso, _) = make_iso(stack.dir.path(), 64 << 20, 4);
    let iso_size = std::fs::metadata(&iso).unwrap().len();
    let sum = Command::new("sha256sum").arg(&iso).output().unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    let sum = sum.split_whitespace().next().unwrap().to_string();
    cdrom_ready(&stack).await;

    // Seconds for one `dd` of the whole device, from /proc/uptime (10 ms
    // steps), and the device's SHA-256 from a separate read.
    async fn rounds(stack: &Stack, sum: &str, what: &str) -> Vec<f64> {
        let (out, _) = guest_says(
            stack,
            "echo 3 > /proc/sys/vm/drop_caches; sha256sum /dev/sr0",
            "devsum",
        )
        .await;
        assert!(
            out.contains(sum),
            "{what}: the guest read {out:?}, the host has {sum}"
        );
        let mut secs = Vec::new();
        for _ in 0..3 {
            let (out, _) = guest_says(
                stack,
                "echo 3 > /proc/sys/vm/drop_caches; a=$(cut -d' ' -f1 /proc/uptime); \
                 dd if=/dev/sr0 of=/dev/null bs=1M 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); \
                 echo $a $b",
                "dd",
            )
            .await;
            let t: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
            secs.push(t[1] - t[0]);
        }
        secs.sort_by(f64::total_cmp);
        secs
    }

    let (mut server, _) = insert(&stack, "insert", &["insert", iso.to_str().unwrap()]).await;
    assert_eq!(guest_sr0_size(&stack, iso_size).await, iso_size);
    let through = rounds(&stack, &sum, "through vmgate").await;
    let (_, out) = media_run(&stack, "status", &["status", "--json"]).await;
    let m = &media_status(&out)["medium"];
    let (read, reads) = (
        m["bytes_read"].as_u64().unwrap(),
        m["reads"].as_u64().unwrap(),
    );
    assert!(read >= 4 * iso_size, "{out}");
    eprintln!(
        "through vmgate: {reads} reads of {} KiB on average",
        read / reads.max(1) / 1024
    );
    let (st, _) = media_run(&stack, "eject", &["eject"]).await;
    assert!(st.success());
    assert!(exit_status(&mut server, "insert", &stack).await.success());
    assert_eq!(guest_sr0_size(&stack, 0).await, 0);

    // The same file, attached by QEMU itself (what the testkit's own test does).
    let mut q = vmgate_agent::qmp::Qmp::connect(&stack.qemu().qmp_socket)
        .await
        .unwrap();
    let cd = vmgate_testkit::CDROM_ID;
    for (cmd, args) in [
        (
            "blockdev-add",
            serde_json::json!({"driver": "raw", "node-name": "local0", "read-only": true,
                "file": {"driver": "file", "filename": iso, "read-only": true}}),
        ),
        (
            "blockdev-open-tray",
            serde_json::json!({"id": cd, "force": true}),
        ),
        (
            "blockdev-insert-medium",
            serde_json::json!({"id": cd, "node-name": "local0"}),
        ),
        ("blockdev-close-tray", serde_json::json!({"id": cd})),
    ] {
        q.execute(cmd, args).await.unwrap();
    }
    drop(q);
    assert_eq!(guest_sr0_size(&stack, iso_size).await, iso_size);
    let local = rounds(&stack, &sum, "local file").await;
    let mib = iso_size as f64 / f64::from(1 << 20);
    let rate = |s: &[f64]| {
        s.iter()
            .map(|t| format!("{:.1}", mib / t))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "dd bs=1M of a {mib:.0} MiB ISO in the guest, MiB/s (3 rounds, fastest first): \
         through vmgate {}; local file {}",
        rate(&through),
        rate(&local)
    );
}

/// The screen page in headless Chromium: the file input takes the ISO
/// (playwright's `setInputFiles`), the page serves it with `File.slice()`,
/// the guest mounts it and reads the blob's checksum, the page counts the
/// bytes read and warns before its tab closes; its Eject button takes the
/// medium out and the guest sees an empty drive.
#[tokio::test]
async fn the_screen_page_serves_a_picked_iso_and_its_eject_button_takes_it_out() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let (iso, sum) = make_iso(stack.dir.path(), 4 << 20, 6);
    let iso_size = std::fs::metadata(&iso).unwrap().len();
    cdrom_ready(&stack).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "npm ci in {} failed (see scripts/deps.d/vnc.sh)",
            dir.display()
        );
    }
    // No serial0: the test types into the guest's console itself.
    let t = stack.ticket(&stack.name, &["vnc", DRIVE], false);
    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("media.mjs"))
        .env("VMGATE_URL", &t.url)
        .env("MEDIA_ISO", &iso)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node");
    let mut stderr = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    let inserted = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(l)) = stderr.next_line().await {
            if l.contains("vmgate-media: inserted") {
                return true;
            }
            eprintln!("browser: {l}");
        }
        false
    })
    .await;
    assert_eq!(inserted, Ok(true), "the page never inserted the medium");
    assert_eq!(guest_sr0_size(&stack, iso_size).await, iso_size);
    let (out, took) = guest_says(
        &stack,
        "mount -t iso9660 -o ro /dev/sr0 /mnt && sha256sum /mnt/blob; umount /mnt",
        "sum",
    )
    .await;
    eprintln!("the guest read the page's medium: mount + sha256sum of 4 MiB in {took:?}");
    assert!(out.contains(&sum), "guest: {out:?}, host: {sum}");
    // Let the page eject.
    let mut stdin = node.stdin.take().unwrap();
    stdin.write_all(b"eject\n").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), node.wait_with_output())
        .await
        .expect("the browser script finished")
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "browser output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("browser: {report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["idle"], "no medium: pick an ISO");
    let name = iso.file_name().unwrap().to_str().unwrap();
    assert!(
        report["inserted"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{name} inserted")),
        "{report:#}"
    );
    assert_eq!(report["warnsWhenIdle"], false);
    assert_eq!(
        report["warnsWhenInserted"], true,
        "no warning before closing the tab"
    );
    assert_eq!(report["warnsAfterEject"], false);
    let served = report["served"]["bytesRead"].as_u64().unwrap();
    assert!(served >= 4 << 20, "the page served {served} bytes");
    assert!(
        report["whileServing"]
            .as_str()
            .unwrap()
            .ends_with("MiB read"),
        "{report:#}"
    );
    // The agent's count, as the page showed it at the end.
    assert!(report["media"]["bytesRead"].as_u64().unwrap() >= served);
    assert!(report["ejected"]
        .as_str()
        .unwrap()
        .starts_with("ejected: the guest read"));
    assert_eq!(report["pickable"], true, "another medium can be picked");
    assert_eq!(guest_sr0_size(&stack, 0).await, 0);
}

/// The guest stops while a medium is in its drive: the serving command
/// ends with 4410 (exit 4) and its reason, within seconds.
async fn the_guest_stopping_ends_the_insert_with_guest_down(backend: Backend) {
    let mut stack = Stack::start_backend(backend).await;
    let (iso, _) = make_iso(stack.dir.path(), 64 << 10, 7);
    cdrom_ready(&stack).await;
    let (mut server, _) = insert(&stack, "insert", &["insert", iso.to_str().unwrap()]).await;
    let stopped = Instant::now();
    match backend {
        Backend::Qemu => stack.qemu_guest().kill(),
        // `virsh destroy`, blocking this test's thread for a moment.
        Backend::Libvirt => stack.domain.as_ref().unwrap().destroy(),
    }
    let st = exit_status(&mut server, "insert", &stack).await;
    let took = stopped.elapsed();
    let log = stack.log("insert.log");
    eprintln!("{backend:?}: the insert ended {took:?} after the guest stopped: {log}");
    assert_eq!(st.code(), Some(4), "{log}");
    assert!(log.contains("(4410)"), "{log}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let agent = stack.log("agent.log");
    assert!(agent.contains("medium ejected"), "{agent}");
}
