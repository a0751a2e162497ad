//! Connections that never authenticate, end to end: a flood of TLS
//! connections (HTTP/1.1 and HTTP/2) that each make one request and then
//! idle, against small caps, while a user from another address and an
//! administrator keep working; and HTTP/2's own limits, the PING
//! keepalive and the stream cap, against a client that breaks them.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Session, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

const PER_ADDRESS: u32 = 6;
const UNAUTHENTICATED: u32 = 16;
const IDLE: Duration = Duration::from_secs(10);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// TCP from `from` to the gateway, then TLS offering `alpn`.
async fn tls(
    stack: &Stack,
    from: IpAddr,
    alpn: &[u8],
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let roots = vmgate_tls::load_roots(&stack.state.public_ca()).unwrap();
    let cfg = vmgate_tls::client_config(roots, &[alpn]).unwrap();
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let tcp = sock.connect(stack.gw_addr).await?;
    let name = vmgate_tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// A connection from `from` that completes TLS, makes one request
/// (`GET /healthz`, over HTTP/2 if `h2`) and then idles. Answers when the
/// response ended, and a task that ends when the gateway closes the
/// connection, with when that was.
async fn idle_connection(stack: &Stack, from: IpAddr, h2: bool) -> (Instant, JoinHandle<Instant>) {
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let mut tls = tls(stack, from, alpn).await.expect("TLS to the gateway");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    if h2 {
        let io = hyper_util::rt::TokioIo::new(tls);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake");
        let closed = tokio::spawn(async move {
            let _ = conn.await;
            Instant::now()
        });
        let req = http::Request::get(format!("https://{}/healthz", stack.gw_addr))
            .body(String::new())
            .unwrap();
        let resp = send.send_request(req).await.expect("HTTP/2 request");
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"ok\n");
        let done = Instant::now();
        // The request sender stays alive with the connection: dropping it
        // would make the client close it.
        let closed = tokio::spawn(async move {
            let at = closed.await.unwrap();
            drop(send);
            at
        });
        (done, closed)
    } else {
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok\n") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        let done = Instant::now();
        let closed = tokio::spawn(async move {
            let _ = tls.read_to_end(&mut Vec::new()).await;
            Instant::now()
        });
        (done, closed)
    }
}

/// A connection from `from` the gateway must refuse at accept: the TLS
/// handshake fails, promptly. Answers how long that took.
async fn refused(stack: &Stack, from: IpAddr) -> Duration {
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), tls(stack, from, b"h2"))
        .await
        .expect("a connection over the cap was kept open");
    assert!(r.is_err(), "a connection over the cap completed TLS");
    start.elapsed()
}

