//! The epoll backend: drives one [`ShardCore`] with a single-threaded tokio runtime.
//!
//! Owns the shard thread's runtime, its listener, the sockets (in a vector indexed
//! like the core's slab), the shard's one shared read buffer and the loop's tasks:
//! - the accept loop;
//! - one small task per connection that reads while the socket is readable (into the
//!   shared buffer, so an idle connection owns no read buffer) and, when a write would
//!   block, waits for writability;
//! - the flusher, woken once per loop turn when connections have frames queued, which
//!   writes each connection's whole queue with one vectored write (corking): tokio's
//!   current-thread scheduler runs it after the connection tasks woken in the same turn;
//! - the inbox task (eventfd) and the timer task (the heartbeat wheel's tick).
//!
//! Does not own connection state or protocol logic (the core does), so an io_uring
//! backend can drive the same core.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use crossbeam_channel::Sender;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::LocalSet;

use switchboard_protocol::handshake;

use crate::auth::ControlRequest;
use crate::clock::{self, Now};
use crate::config::EngineConfig;
use crate::core::{AfterFlush, ConnKey, ConnState, ShardCore};
use crate::mesh::Mesh;
use crate::metrics::ShardMetrics;

/// Most reads per connection per wake-up before yielding to the others.
const READS_PER_WAKE: usize = 4;
/// Most inbox messages handled per wake-up before yielding.
const INBOX_BUDGET: usize = 4096;
/// Most frames passed to one vectored write.
const IOV_MAX: usize = 64;

/// Everything a shard thread needs to start.
pub(crate) struct ShardSetup {
    pub id: u16,
    pub cfg: Arc<EngineConfig>,
    pub listener: std::net::TcpListener,
    pub mesh: Arc<Mesh>,
    pub control: Sender<ControlRequest>,
    pub metrics: Arc<ShardMetrics>,
    pub core_id: Option<core_affinity::CoreId>,
    /// Told once whether the shard's I/O could be set up (and why not).
    pub started: std::sync::mpsc::SyncSender<Result<(), crate::Error>>,
}

struct Sock {
    stream: TcpStream,
    /// Waker of the connection's task, to make it run from elsewhere.
    waker: Option<Waker>,
    /// The last write hit EWOULDBLOCK; the task waits for writability.
    write_blocked: bool,
}

struct Driver {
    core: ShardCore,
    socks: Vec<Option<Sock>>,
    /// The shard's one read buffer, shared by every connection.
    read_buf: BytesMut,
    read_buf_bytes: usize,
    flush_waker: Option<Waker>,
    flush_scheduled: bool,
    scratch: Vec<u32>,
    shutdown: Rc<Notify>,
    shutdown_signalled: bool,
}

type Shared = Rc<RefCell<Driver>>;

/// Run one shard on the current thread until it has shut down.
pub(crate) fn run(setup: ShardSetup) {
    if let Some(core) = setup.core_id {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(
                shard = setup.id,
                "could not pin shard thread to core {}",
                core.id
            );
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = setup.started.send(Err(crate::Error::Backend {
                backend: "epoll",
                message: format!("shard {}: cannot start runtime: {e}", setup.id),
            }));
            return;
        }
    };
    let _ = setup.started.send(Ok(()));
    // However the shard ends (a panic unwinding through here also drops its listener, so
    // the kernel sends new connections to the other shards), it stops counting as
    // accepting, and readiness says so.
    let _accepting = NotAcceptingOnExit(setup.metrics.clone());
    LocalSet::new().block_on(&rt, drive(setup));
}

pub(crate) struct NotAcceptingOnExit(pub(crate) Arc<ShardMetrics>);

impl Drop for NotAcceptingOnExit {
    fn drop(&mut self) {
        self.0.accepting.store(false, Ordering::Release);
        if std::thread::panicking() {
            tracing::error!("a shard panicked: its connections are gone and it no longer accepts");
        }
    }
}

