//! Connections that never authenticate, end to end: a flood of TLS
//! connections (HTTP/1.1 and HTTP/2) that each make one request and then
//! idle, against small caps, while a user from another address and an
//! administrator keep working.

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