/// Hole 4 of issue 11: unlimited connections before authentication. The
/// gateway now caps connections without a session per address and in
/// all, refuses the excess at accept, closes idle ones at a deadline
/// (HTTP/2 too), and the admin listener keeps its own places.
#[tokio::test]
async fn a_flood_of_idle_connections_is_capped_and_closed_while_others_still_get_consoles() {
    let stack = Stack::start_secure(|l| {
        l.max_unauthenticated_per_address = PER_ADDRESS;
        l.max_unauthenticated_connections = UNAUTHENTICATED;
        l.connection_idle_secs = IDLE.as_secs();
        // HTTP/1.1's header deadline also ends a keep-alive wait: longer
        // here, so the close measured below is the idle deadline's.
        l.handshake_deadline_secs = 3 * IDLE.as_secs();
    })
    .await;
    let log = common::plain(&stack.log("gateway.log"));
    assert!(
        log.lines()
            .any(|l| l.contains("open-files limit") && l.contains("open_files=")),
        "{log}"
    );

    // 127.0.0.3 fills its share with idle TLS connections, half HTTP/2.
    let mut idle = Vec::new();
    for i in 0..PER_ADDRESS {
        idle.push(idle_connection(&stack, ip(3), i % 2 == 0).await);
    }
    let filled = Instant::now();
    // More from it are refused at once.
    for _ in 0..3 {
        let took = refused(&stack, ip(3)).await;
        assert!(took < Duration::from_secs(1), "refused after {took:?}");
        eprintln!("over the per-address cap: refused after {took:?}");
    }

    // Another address opens a console and types.
    let t = stack.ticket("demo", &["serial0"], false);
    let ws = stack.connect_as(&t.ws_url, ip(2), &[]).await.unwrap();
    let mut user = Session::new(ws);
    user.expect_notice("you hold the keyboard").await;
    user.send(b"echo user-$((20+1))\n").await;
    user.expect("user-21").await;

    // The rest of the listener's unauthenticated places fill up from two
    // more addresses (the console above is authenticated: not counted);
    // then a new address is refused too.
    let rest = UNAUTHENTICATED - PER_ADDRESS;
    for i in 0..rest {
        let from = ip(4 + (i / PER_ADDRESS) as u8);
        idle.push(idle_connection(&stack, from, i % 2 == 1).await);
    }
    assert!(
        filled.elapsed() < IDLE - Duration::from_secs(1),
        "too slow to fill the listener before the first connections idled out ({:?})",
        filled.elapsed()
    );
    let took = refused(&stack, ip(9)).await;
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    eprintln!("over the unauthenticated cap: refused after {took:?}");

    // The admin listener has its own places: its console works now.
    let url = format!(
        "{}/v1/console/demo/serial0?force=true",
        stack.admin_url().replacen("https://", "wss://", 1)
    );
    let ws = vmgate::admin_client::console(&url, &stack.admin_token())
        .await
        .expect("the admin console while the public listener is full");
    let mut admin = Session::new(ws);
    admin.expect_notice("took the keyboard over").await;
    admin.send(b"echo admin-$((30+1))\n").await;
    admin.expect("admin-31").await;
    let m = stack.metrics().await;
    assert_eq!(
        metric(
            &m,
            "vmgate_refusals_total{reason=\"connections_per_address\"}"
        ),
        3,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "vmgate_refusals_total{reason=\"connections_unauthenticated\"}"
        ),
        1,
        "{m}"
    );
    let log = common::plain(&stack.log("gateway.log"));
    let logged = log
        .lines()
        .filter(|l| l.contains("connection refused at accept"))
        .count();
    assert_eq!(logged, 4, "{log}");
    drop(admin);
    // The user's session went on through all of it.
    user.expect_notice("keyboard taken over").await;

    // Every idle connection is closed at the idle deadline after its
    // request, HTTP/1.1 and HTTP/2 alike.
    for (i, (done, closed)) in idle.into_iter().enumerate() {
        let at = tokio::time::timeout(IDLE + Duration::from_secs(10), closed)
            .await
            .unwrap_or_else(|_| panic!("idle connection {i} still open"))
            .unwrap();
        let after = at.duration_since(done);
        eprintln!("idle connection {i}: closed {after:?} after its request");
        assert!(
            after + Duration::from_millis(50) >= IDLE && after <= IDLE + Duration::from_secs(2),
            "idle connection {i} closed {after:?} after its request, not within [{IDLE:?}, {:?}]",
            IDLE + Duration::from_secs(2)
        );
    }
    let m = stack.metrics().await;
    assert!(
        metric(&m, "vmgate_connections_closed_total{reason=\"idle\"}") >= UNAUTHENTICATED.into(),
        "{m}"
    );
    // Their places are free again.
    idle_connection(&stack, ip(3), true).await;
}

/// A bare HTTP/2 client over TLS (ALPN h2), frame by frame, so a test can
/// be the peer a library client never is: one that stops answering PINGs,
/// or opens more streams than the server allows.
mod raw_h2 {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const REFUSED_STREAM: u32 = 0x7;
    /// The largest frame payload a client must accept (SETTINGS_MAX_FRAME_SIZE
    /// left at its initial value).
    const MAX_FRAME: usize = 16_384;

    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The settings of a SETTINGS frame, as (identifier, value).
        pub fn settings(&self) -> Vec<(u16, u32)> {
            self.payload
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect()
        }

        /// The error code of a RST_STREAM or GOAWAY frame.
        pub fn error_code(&self) -> u32 {
            let at = if self.kind == GOAWAY { 4 } else { 0 };
            let b = &self.payload[at..at + 4];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        }

