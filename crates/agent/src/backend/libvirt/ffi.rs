//! The unsafe edge of the libvirt backend, and the only `unsafe` in the
//! agent.
//!
//! Why it exists: the `virt` crate (0.5) wraps neither domain lifecycle
//! callbacks (`virConnectDomainEventRegisterAny`) nor the connection close
//! callback (`virConnectRegisterCloseCallback`), registers stream callbacks
//! with a pointer to a value that moves, cannot tell a non-blocking stream's
//! "no data yet" (-2) from an error, and hands the descriptor from
//! `virDomainOpenGraphicsFD` back as a bare integer. This module calls
//! `virt::sys` for those things and turns them into owned Rust values:
//! events into a bounded channel, a close into a cancelled token, stream
//! readiness into a wake-up, a descriptor into an [`OwnedFd`].
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::raw::c_char;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use virt::connect::Connect;
use virt::stream::Stream;
use virt::sys;

/// A domain lifecycle event (`VIR_DOMAIN_EVENT_*` and its detail).
#[derive(Debug)]
pub struct Lifecycle {
    pub domain: String,
    pub event: u32,
    pub detail: u32,
}

/// Where the callbacks deliver, owned by libvirt between register and free.
struct Sink {
    events: mpsc::Sender<Lifecycle>,
    /// Set when an event found the channel full: the receiver then re-reads
    /// every domain instead of trusting the events it got.
    overflow: Arc<AtomicBool>,
}

/// Cancelled, with a reason, when libvirt closes the connection.
pub struct Closed {
    pub token: CancellationToken,
    pub reason: Mutex<&'static str>,
}

/// Starts libvirt's default event loop on a thread of its own, once per
/// process. Lifecycle events, close callbacks and keepalives are driven by
/// it; it must run before the first connection opens.
pub fn init_event_loop() -> Result<(), String> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            // libvirt prints every error to stderr by default; the agent
            // reports them itself, with context.
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl().map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::error!(error = %e, "libvirt event loop failed");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                })
                .map_err(|e| format!("cannot start the libvirt event thread: {e}"))?;
            Ok(())
        })
        .clone()
}

/// The callbacks registered on one connection; dropping it deregisters them
/// (it may talk to libvirtd: drop it on a blocking thread).
pub struct Registration {
    conn: Connect,
    lifecycle: c_int,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: `conn` is a live reference (we hold a count on it); the id
        // and function are the ones registered in `register`. Failures (a
        // dead connection) leave nothing to clean up on our side: libvirt
        // frees the sinks through their free callbacks either way.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.lifecycle);
            sys::virConnectUnregisterCloseCallback(self.conn.as_ptr(), Some(close_cb));
        }
    }
}

/// Registers for every domain's lifecycle events and for the connection's
/// close. Events go to `events` (never blocking libvirt's event thread: when
/// it is full, `overflow` is set instead).
pub fn register(
    conn: &Connect,
    events: mpsc::Sender<Lifecycle>,
    overflow: Arc<AtomicBool>,
    closed: Arc<Closed>,
) -> Result<Registration, virt::error::Error> {
    let closed_ptr = Arc::into_raw(closed) as *mut c_void;
    // SAFETY: `closed_ptr` is an owned Arc count handed to libvirt, given
    // back to `free_closed` exactly once (on unregister or connection end).
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_cb),
            closed_ptr,
            Some(free_closed),
        )
    };
    if rc < 0 {
        // SAFETY: libvirt did not take the pointer; reclaim it.
        unsafe { drop(Arc::from_raw(closed_ptr as *const Closed)) };
        return Err(virt::error::Error::last_error());
    }
    let sink = Box::into_raw(Box::new(Sink { events, overflow })) as *mut c_void;
    // SAFETY: libvirt calls lifecycle callbacks with the lifecycle signature
    // through the generic pointer type (its own VIR_DOMAIN_EVENT_CALLBACK
    // macro is this cast); `sink` is freed by `free_sink` exactly once.
    let id = unsafe {
        let cb: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            c_int,
            c_int,
            *mut c_void,
        ) -> c_int = lifecycle_cb;
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    c_int,
                    c_int,
                    *mut c_void,
                ) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(cb)),
            sink,
            Some(free_sink),
        )
    };
    if id < 0 {
        let err = virt::error::Error::last_error();
        // SAFETY: registration failed, libvirt did not keep `sink`.
        unsafe {
            drop(Box::from_raw(sink as *mut Sink));
            sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(close_cb));
        }
        return Err(err);
    }
    Ok(Registration {
        conn: conn.clone(),
        lifecycle: id,
    })
}

/// Takes ownership of a descriptor libvirt returned to us
/// (`virDomainOpenGraphicsFD`: one end of a fresh socketpair, ours alone).
pub fn adopt_fd(fd: u32) -> OwnedFd {
    // SAFETY: libvirt created this descriptor for the caller and keeps no
    // copy; nothing else in the process knows it, so owning it is sound.
    unsafe { OwnedFd::from_raw_fd(fd as c_int) }
}

/// A non-blocking stream read: `Some(n)` bytes (0 at the end of the
/// stream), `None` when nothing is there yet.
pub fn stream_recv(stream: &Stream, buf: &mut [u8]) -> Result<Option<usize>, virt::error::Error> {
    // SAFETY: the stream is alive (borrowed) and `buf` is writable for its
    // length.
    let rc =
        unsafe { sys::virStreamRecv(stream.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len()) };
    match rc {
        -2 => Ok(None),
        n if n >= 0 => Ok(Some(n as usize)),
        _ => Err(virt::error::Error::last_error()),
    }
}