async fn drive(setup: ShardSetup) {
    let ShardSetup {
        id,
        cfg,
        listener,
        mesh,
        control,
        metrics,
        ..
    } = setup;
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = id, "cannot register listener: {e}");
            return;
        }
    };
    let eventfd = EventFd {
        mesh: mesh.clone(),
        shard: id as usize,
    };
    // SAFETY: the eventfd belongs to the mesh, which `EventFd` keeps alive (an Arc) for
    // as long as the registration exists; nothing else closes it.
    let inbox_fd = match unsafe { AsyncFd::register_with_interest(eventfd, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(shard = id, "cannot register inbox: {e}");
            return;
        }
    };
    let shutdown = Rc::new(Notify::new());
    let driver: Shared = Rc::new(RefCell::new(Driver {
        core: ShardCore::new(
            id,
            cfg.clone(),
            mesh.clone(),
            control,
            metrics.clone(),
            Now::read(),
        ),
        socks: Vec::new(),
        read_buf: BytesMut::with_capacity(cfg.read_buffer_bytes),
        read_buf_bytes: cfg.read_buffer_bytes,
        flush_waker: None,
        flush_scheduled: false,
        scratch: Vec::new(),
        shutdown: shutdown.clone(),
        shutdown_signalled: false,
    }));
    tokio::task::spawn_local(FlushTask {
        driver: driver.clone(),
    });
    tokio::task::spawn_local(InboxTask {
        driver: driver.clone(),
        fd: inbox_fd,
        mesh: mesh.clone(),
        id: id as usize,
        more: false,
    });
    tokio::task::spawn_local(timer(driver.clone(), cfg.tick_ms));

    metrics.accepting.store(true, Ordering::Release);
    tracing::debug!(shard = id, "accepting");
    let mut failures = crate::files::Throttled::new(Duration::from_secs(10));
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    accept(&driver, stream, peer.ip())
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off (doubling, up to a second) instead
                    // of spinning, and say so once per 10 s, not per attempt.
                    if let Some(suppressed) = failures.allow(clock::mono()) {
                        tracing::warn!(shard = id, suppressed, "accept failed: {e}; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = shutdown.notified() => break,
        }
    }
    metrics.accepting.store(false, Ordering::Release);
    drop(listener);

    let deadline = clock::mono() + Duration::from_millis(cfg.drain_timeout_ms);
    let poll = Duration::from_millis(cfg.tick_ms.min(20));
    while driver.borrow().core.connections() > 0 && clock::mono() < deadline {
        tokio::time::sleep(poll).await;
    }
    // Whatever this shard sequenced goes to the store before it stops.
    driver.borrow_mut().core.end_turn();
    let left = driver.borrow().core.connections();
    tracing::info!(shard = id, connections_left = left, "shard stopped");
}

fn accept(driver: &Shared, stream: TcpStream, peer: std::net::IpAddr) {
    let _ = stream.set_nodelay(true);
    let mut d = driver.borrow_mut();
    match d.core.admit(peer, Now::read()) {
        Ok(key) => {
            let slot = key.slot as usize;
            if d.socks.len() <= slot {
                d.socks.resize_with(slot + 1, || None);
            }
            d.socks[slot] = Some(Sock {
                stream,
                waker: None,
                write_blocked: false,
            });
            drop(d);
            tokio::task::spawn_local(ConnTask {
                driver: driver.clone(),
                key,
            });
        }
        Err(refusal) => {
            let (status, reason) = refusal.http();
            // Best effort, never waits: the socket is dropped right after.
            let _ = stream.try_write(&handshake::error_response(status, reason));
        }
    }
}

impl Driver {
    /// Wake what the core asked to wake, and the flusher if frames are queued.
    fn after_core(&mut self) {
        // Hand this turn's durable publications to the store, retry full inboxes.
        self.core.end_turn();
        let mut wake = std::mem::take(&mut self.scratch);
        self.core.take_wake(&mut wake);
        let mut resumed = Vec::new();
        self.core.take_resumed(&mut resumed);
        // A resumed connection's task reads again (it skipped reading while paused).
        wake.append(&mut resumed);
        for &slot in &wake {
            if let Some(Some(sock)) = self.socks.get(slot as usize) {
                if let Some(w) = &sock.waker {
                    w.wake_by_ref();
                }
            }
        }
        wake.clear();
        self.scratch = wake;
        if self.core.has_dirty() && !self.flush_scheduled {
            self.flush_scheduled = true;
            if let Some(w) = &self.flush_waker {
                w.wake_by_ref();
            }
        }
        if self.core.shutting_down() && !self.shutdown_signalled {
            self.shutdown_signalled = true;
            self.shutdown.notify_one();
        }
    }

    /// Write every dirty connection's queue: one vectored write each.
    fn flush_all(&mut self) {
        let mut list = std::mem::take(&mut self.scratch);
        self.core.take_dirty(&mut list);
        for &slot in &list {
            self.flush_one(slot);
        }
        list.clear();
        self.scratch = list;
        self.core.record_flush_latency(Now::read());
    }

