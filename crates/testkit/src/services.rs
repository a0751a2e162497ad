//! Real services a test starts on a free loopback port and stops when it
//! is dropped: Debian's `redis-server` (the fleet's store) and `haproxy`
//! (the fleet's load balancer).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::KitError;

/// How long a service has to answer after it was started.
const READY: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (the listener is closed again, so another
/// process could take it first; the services fail loudly if so).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn spawn(cmd: &mut Command, what: &str, hint: &str) -> Result<Child, KitError> {
    cmd.stdin(Stdio::null())
        .spawn()
        .map_err(|e| KitError::Setup(format!("cannot start {what}: {e} ({hint})")))
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `redis-server` without persistence, on 127.0.0.1.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts a server on a free port; its log goes to `dir/redis.log`.
    pub fn start(dir: &Path) -> Result<Redis, KitError> {
        let mut r = Redis {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        r.restart()?;
        Ok(r)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: nothing is saved, as in a crash).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts the server again on the same port, empty, and waits until
    /// it answers `PING`.
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.kill();
        let log = self.dir.join("redis.log");
        let child = spawn(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .args(["--save", "", "--appendonly", "no"])
                .args(["--maxmemory-policy", "noeviction"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(&log),
            "redis-server",
            "apt-get install redis-server",
        )?;
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(KitError::Setup(format!(
            "redis-server on port {} did not answer within {READY:?} (see {})",
            self.port,
            log.display()
        )))
    }

    /// Whether the server answers `PING` within a second.
    pub fn ping(&self) -> bool {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Runs `redis-cli` with `args` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> Result<String, KitError> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .map_err(|e| KitError::Setup(format!("cannot run redis-cli: {e}")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy in TCP mode, round robin over `backends`, on a free port.
pub struct HaProxy {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl HaProxy {
    /// Starts it with its configuration in `dir/haproxy.cfg`, and waits
    /// until its frontend accepts connections.
    pub fn start(dir: &Path, backends: &[SocketAddr]) -> Result<HaProxy, KitError> {
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\n\
             frontend fleet\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\n\
             backend gateways\n  balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server gw{} {b}\n", i + 1));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg)
            .map_err(|e| KitError::Setup(format!("cannot write {}: {e}", path.display())))?;
        let log = std::fs::File::create(dir.join("haproxy.log"))
            .map_err(|e| KitError::Setup(format!("haproxy.log: {e}")))?;
        let child = spawn(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(
                    log.try_clone()
                        .map_err(|e| KitError::Setup(e.to_string()))?,
                )
                .stderr(log),
            "haproxy",
            "apt-get install haproxy",
        )?;
        let h = HaProxy {
            addr: ([127, 0, 0, 1], port).into(),
            child: Some(child),
        };
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&h.addr, Duration::from_secs(1)).is_ok() {
                return Ok(h);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(KitError::Setup(format!(
            "haproxy did not listen on {} within {READY:?}",
            h.addr
        )))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
