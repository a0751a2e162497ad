//! The agent's `vnc_via = "qmp"` path against a real QEMU that has a VNC
//! display but no VNC listener at all (`-vnc none`): each session gets its
//! own socketpair through QMP `getfd` + `add_client`, and QEMU speaks RFB
//! on it. No guest needs to boot (`-S`), so this runs in a second.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use vmgate_agent::backend::qemu::QemuBackend;
use vmgate_agent::backend::{Backend, Opened};
use vmgate_agent::config::{AgentConfig, AgentTls, GuestConfig, VncVia};
use vmgate_wire::{CloseCode, Mode, OpenRequest, StreamKind};

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &std::path::Path, qmp: std::path::PathBuf) -> AgentConfig {
    AgentConfig {
        node: "n".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        log_dir: dir.join("logs"),
        scrollback_bytes: 1024,
        drain_secs: 5,
        console_log: Default::default(),
        backend: Default::default(),
        libvirt: Default::default(),
        tls: AgentTls {
            cert: dir.join("unused.pem"),
            key: dir.join("unused.key"),
            gateway_ca: dir.join("unused-ca.pem"),
            allowed_gateways: Vec::new(),
        },
        guests: vec![GuestConfig {
            name: "bare".into(),
            qmp: Some(qmp),
            vnc: None,
            vnc_via: Some(VncVia::Qmp),
            audio: false,
            serial: vec![],
            channel: vec![],
            media: vec![],
        }],
        media_dir: None,
        media_group: None,
        tcp_sessions: false,
    }
}

fn request(session: u64) -> OpenRequest {
    OpenRequest {
        kind: StreamKind::Console,
        session,
        guest: "bare".into(),
        channel: "vnc".into(),
        mode: Mode::Interactive,
        force: false,
    }
}

/// Reads the server's version and completes a None-security handshake.
async fn rfb_handshake(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) -> (u16, u16) {
    let mut version = [0u8; 12];
    stream.read_exact(&mut version).await.unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    stream.write_all(b"RFB 003.008\n").await.unwrap();
    let n = stream.read_u8().await.unwrap() as usize;
    let mut types = vec![0; n];
    stream.read_exact(&mut types).await.unwrap();
    assert_eq!(types, [1], "skipauth: security None only");
    stream.write_all(&[1]).await.unwrap();
    assert_eq!(stream.read_u32().await.unwrap(), 0);
    stream.write_all(&[1]).await.unwrap();
    let (w, h) = (
        stream.read_u16().await.unwrap(),
        stream.read_u16().await.unwrap(),
    );
    (w, h)
}

#[tokio::test]
async fn each_session_is_a_fresh_qemu_client_without_any_vnc_listener() {
    let dir = tempfile::tempdir().unwrap();
    let qmp = dir.path().join("qmp.sock");
    let mut arg = std::ffi::OsString::from("unix:");
    arg.push(&qmp);
    arg.push(",server=on,wait=off");
    let _qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-nodefaults", "-no-user-config", "-S"])
            .args(["-display", "none", "-vga", "std", "-vnc", "none", "-qmp"])
            .arg(arg)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (apt-get install qemu-system-x86)"),
    );
    for _ in 0..100 {
        if qmp.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = config(dir.path(), qmp.clone());
    let logs = vmgate_agent::console::ConsoleLogs::new(&cfg.log_dir, cfg.console_log).unwrap();
    let backend = QemuBackend::start(&cfg, &logs, CancellationToken::new());
    let inv = backend.inventory().borrow().clone();
    assert!(inv.guests[0].channels.iter().any(|c| c.name == "vnc"));

    // Two sessions at once, each its own client of QEMU's VNC server.
    let mut streams = Vec::new();
    for session in [1, 2] {
        match backend.open(&request(session)).await {
            Ok(Opened::Stream { stream, .. }) => streams.push(stream),
            Ok(_) => panic!("vnc opens as a stream"),
            Err(c) => panic!("refused: {c}"),
        }
    }
    for s in &mut streams {
        let size = tokio::time::timeout(Duration::from_secs(20), rfb_handshake(s))
            .await
            .expect("RFB handshake in time");
        assert!(size.0 > 0 && size.1 > 0, "a framebuffer: {size:?}");
    }
    // And QEMU listens nowhere for VNC.
    let vnc = {
        let mut q = vmgate_agent::qmp::Qmp::connect(&qmp).await.unwrap();
        q.execute("query-vnc", serde_json::json!({})).await.unwrap()
    };
    assert_eq!(vnc["enabled"], false, "no VNC listener: {vnc}");

    // A guest whose QMP is gone is refused with a reason.
    drop(streams);
    drop(_qemu);
    tokio::time::sleep(Duration::from_millis(200)).await;
    match backend.open(&request(3)).await {
        Err(c) => {
            assert_eq!(c.code, CloseCode::GuestDown, "{c}");
            assert!(c.reason.contains("QMP"), "{c}");
        }
        Ok(_) => panic!("opened a VNC session on a stopped QEMU"),
    }
}