/// A non-blocking stream write: `Some(n)` bytes taken, `None` when it
/// would block.
pub fn stream_send(stream: &Stream, data: &[u8]) -> Result<Option<usize>, virt::error::Error> {
    // SAFETY: the stream is alive (borrowed) and `data` readable for its
    // length; libvirt does not keep the pointer.
    let rc =
        unsafe { sys::virStreamSend(stream.as_ptr(), data.as_ptr() as *const c_char, data.len()) };
    match rc {
        -2 => Ok(None),
        n if n >= 0 => Ok(Some(n as usize)),
        _ => Err(virt::error::Error::last_error()),
    }
}

/// Wakes `wake` (from libvirt's event thread, never blocking it) whenever
/// the stream has data, ends or fails. One watch per stream; remove it with
/// [`stream_unwatch`] before the stream is dropped.
pub fn stream_watch(
    stream: &Stream,
    wake: std::sync::mpsc::SyncSender<()>,
) -> Result<(), virt::error::Error> {
    let opaque = Box::into_raw(Box::new(wake)) as *mut c_void;
    let events =
        sys::VIR_STREAM_EVENT_READABLE | sys::VIR_STREAM_EVENT_ERROR | sys::VIR_STREAM_EVENT_HANGUP;
    // SAFETY: `opaque` is an owned box given to libvirt and freed by
    // `free_waker` exactly once.
    let rc = unsafe {
        sys::virStreamEventAddCallback(
            stream.as_ptr(),
            events as c_int,
            Some(stream_cb),
            opaque,
            Some(free_waker),
        )
    };
    if rc < 0 {
        let err = virt::error::Error::last_error();
        // SAFETY: registration failed; libvirt did not keep the box.
        unsafe {
            drop(Box::from_raw(
                opaque as *mut std::sync::mpsc::SyncSender<()>,
            ))
        };
        return Err(err);
    }
    Ok(())
}

/// Also wakes `wake` when `conn` closes (libvirtd went away): a stream
/// whose connection dies gets no stream event. For a connection that
/// carries one stream; libvirt drops `wake` with the connection.
pub fn wake_on_close(
    conn: &Connect,
    wake: std::sync::mpsc::SyncSender<()>,
) -> Result<(), virt::error::Error> {
    let opaque = Box::into_raw(Box::new(wake)) as *mut c_void;
    // SAFETY: `opaque` is an owned box given to libvirt, freed by
    // `free_waker` exactly once.
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_wake_cb),
            opaque,
            Some(free_waker),
        )
    };
    if rc < 0 {
        let err = virt::error::Error::last_error();
        // SAFETY: registration failed; libvirt did not keep the box.
        unsafe {
            drop(Box::from_raw(
                opaque as *mut std::sync::mpsc::SyncSender<()>,
            ))
        };
        return Err(err);
    }
    Ok(())
}

unsafe extern "C" fn close_wake_cb(_conn: sys::virConnectPtr, _reason: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the SyncSender box registered with this callback.
    let wake = &*(opaque as *const std::sync::mpsc::SyncSender<()>);
    let _ = wake.try_send(());
}

/// Removes the watch of [`stream_watch`] (errors mean there was none).
pub fn stream_unwatch(stream: &Stream) {
    // SAFETY: the stream is alive (borrowed).
    unsafe {
        sys::virStreamEventRemoveCallback(stream.as_ptr());
    }
}

unsafe extern "C" fn stream_cb(_st: sys::virStreamPtr, _events: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the SyncSender box registered with this callback,
    // alive until `free_waker`.
    let wake = &*(opaque as *const std::sync::mpsc::SyncSender<()>);
    // Full means a wake-up is already pending: nothing is lost.
    let _ = wake.try_send(());
}

unsafe extern "C" fn free_waker(opaque: *mut c_void) {
    // SAFETY: the pointer came from Box::into_raw in `stream_watch`.
    drop(Box::from_raw(
        opaque as *mut std::sync::mpsc::SyncSender<()>,
    ));
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the Sink registered with this callback, alive
    // until `free_sink`; `dom` is valid for the duration of the call.
    let sink = &*(opaque as *const Sink);
    let name = sys::virDomainGetName(dom);
    if name.is_null() {
        sink.overflow.store(true, Ordering::SeqCst);
        return 0;
    }
    let domain = CStr::from_ptr(name).to_string_lossy().into_owned();
    let ev = Lifecycle {
        domain,
        event: event as u32,
        detail: detail as u32,
    };
    if sink.events.try_send(ev).is_err() {
        sink.overflow.store(true, Ordering::SeqCst);
    }
    0
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: the pointer came from Box::into_raw in `register`.
    drop(Box::from_raw(opaque as *mut Sink));
}

unsafe extern "C" fn close_cb(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the Arc<Closed> count owned by libvirt until
    // `free_closed`.
    let closed = &*(opaque as *const Closed);
    let why = match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "libvirtd closed the connection",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "libvirtd stopped answering keepalives",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by the agent",
        _ => "connection error",
    };
    if let Ok(mut r) = closed.reason.lock() {
        *r = why;
    }
    closed.token.cancel();
}

unsafe extern "C" fn free_closed(opaque: *mut c_void) {
    // SAFETY: the pointer came from Arc::into_raw in `register`.
    drop(Arc::from_raw(opaque as *const Closed));
}