    /// Hot path: write `slot`'s queued frames with as few syscalls as the kernel allows.
    fn flush_one(&mut self, slot: u32) {
        let Some(Some(sock)) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if sock.write_blocked {
            return;
        }
        loop {
            let Some(out) = self.core.out_mut(slot) else {
                return;
            };
            if out.is_empty() {
                break;
            }
            let result = {
                let mut slices = [IoSlice::new(&[]); IOV_MAX];
                let n = out.fill(&mut slices);
                send_vectored(&sock.stream, &slices[..n])
            };
            match result {
                Ok(written) => self.core.written(slot, written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sock.write_blocked = true;
                    if let Some(w) = &sock.waker {
                        w.wake_by_ref();
                    }
                    return;
                }
                Err(_) => {
                    self.core.on_io_error(slot, Now::read());
                    return;
                }
            }
        }
        if self.core.flushed(slot) == AfterFlush::ShutdownWrite {
            let _ = socket2::SockRef::from(&sock.stream).shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Hot path: one `sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT)` with every queued frame, or a
/// plain `send` when there is one (a fan-out's usual case: no iovec to copy in).
///
/// Hand-written instead of tokio's `try_write_vectored` because that is `writev`, which
/// goes through the VFS layer (`vfs_writev`, `fdget_pos`, `sock_write_iter`): about 8%
/// of the shard's CPU in the fan-out profile, for nothing a socket needs. Runs inside
/// `try_io`, so an EAGAIN still clears tokio's write readiness.
#[inline]
fn send_vectored(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    const FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    stream.try_io(Interest::WRITABLE, || {
        let sock = socket2::SockRef::from(stream);
        match bufs {
            [one] => sock.send_with_flags(one, FLAGS),
            _ => sock.send_vectored_with_flags(bufs, FLAGS),
        }
    })
}

/// What one [`read_some`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Read {
    /// The peer closed its side: no more bytes will come.
    Eof,
    /// Bytes were read and the buffer was filled: there may be more.
    More,
    /// Bytes were read and the socket's queue is empty.
    Drained,
}

/// Hot path: one `recv` into the spare capacity of `buf`.
///
/// A read that returns less than it was offered emptied the socket's receive queue
/// (TCP's `recvmsg` copies until the queue, backlog included, is empty or the buffer is
/// full), and with edge-triggered epoll any later arrival raises a new event. So a
/// short read clears tokio's read readiness itself (by returning `WouldBlock` from
/// `try_io`, after the bytes are in `buf`) instead of issuing one more `recv` only to
/// be told EAGAIN: one syscall per message instead of two, as uWebSockets does with
/// level-triggered epoll. A peer's FIN is not lost: tokio never clears READ_CLOSED, so
/// the next poll is ready and the following `recv` returns 0. Hand-written because
/// tokio's `try_read_buf` has no way to say "read, and the queue is now empty".
#[inline]
fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<Read> {
    let mut read = Read::More;
    let result = stream.try_io(Interest::READABLE, || {
        let spare = buf.spare_capacity_mut();
        let offered = spare.len();
        // SAFETY: `recv` writes at most `offered` bytes into the spare capacity, which
        // is valid for writes; the bytes it reports are initialised before `set_len`.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                offered,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised `n <= offered` bytes past the length.
        unsafe { buf.set_len(buf.len() + n) };
        if n == 0 {
            read = Read::Eof;
            Ok(())
        } else if n < offered {
            read = Read::Drained;
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match result {
        Ok(()) => Ok(read),
        Err(e) if read == Read::Drained && e.kind() == io::ErrorKind::WouldBlock => Ok(read),
        Err(e) => Err(e),
    }
}

/// One connection's task: reads while readable, waits for writability when blocked.
struct ConnTask {
    driver: Shared,
    key: ConnKey,
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut guard = this.driver.borrow_mut();
        let d = &mut *guard;
        let slot = this.key.slot;
        match d.core.state(this.key) {
            None => return Poll::Ready(()),
            Some(ConnState::Closed) => return finish(d, slot),
            Some(_) => {}
        }
        let Some(Some(sock)) = d.socks.get_mut(slot as usize) else {
            return Poll::Ready(());
        };
        if !sock.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            sock.waker = Some(cx.waker().clone());
        }
        let mut reads = 0;
        // Input paused by the core (see `ShardCore::wants_input`): the socket is not
        // read, so TCP slows the client; `take_resumed` wakes this task again.
        while d.core.wants_input(slot) {
            match sock.stream.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => {
                    d.core.on_io_error(slot, Now::read());
                    break;
                }
                Poll::Ready(Ok(())) => {}
            }
            if d.read_buf.capacity() - d.read_buf.len() < 4096 {
                d.read_buf.reserve(d.read_buf_bytes);
            }
            match read_some(&sock.stream, &mut d.read_buf) {
                Ok(Read::Eof) => {
                    d.core.on_eof(slot, Now::read());
                    break;
                }
                Ok(read) => {
                    d.core.on_read(slot, &mut d.read_buf, Now::read());
                    if read == Read::Drained {
                        // Tokio's readiness is already cleared: the next poll registers
                        // the waker without a syscall, and the next arrival raises a new
                        // edge, so no read is spent only to be told EAGAIN.
                        continue;
                    }
                    reads += 1;
                    if reads == READS_PER_WAKE {
                        cx.waker().wake_by_ref();
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    d.core.on_io_error(slot, Now::read());
                    break;
                }
            }
        }
        if sock.write_blocked {
            match sock.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {
                    sock.write_blocked = false;
                    d.flush_one(slot);
                }
                Poll::Ready(Err(_)) => d.core.on_io_error(slot, Now::read()),
                Poll::Pending => {}
            }
        }
        if d.core.state(this.key) == Some(ConnState::Closed) {
            return finish(d, slot);
        }
        d.after_core();
        Poll::Pending
    }
}

fn finish(d: &mut Driver, slot: u32) -> Poll<()> {
    if let Some(s) = d.socks.get_mut(slot as usize) {
        *s = None;
    }
    d.core.remove(slot);
    d.after_core();
    Poll::Ready(())
}

/// Writes queued frames once per loop turn.
struct FlushTask {
    driver: Shared,
}

impl Future for FlushTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut d = self.driver.borrow_mut();
        if !d
            .flush_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            d.flush_waker = Some(cx.waker().clone());
        }
        d.flush_scheduled = false;
        d.flush_all();
        d.after_core();
        Poll::Pending
    }
}