        /// The `:status` of a response's HEADERS frame. The server's HPACK
        /// encoder puts `:status` first, as a static-table index for the
        /// statuses the gateway answers here.
        pub fn status(&self) -> Option<u16> {
            Some(match self.payload.first()? {
                0x88 => 200,
                0x89 => 204,
                0x8a => 206,
                0x8b => 304,
                0x8c => 400,
                0x8d => 404,
                0x8e => 500,
                _ => return None,
            })
        }
    }

    /// An HPACK string literal, not Huffman coded: its length as an
    /// integer with a 7-bit prefix, then its bytes.
    fn string(out: &mut Vec<u8>, s: &str) {
        let mut n = s.len();
        if n < 0x7f {
            out.push(n as u8);
        } else {
            out.push(0x7f);
            n -= 0x7f;
            while n >= 0x80 {
                out.push((n % 0x80) as u8 | 0x80);
                n /= 0x80;
            }
            out.push(n as u8);
        }
        out.extend_from_slice(s.as_bytes());
    }

    pub struct Client {
        tls: TlsStream<TcpStream>,
        buf: Vec<u8>,
        /// Whether PINGs are answered (as every HTTP/2 peer must).
        pub answer_pings: bool,
        /// When each PING arrived.
        pub pings: Vec<Instant>,
        authority: String,
    }

    impl Client {
        /// Sends the connection preface and empty SETTINGS on `tls`.
        pub async fn start(mut tls: TlsStream<TcpStream>, authority: String) -> Client {
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            let mut c = Client {
                tls,
                buf: Vec::new(),
                answer_pings: true,
                pings: Vec::new(),
                authority,
            };
            c.send(SETTINGS, 0, 0, &[]).await;
            c
        }

        pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            self.tls.write_all(&f).await.unwrap();
            self.tls.flush().await.unwrap();
        }

        /// A request's HEADERS on `stream` (odd, increasing), its END_STREAM
        /// only if `end`, with `extra` fields after the usual pseudo-headers
        /// (`:protocol` among them first): HPACK without Huffman coding or
        /// the dynamic table.
        pub async fn request(
            &mut self,
            stream: u32,
            method: &str,
            path: &str,
            extra: &[(&str, &str)],
            end: bool,
        ) {
            // :method GET (2) or POST (3), or a literal with name 2;
            // :scheme https (7); :path (4) and :authority (1) literals with
            // indexed names; then literals with literal names.
            let mut block = Vec::new();
            match method {
                "GET" => block.push(0x82),
                "POST" => block.push(0x83),
                _ => {
                    block.push(0x02);
                    string(&mut block, method);
                }
            }
            block.push(0x87);
            for (name, value) in [(0x04u8, path), (0x01, self.authority.as_str())] {
                block.push(name);
                string(&mut block, value);
            }
            for (name, value) in extra {
                block.push(0x00);
                string(&mut block, name);
                string(&mut block, value);
            }
            let flags = END_HEADERS | if end { END_STREAM } else { 0 };
            self.send(HEADERS, flags, stream, &block).await;
        }

        /// The next frame from the server; `None` once it closed the
        /// connection. SETTINGS are acknowledged, and PINGs if
        /// [`Client::answer_pings`].
        pub async fn frame(&mut self) -> Option<Frame> {
            while self.buf.len() < 9
                || self.buf.len()
                    < 9 + u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize
            {
                let mut chunk = [0u8; 4096];
                match self.tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            assert!(len <= MAX_FRAME, "a {len}-byte frame");
            let f = Frame {
                kind: self.buf[3],
                flags: self.buf[4],
                stream: u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                    & 0x7fff_ffff,
                payload: self.buf[9..9 + len].to_vec(),
            };
            self.buf.drain(..9 + len);
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                self.send(SETTINGS, ACK, 0, &[]).await;
            }
            if f.kind == PING && f.flags & ACK == 0 {
                self.pings.push(Instant::now());
                if self.answer_pings {
                    self.send(PING, ACK, 0, &f.payload).await;
                }
            }
            Some(f)
        }

        /// The response on `stream`: its status, and whether its body
        /// (read to END_STREAM) is the gateway's `ok\n`.
        pub async fn response(&mut self, stream: u32) -> (u16, bool) {
            let h = self.until(stream, &[HEADERS, RST_STREAM]).await;
            assert_eq!(h.kind, HEADERS, "{h:?}");
            let status = h.status().unwrap_or_else(|| panic!("no status in {h:?}"));
            let mut body = Vec::new();
            let mut end = h.flags & END_STREAM != 0;
            while !end {
                let f = self.until(stream, &[DATA, HEADERS, RST_STREAM]).await;
                assert_ne!(f.kind, RST_STREAM, "{f:?}");
                if f.kind == DATA {
                    body.extend_from_slice(&f.payload);
                }
                end = f.flags & END_STREAM != 0;
            }
            (status, body == b"ok\n")
        }

        /// Frames until one on `stream` of `kind` (DATA, WINDOW_UPDATE and
        /// the like in between are read and passed over).
        pub async fn until(&mut self, stream: u32, kinds: &[u8]) -> Frame {
            loop {
                let f = self
                    .frame()
                    .await
                    .unwrap_or_else(|| panic!("closed while waiting on stream {stream}"));
                if f.stream == stream && kinds.contains(&f.kind) {
                    return f;
                }
                assert!(
                    f.stream == 0 || f.stream == stream || f.kind == DATA,
                    "unexpected {f:?} while waiting on stream {stream}"
                );
            }
        }
    }
}

