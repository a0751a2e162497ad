//! Boots the test guest once and prints its QEMU command line, how long it took to become
//! ready, and how much host CPU it uses while idle, with and without clients having come
//! and gone. Run with `cargo run -p vmgate-testkit --example measure`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmgate_testkit::{
    build_image, default_cache_dir, wait_for_output, BootOptions, Guest, KitError, ECHO_CHANNEL,
    QEMU_BINARY, READY_MARKER,
};

fn idle_share(guest: &Guest, window: Duration) -> Result<f64, KitError> {
    let before = guest.cpu_time()?;
    std::thread::sleep(window);
    let used = guest.cpu_time()? - before;
    Ok(used.as_secs_f64() / window.as_secs_f64() * 100.0)
}

fn main() {
    if let Err(e) = measure() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn measure() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let image = build_image(&default_cache_dir())?;
    println!("image ready in {:?}: {image:?}", started.elapsed());

    let run_dir = std::env::temp_dir().join(format!("vmgate-measure-{}", std::process::id()));
    let opts = BootOptions::new("measure", &run_dir);
    let argv: Vec<String> = Guest::qemu_args(&image, &opts)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("{QEMU_BINARY} {}", argv.join(" "));

    let started = Instant::now();
    let guest = Guest::boot(&image, &opts)?;
    let sockets_after = started.elapsed();
    let mut serial = UnixStream::connect(&guest.serial_socket)?;
    wait_for_output(
        &mut serial,
        READY_MARKER.as_bytes(),
        Duration::from_secs(60),
    )?;
    println!(
        "sockets after {sockets_after:?}, guest ready after {:?}",
        started.elapsed()
    );
    drop(serial);
    std::thread::sleep(Duration::from_secs(2));

    let window = Duration::from_secs(10);
    println!(
        "idle, nobody connected: {:.2}%",
        idle_share(&guest, window)?
    );

    let mut serial = UnixStream::connect(&guest.serial_socket)?;
    println!(
        "serial client connected: {:.2}%",
        idle_share(&guest, window)?
    );
    serial.write_all(b"echo hi\n")?;
    wait_for_output(&mut serial, b"hi\r\n", Duration::from_secs(10))?;
    drop(serial);

    let socket = guest.channel_socket(ECHO_CHANNEL).expect("echo channel");
    let mut channel = UnixStream::connect(socket)?;
    println!("echo client connected: {:.2}%", idle_share(&guest, window)?);
    channel.write_all(b"ping\n")?;
    wait_for_output(&mut channel, b"ping\n", Duration::from_secs(10))?;
    drop(channel);
    let left = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "after serial and echo clients left: {:.2}%",
        idle_share(&guest, window)?
    );
    // The echo loop polls fast for 30 s after a client leaves, then backs off further.
    std::thread::sleep(Duration::from_secs(32).saturating_sub(left.elapsed()));
    println!(
        "more than 30 s after the last client: {:.2}%",
        idle_share(&guest, window)?
    );
    drop(guest);
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}