/// A shard inbox's eventfd; holds the mesh so the fd outlives its registration.
struct EventFd {
    mesh: Arc<Mesh>,
    shard: usize,
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.mesh.inbox(self.shard).fd()
    }
}

/// Drains the shard's inbox when its eventfd fires.
struct InboxTask {
    driver: Shared,
    fd: AsyncFd<EventFd>,
    mesh: Arc<Mesh>,
    id: usize,
    /// The budget ran out with messages left: drain again without waiting.
    more: bool,
}

impl Future for InboxTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let inbox = this.mesh.inbox(this.id);
        loop {
            if !this.more {
                match this.fd.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        tracing::error!(shard = this.id, "inbox failed: {e}");
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(mut ready)) => ready.clear_ready(),
                }
                // Consume the wake-up before draining, so a push during the drain
                // wakes us again rather than being missed.
                inbox.clear_wakeup();
            }
            this.more = false;
            let mut d = this.driver.borrow_mut();
            let mut n = 0;
            let now = Now::read();
            while let Some(msg) = inbox.pop() {
                d.core.on_message(msg, now);
                n += 1;
                if n == INBOX_BUDGET {
                    this.more = true;
                    break;
                }
            }
            d.after_core();
            if this.more {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

async fn timer(driver: Shared, tick_ms: u64) {
    let start = clock::mono();
    let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let now = Now::read();
        let since = now.mono.saturating_duration_since(start);
        let tick = (since.as_millis() / tick_ms as u128) as u64;
        let mut d = driver.borrow_mut();
        d.core.on_tick(tick, now);
        d.after_core();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Read readiness as the connection task sees it, without waiting.
    fn ready_now(stream: &TcpStream) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        stream.poll_read_ready(&mut cx).is_ready()
    }

    /// A short read leaves tokio's readiness cleared (no EAGAIN read needed), a later
    /// arrival raises it again, and a FIN that came with the last bytes is still seen.
    #[test]
    fn short_reads_clear_readiness_and_keep_the_fin() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::with_capacity(4096);

            client.write_all(b"hello").unwrap();
            server.readable().await.unwrap();
            assert_eq!(read_some(&server, &mut buf).unwrap(), Read::Drained);
            assert_eq!(&buf[..], b"hello");
            assert!(!ready_now(&server), "readiness cleared by the short read");

            // The next bytes and the FIN arrive together.
            client.write_all(b" world").unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            server.readable().await.unwrap();
            assert_eq!(read_some(&server, &mut buf).unwrap(), Read::Drained);
            assert_eq!(&buf[..], b"hello world");
            assert!(ready_now(&server), "the FIN keeps the socket readable");
            assert_eq!(read_some(&server, &mut buf).unwrap(), Read::Eof);

            // A full buffer is not a drained socket.
            let (mut client, server) = {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                let (s, _) = listener.accept().await.unwrap();
                c.write_all(&[7u8; 100]).unwrap();
                (c, s)
            };
            server.readable().await.unwrap();
            let mut small = BytesMut::with_capacity(64);
            let spare = small.capacity();
            assert_eq!(read_some(&server, &mut small).unwrap(), Read::More);
            assert_eq!(small.len(), spare);
            client.flush().unwrap();
        });
    }
}