const KEEPALIVE: Duration = Duration::from_secs(2);
const H2_IDLE: Duration = Duration::from_secs(8);
const MAX_STREAMS: u32 = 4;

/// HTTP/2 connections are held to `http2_keepalive_secs` and
/// `http2_max_streams`. A peer that stops answering PINGs (gone without a
/// word: no FIN, no RST) is closed within twice the keepalive, whereas a
/// client that answers them is left to the (longer) idle deadline; and a
/// connection gets exactly the configured stream cap in its SETTINGS, with
/// a stream past it refused (REFUSED_STREAM) while the others go on.
#[tokio::test]
async fn http2_peers_that_stop_answering_pings_are_closed_and_streams_are_capped() {
    let stack = Stack::start_secure(|l| {
        l.http2_keepalive_secs = KEEPALIVE.as_secs();
        l.http2_max_streams = MAX_STREAMS;
        l.connection_idle_secs = H2_IDLE.as_secs();
    })
    .await;
    let authority = stack.gw_addr.to_string();

    // The stream cap: the server says it, and holds a client to it.
    let io = tls(&stack, ip(1), b"h2").await.expect("TLS to the gateway");
    let mut c = raw_h2::Client::start(io, authority.clone()).await;
    let settings = c.until(0, &[raw_h2::SETTINGS]).await;
    assert_eq!(
        settings
            .settings()
            .iter()
            .find(|(id, _)| *id == raw_h2::SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(&(raw_h2::SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS)),
        "the server's SETTINGS: {settings:?}"
    );
    // MAX_STREAMS requests whose bodies never end (a page session request
    // waits 10 s for its body) hold every place; one more is refused.
    let held: Vec<u32> = (0..MAX_STREAMS).map(|i| 1 + 2 * i).collect();
    for &id in &held {
        c.request(id, "POST", "/api/session", &[], false).await;
    }
    let excess = 1 + 2 * MAX_STREAMS;
    c.request(excess, "GET", "/healthz", &[], true).await;
    let f = tokio::time::timeout(
        Duration::from_secs(2),
        c.until(excess, &[raw_h2::RST_STREAM, raw_h2::HEADERS]),
    )
    .await
    .expect("no answer to a stream past the cap");
    assert_eq!(f.kind, raw_h2::RST_STREAM, "a stream past the cap: {f:?}");
    assert_eq!(f.error_code(), raw_h2::REFUSED_STREAM, "{f:?}");
    // The held streams go on: one ends its body and gets its answer (400:
    // an empty body is no ticket), and its place opens a new stream.
    c.send(raw_h2::DATA, raw_h2::END_STREAM, held[0], &[]).await;
    assert_eq!(c.response(held[0]).await, (400, false));
    // The server frees a stream's place once its task has let go of it,
    // which may be just after the last frame left: a moment for that.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = excess + 2;
    c.request(next, "GET", "/healthz", &[], true).await;
    assert_eq!(c.response(next).await, (200, true));
    for &id in &held[1..] {
        c.send(raw_h2::DATA, raw_h2::END_STREAM, id, &[]).await;
        assert_eq!(c.response(id).await, (400, false));
    }
    drop(c);

    // The keepalive. A client holding a console (so never idle) stops
    // answering PINGs once its session is up: a browser gone without a word.
    let t = stack.ticket("demo", &["serial0"], false);
    let (_, path) = t.ws_url.split_once(&authority).unwrap();
    let io = tls(&stack, ip(1), b"h2").await.expect("TLS to the gateway");
    let mut silent = raw_h2::Client::start(io, authority).await;
    silent.answer_pings = false;
    silent
        .request(
            1,
            "CONNECT",
            path,
            &[(":protocol", "websocket"), ("sec-websocket-version", "13")],
            false,
        )
        .await;
    let f = silent
        .until(1, &[raw_h2::HEADERS, raw_h2::RST_STREAM])
        .await;
    assert_eq!((f.kind, f.status()), (raw_h2::HEADERS, Some(200)), "{f:?}");
    let done = Instant::now();
    // The session is up once the gateway says who holds the keyboard.
    let mut ws = Vec::new();
    while !ws.windows(21).any(|w| w == b"you hold the keyboard") {
        let f = silent.until(1, &[raw_h2::DATA]).await;
        ws.extend_from_slice(&f.payload);
    }
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_sessions_active{channel=\"serial0\"}"),
        1,
        "{m}"
    );
    let silent = tokio::spawn(async move {
        let mut goaway = None;
        while let Some(f) = silent.frame().await {
            if f.kind == raw_h2::GOAWAY {
                goaway = Some(f.error_code());
            }
        }
        (Instant::now(), silent.pings, goaway)
    });
    // …and a library client that answers them, idle too.
    let (answering_done, answering) = idle_connection(&stack, ip(2), true).await;

    let (closed, pings, goaway) =
        tokio::time::timeout(2 * KEEPALIVE + Duration::from_secs(5), silent)
            .await
            .expect("a client not answering PINGs is still open")
            .unwrap();
    let after = closed.duration_since(done);
    eprintln!(
        "not answering PINGs: PINGs at {:?}, GOAWAY {goaway:?}, closed {after:?} after its session opened",
        pings.iter().map(|p| p.duration_since(done)).collect::<Vec<_>>()
    );
    // One PING, a keepalive after the client's last frame, then the close a
    // keepalive after that PING.
    assert_eq!(pings.len(), 1, "PINGs: {pings:?}");
    let ping = pings[0].duration_since(done);
    let margin = Duration::from_secs(1);
    assert!(
        ping + Duration::from_millis(50) >= KEEPALIVE && ping <= KEEPALIVE + margin,
        "the PING came {ping:?} after the session opened, not a keepalive ({KEEPALIVE:?}) after it"
    );
    assert!(
        after + Duration::from_millis(50) >= KEEPALIVE && after <= 2 * KEEPALIVE + margin,
        "closed {after:?} after the session opened, not within [{KEEPALIVE:?}, {:?}]",
        2 * KEEPALIVE + margin
    );
    assert!(
        closed.duration_since(pings[0]) + Duration::from_millis(50) >= KEEPALIVE,
        "closed {:?} after the PING, before the keepalive",
        closed.duration_since(pings[0])
    );
    assert_eq!(goaway, Some(0), "a GOAWAY (NO_ERROR) before the close");
    // Its session ended with it: the keyboard is free for the next user.
    let deadline = closed + Duration::from_secs(1);
    loop {
        let m = stack.metrics().await;
        if metric(&m, "vmgate_sessions_active{channel=\"serial0\"}") == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session outlived its connection by 1 s: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = stack.ticket("demo", &["serial0"], false);
    let ws = stack.connect_as(&t.ws_url, ip(3), &[]).await.unwrap();
    let mut next = Session::new(ws);
    next.expect_notice("you hold the keyboard").await;
    drop(next);

    // The answering client outlives it: the idle deadline closes it.
    let at = tokio::time::timeout(H2_IDLE + Duration::from_secs(5), answering)
        .await
        .expect("an idle HTTP/2 client still open past the idle deadline")
        .unwrap();
    let after = at.duration_since(answering_done);
    eprintln!("answering PINGs: closed {after:?} after its request");
    assert!(
        after + Duration::from_millis(50) >= H2_IDLE && after <= H2_IDLE + Duration::from_secs(2),
        "an idle client answering PINGs closed {after:?} after its request, not at the idle deadline ({H2_IDLE:?})"
    );
    let m = stack.metrics().await;
    assert_eq!(
        metric(&m, "vmgate_connections_closed_total{reason=\"keepalive\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "vmgate_connections_closed_total{reason=\"idle\"}"),
        1,
        "{m}"
    );
}
