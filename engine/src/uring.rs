//! The io_uring backend: drives one [`ShardCore`] with a completion ring per shard.
//!
//! Owns the shard's ring, its listener, the sockets (a table indexed like the core's
//! slab), the shard's provided-buffer ring for reads and the send operations in flight.
//! Does not own connection state or protocol logic (the core does, exactly as under
//! epoll).
//!
//! # Why the `io-uring` crate and not tokio-uring
//! tokio-uring gives one future per operation with a buffer it owns, and has no
//! multishot accept, multishot receive or provided-buffer rings. Those are what make a
//! shard with 20,000 mostly idle connections cheap: one armed receive per connection that
//! keeps producing completions, reading into buffers the shard shares, so an idle
//! connection pins no buffer and a read costs no submission. The loop is therefore
//! hand-written on the lower-level `io-uring` crate: one `io_uring_enter` per turn
//! submits every send queued in that turn (for all connections) and waits for the next
//! completion or the next timer tick (`EXT_ARG` timeout), with no timer operation.
//!
//! # One turn of the loop
//! 1. Reap completions: accepted sockets (`admit`, then a multishot receive is armed),
//!    receives (the bytes are copied out of the provided buffer into the shard's read
//!    buffer, the buffer goes straight back to the ring, `on_read`), finished sends
//!    (`written`, `flushed`), the inbox eventfd's multishot poll (drain the mesh inbox).
//! 2. The timer tick when due (`on_tick`).
//! 3. Connections the core closed: cancel their operations (one `ASYNC_CANCEL` by fd);
//!    when the last completion arrives, close the fd (a `CLOSE` submission) and `remove`.
//! 4. For each dirty connection without a send in flight: pin its queued frames
//!    ([`OutQueue::pin`](crate::outq::OutQueue::pin): the core may no longer drop
//!    them), point an iovec array at them and queue one `SENDMSG` (or `SEND` for a
//!    single frame). At most one send per connection is in flight, so frames leave in
//!    order; a short send is continued when it completes.
//! 5. `submit_and_wait` with a timeout at the next tick.
//!
//! Buffer ownership (see `docs/IO_URING.md`): the kernel writes into provided buffers
//! and reads from pinned frames after the submission returns, so both stay allocated
//! until the completion says the kernel is done: the buffer ring and its buffers until
//! the ring is gone; a send's frames pinned in the connection's queue, and its
//! `SendOp`, until its CQE (the connection leaves the core only after its last
//! completion). A cancelled operation still completes (`-ECANCELED`); only then is its
//! memory reused.
//!
//! Other shards on io_uring wake this one with `IORING_OP_MSG_RING` (a completion in
//! our ring, no eventfd), and this one wakes them the same way: the core defers its
//! wake-ups ([`ShardCore::defer_wakes`]) and each turn sends one ring message per shard
//! it pushed to. Control-plane threads still use the inbox's eventfd.
//!
//! Rare paths use plain syscalls: `getpeername` and `TCP_NODELAY` per accepted socket,
//! `shutdown(SHUT_WR)` when a close frame has gone out, and the refusal answer (503/429).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::{self, Now};

use bytes::BytesMut;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use switchboard_protocol::handshake;

use crate::config::EngineConfig;
use crate::core::{AfterFlush, ConnState, ShardCore};
use crate::epoll::{NotAcceptingOnExit, ShardSetup};
use crate::mesh::{Mesh, Refusal};
use crate::metrics::ShardMetrics;

/// Submission queue entries per shard ring.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries per shard ring (receives are multishot, so completions
/// outnumber submissions).
const CQ_ENTRIES: u32 = 16_384;
/// Most frames in one send submission.
const IOV_MAX: usize = 32;
/// Most inbox messages handled per turn before giving the sockets a turn.
const INBOX_BUDGET: usize = 4096;
/// Buffer group id of the shard's provided receive buffers.
const BGID: u16 = 0;
/// Send operations kept for reuse however few are in flight.
const SEND_POOL_MIN: usize = 64;

// What a completion is for: the top byte of its user data. The low 32 bits are the
// connection's slot and the next 24 bits its generation.
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_INBOX: u64 = 4;
const OP_CANCEL: u64 = 5;
const OP_CLOSE: u64 = 6;
/// Our ring message to another shard's ring went out (slot: the target shard).
const OP_WAKE_SENT: u64 = 7;
/// Another io_uring shard pushed to our inbox and woke us with a ring message. Not an
/// operation of ours: it does not count as outstanding.
const OP_WAKE_IN: u64 = 8;

#[inline]
fn user_data(op: u64, slot: u32, gen: u32) -> u64 {
    (op << 56) | (u64::from(gen & 0x00ff_ffff) << 32) | u64::from(slot)
}

#[inline]
fn split_user_data(ud: u64) -> (u64, u32, u32) {
    (ud >> 56, ((ud >> 32) & 0x00ff_ffff) as u32, ud as u32)
}

/// Why io_uring cannot run here, if it cannot: sets up a ring, checks every opcode the
/// shards use, registers a provided-buffer ring of the configured size (locked memory)
/// and runs a multishot receive over a socket pair. Cheap (well under a millisecond).
pub(crate) fn probe(cfg: &EngineConfig) -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("io_uring is disabled by the kernel (kernel.io_uring_disabled = 2)".into());
        }
    }
    let ring = IoUring::builder()
        .build(8)
        .map_err(|e| format!("io_uring_setup failed: {e} (forbidden by seccomp, a container policy or kernel.io_uring_disabled?)"))?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err(
            "the kernel's io_uring lacks EXT_ARG or NODROP (Linux 5.11 or later needed)".into(),
        );
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (name, code) in [
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::RecvMulti::CODE),
        ("SEND", opcode::Send::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel2::CODE),
        ("CLOSE", opcode::Close::CODE),
        ("MSG_RING", opcode::MsgRingData::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring does not support {name}"));
        }
    }
    let mut ring = ring;
    let bufs = BufRing::new(&ring, cfg.uring_buffers, cfg.uring_buffer_bytes).map_err(|e| {
        format!(
            "cannot register {} provided buffers of {} bytes: {e} (locked-memory limit: {})",
            cfg.uring_buffers,
            cfg.uring_buffer_bytes,
            memlock_limit()
        )
    })?;
    // Multishot receive (Linux 6.0) cannot be seen in the probe: try it.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(format!("socketpair: {}", io::Error::last_os_error()));
    }
    let result = (|| {
        let sqe = opcode::RecvMulti::new(types::Fd(fds[0]), BGID)
            .build()
            .user_data(1);
        // SAFETY: the receive reads into the registered buffer ring, alive until after
        // the ring is dropped at the end of this function.
        unsafe { ring.submission().push(&sqe) }.map_err(|_| "submission queue full".to_string())?;
        // SAFETY: writes 4 bytes from a static buffer to a socket we own.
        if unsafe { libc::write(fds[1], b"ping".as_ptr().cast(), 4) } != 4 {
            return Err(format!("write: {}", io::Error::last_os_error()));
        }
        let ts = types::Timespec::new().nsec(200_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        ring.submitter()
            .submit_with_args(1, &args)
            .map_err(|e| format!("io_uring_enter failed: {e}"))?;
        let cqe = ring
            .completion()
            .next()
            .ok_or("no completion for a multishot receive")?;
        if cqe.result() != 4 || !cqueue::more(cqe.flags()) {
            return Err(format!(
                "multishot receive not supported (result {}, Linux 6.0 or later needed)",
                cqe.result()
            ));
        }
        Ok(())
    })();
    // SAFETY: closing the two descriptors socketpair gave us.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    drop(ring);
    drop(bufs);
    result
}

fn memlock_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    }
}

/// The shard's provided receive buffers: a ring of buffer descriptors shared with the
/// kernel and one block of memory cut into equal buffers.
///
/// The kernel takes a buffer from the head of the ring for each completed receive; the
/// shard returns it at the tail as soon as it copied the bytes out, so the ring only
/// runs dry when more receives complete in one turn than it has buffers (the receive
/// then ends with `ENOBUFS` and is re-armed after the turn's buffers are back).
struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_layout: std::alloc::Layout,
    bufs: *mut u8,
    bufs_layout: std::alloc::Layout,
    entries: u16,
    buf_bytes: usize,
    tail: u16,
}

impl BufRing {
    fn new(uring: &IoUring, entries: usize, buf_bytes: usize) -> io::Result<BufRing> {
        let ring_layout = std::alloc::Layout::from_size_align(entries * 16, 4096)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let bufs_layout = std::alloc::Layout::from_size_align(entries * buf_bytes, 4096)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: both layouts have a non-zero size (validated config: entries ≥ 1,
        // buf_bytes ≥ 512).
        let ring = unsafe { std::alloc::alloc_zeroed(ring_layout) }.cast::<types::BufRingEntry>();
        if ring.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // SAFETY: as above.
        let bufs = unsafe { std::alloc::alloc(bufs_layout) };
        if bufs.is_null() {
            // SAFETY: allocated just above with this layout.
            unsafe { std::alloc::dealloc(ring.cast(), ring_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut br = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries: entries as u16,
            buf_bytes,
            tail: 0,
        };
        // The kernel reads `entries` as u16 and 32768 fits; `entries` is a power of two.
        for bid in 0..entries {
            br.push(bid as u16);
        }
        br.publish();
        // SAFETY: the ring memory stays allocated until `BufRing` is dropped, which the
        // shard does only after its `IoUring` (field order) or, in `probe`, after
        // dropping the ring explicitly.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, entries as u16, BGID, 0)?
        };
        Ok(br)
    }

    /// The first `len` bytes of buffer `bid`, which a completion handed to us.
    #[inline]
    fn get(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(bid < self.entries);
        let len = len.min(self.buf_bytes);
        // SAFETY: `bid` indexes one of our buffers, which the kernel has finished
        // writing (its completion was posted) and gets back only through `push`.
        unsafe { std::slice::from_raw_parts(self.bufs.add(bid as usize * self.buf_bytes), len) }
    }

    /// Give buffer `bid` back to the kernel (visible after `publish`).
    #[inline]
    fn push(&mut self, bid: u16) {
        let mask = self.entries.wrapping_sub(1);
        // SAFETY: the index is masked into the ring; the entry is ours to write until the
        // tail moves past it.
        let entry = unsafe { &mut *self.ring.add((self.tail & mask) as usize) };
        // SAFETY: `bid` is in range, so the address is inside the buffer block.
        entry.set_addr(unsafe { self.bufs.add(bid as usize * self.buf_bytes) } as u64);
        entry.set_len(self.buf_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make the buffers given back so far visible to the kernel.
    #[inline]
    fn publish(&self) {
        // SAFETY: the tail is the u16 the kernel reads at the start of the ring; the
        // release store orders the entries written above before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring)
                .cast_mut()
                .cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring that used them is gone.
        unsafe {
            std::alloc::dealloc(self.ring.cast(), self.ring_layout);
            std::alloc::dealloc(self.bufs, self.bufs_layout);
        }
    }
}

/// One send in flight: the iovecs and message header pointing at the frames the kernel
/// is reading. The frames themselves stay pinned in the connection's queue
/// ([`OutQueue::pin`](crate::outq::OutQueue::pin)), which the shard drops only after
/// this operation's completion. Boxed so its address is stable while the kernel holds
/// it; reused from a pool.
struct SendOp {
    hdr: libc::msghdr,
    iov: [libc::iovec; IOV_MAX],
}

impl SendOp {
    fn new() -> Box<SendOp> {
        Box::new(SendOp {
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            hdr: unsafe { std::mem::zeroed() },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_MAX],
        })
    }
}

#[derive(Default)]
struct Sock {
    fd: RawFd,
    gen: u32,
    live: bool,
    /// The multishot receive is armed (its final completion has not arrived).
    recv_armed: bool,
    /// The send in flight, if any.
    send: Option<Box<SendOp>>,
    /// The core closed the connection: operations are being cancelled.
    tearing_down: bool,
}

impl Sock {
    fn ops(&self) -> usize {
        usize::from(self.recv_armed) + usize::from(self.send.is_some())
    }
}

struct Shard {
    // Field order matters: the ring is dropped before the buffers it points at.
    ring: IoUring,
    bufs: BufRing,
    core: ShardCore,
    /// The clock reading for the completions being handled (read once per batch).
    now: Now,
    mesh: Arc<Mesh>,
    id: usize,
    socks: Vec<Sock>,
    /// The shard's read buffer: receives are copied here from the provided buffer, so
    /// the core sees exactly what the epoll backend gives it.
    read_buf: BytesMut,
    /// Boxed on purpose: an op moves between the pool and a socket while the kernel
    /// may hold its address, so it must never move itself.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<SendOp>>,
    sends_in_flight: usize,
    sends_peak: usize,
    /// Operations submitted whose final completion has not arrived.
    outstanding: usize,
    listener: Option<std::net::TcpListener>,
    accept_armed: bool,
    inbox_armed: bool,
    inbox_more: bool,
    /// Connections whose receive ended and must be armed again this turn.
    rearm: Vec<u32>,
    /// Connections whose send completed with frames still queued.
    resend: Vec<u32>,
    scratch: Vec<u32>,
    cqes: Vec<cqueue::Entry>,
}

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
    let _accepting = NotAcceptingOnExit(setup.metrics.clone());
    let started = setup.started.clone();
    let mut shard = match Shard::new(setup) {
        Ok(s) => s,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(()));
    shard.run();
    if shard.outstanding > 0 {
        // The kernel may still read pinned frames or write provided buffers: keep all
        // of the shard's memory (and the ring) rather than free what it may touch.
        std::mem::forget(shard);
    }
}

fn build_ring() -> io::Result<IoUring> {
    // Only this thread submits; completion work runs when it asks for it
    // (DEFER_TASKRUN, Linux 6.1), inside its own `io_uring_enter`, instead of
    // interrupting it. TASKRUN_FLAG tells the loop when such work is pending.
    let deferred = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES);
    if let Ok(r) = deferred {
        return Ok(r);
    }
    let coop = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES);
    if let Ok(r) = coop {
        return Ok(r);
    }
    IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
}

impl Shard {
    fn new(setup: ShardSetup) -> Result<Shard, String> {
        let ShardSetup {
            id,
            cfg,
            listener,
            mesh,
            control,
            metrics,
            ..
        } = setup;
        let ring = build_ring().map_err(|e| format!("shard {id}: io_uring_setup failed: {e}"))?;
        let bufs = BufRing::new(&ring, cfg.uring_buffers, cfg.uring_buffer_bytes)
            .map_err(|e| format!("shard {id}: cannot register provided buffers: {e}"))?;
        // Accepted sockets are used through the ring only (blocking mode lets the ring
        // wait for readiness itself); the listener too.
        listener
            .set_nonblocking(false)
            .map_err(|e| format!("shard {id}: listener: {e}"))?;
        Ok(Shard {
            ring,
            bufs,
            now: Now::read(),
            core: ShardCore::new(id, cfg.clone(), mesh.clone(), control, metrics, Now::read()),
            mesh,
            id: id as usize,
            socks: Vec::new(),
            read_buf: BytesMut::with_capacity(cfg.uring_buffer_bytes.max(4096)),
            pool: Vec::new(),
            sends_in_flight: 0,
            sends_peak: 0,
            outstanding: 0,
            listener: Some(listener),
            accept_armed: false,
            inbox_armed: false,
            inbox_more: false,
            rearm: Vec::new(),
            resend: Vec::new(),
            scratch: Vec::new(),
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
        })
    }

    /// Queue a submission, submitting first when the queue is full.
    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: every submission's memory (buffers, iovecs, headers) is owned by
            // the shard until its completion; see the module documentation.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.outstanding += 1;
                return;
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(shard = self.id, "io_uring submit failed: {e}");
                }
                // The completion queue is full: reap it, then retry.
                self.reap();
            }
        }
    }

    fn arm_accept(&mut self) {
        let Some(l) = &self.listener else { return };
        let sqe = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(OP_ACCEPT, 0, 0));
        self.push(&sqe);
        self.accept_armed = true;
    }

    fn arm_inbox(&mut self) {
        let fd = self.mesh.inbox(self.id).fd();
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(OP_INBOX, 0, 0));
        self.push(&sqe);
        self.inbox_armed = true;
    }

    fn arm_recv(&mut self, slot: u32) {
        let Some(s) = self.socks.get(slot as usize) else {
            return;
        };
        if !s.live || s.recv_armed || s.tearing_down {
            return;
        }
        let sqe = opcode::RecvMulti::new(types::Fd(s.fd), BGID)
            .build()
            .user_data(user_data(OP_RECV, slot, s.gen));
        self.socks[slot as usize].recv_armed = true;
        self.push(&sqe);
    }

    fn run(&mut self) {
        let cfg_tick = self.core_tick_ms();
        let tick = Duration::from_millis(cfg_tick);
        let start = clock::mono();
        let mut next_tick = start + tick;
        let mut drain_deadline: Option<Instant> = None;
        self.arm_inbox();
        self.arm_accept();
        self.core.defer_wakes();
        self.mesh.inbox(self.id).set_ring_fd(self.ring.as_raw_fd());
        self.core.metrics().accepting.store(true, Ordering::Release);
        tracing::debug!(shard = self.id, "accepting (io_uring)");
        loop {
            self.reap();
            let clock = Now::read();
            let now = clock.mono;
            if now >= next_tick {
                let t = (now.duration_since(start).as_millis() / u128::from(cfg_tick)) as u64;
                self.core.on_tick(t, clock);
                self.core.end_turn();
                next_tick = start + tick * (t as u32 + 1);
                self.trim_pool();
                if self.listener.is_some() && !self.accept_armed {
                    // Accepting stopped on an error (EMFILE, ENFILE): retry each tick.
                    self.arm_accept();
                }
            }
            if self.inbox_more {
                self.drain_inbox();
            }
            self.after_core();
            if self.core.shutting_down() && drain_deadline.is_none() {
                self.stop_accepting();
                drain_deadline = Some(now + Duration::from_millis(self.core_drain_ms()));
            }
            if let Some(deadline) = drain_deadline {
                if self.core.connections() == 0 || now >= deadline {
                    break;
                }
            }
            let busy = self.inbox_more || !self.rearm.is_empty() || !self.resend.is_empty();
            let wait = if busy { 0 } else { 1 };
            let timeout = next_tick.saturating_duration_since(clock::mono());
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(wait, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::error!(shard = self.id, "io_uring_enter failed: {e}; shard stops");
                    break;
                }
            }
        }
        self.core
            .metrics()
            .accepting
            .store(false, Ordering::Release);
        // Whatever this shard sequenced goes to the store before it stops.
        self.core.end_turn();
        // From now on others wake us (if at all) through the eventfd.
        self.mesh.inbox(self.id).set_ring_fd(-1);
        self.wake_shards();
        let left = self.core.connections();
        self.close_everything();
        tracing::info!(shard = self.id, connections_left = left, "shard stopped");
    }

    fn core_tick_ms(&self) -> u64 {
        self.core.config().tick_ms
    }

    fn core_drain_ms(&self) -> u64 {
        self.core.config().drain_timeout_ms
    }

    fn stop_accepting(&mut self) {
        self.core
            .metrics()
            .accepting
            .store(false, Ordering::Release);
        if self.accept_armed {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(user_data(
                OP_ACCEPT, 0, 0,
            )))
            .build()
            .user_data(user_data(OP_CANCEL, 0, 0));
            self.push(&sqe);
        }
        // The accept holds its own reference to the file; the socket closes once it
        // completes, and the kernel sends new connections to the other shards.
        self.listener = None;
    }

    /// Handle every completion that has arrived.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion());
        // One clock reading for the whole batch of completions.
        self.now = Now::read();
        for cqe in &cqes {
            self.on_cqe(cqe.user_data(), cqe.result(), cqe.flags());
        }
        self.cqes = cqes;
        self.bufs.publish();
    }

    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        let (op, gen, slot) = split_user_data(ud);
        if op == OP_WAKE_IN {
            self.mesh.inbox(self.id).clear_notified();
            return self.drain_inbox();
        }
        let more = cqueue::more(flags);
        if !more {
            self.outstanding -= 1;
        }
        if op == OP_WAKE_SENT {
            if res < 0 {
                // The target's ring is gone (it stopped): its eventfd still works.
                self.mesh.inbox(slot as usize).wake();
            }
            return;
        }
        match op {
            OP_RECV => self.on_recv(slot, gen, res, flags, more),
            OP_SEND => self.on_send(slot, res),
            OP_ACCEPT => {
                if !more {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    self.on_accept(res);
                } else if res != -libc::ECANCELED {
                    tracing::warn!(
                        shard = self.id,
                        "accept failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                if !more && res != -libc::ECANCELED && self.listener.is_some() && res >= 0 {
                    self.arm_accept();
                }
            }
            OP_INBOX => {
                if !more {
                    self.inbox_armed = false;
                }
                if res < 0 && res != -libc::ECANCELED {
                    tracing::error!(
                        shard = self.id,
                        "inbox poll failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                self.mesh.inbox(self.id).clear_wakeup();
                self.drain_inbox();
                if !self.inbox_armed && res != -libc::ECANCELED {
                    self.arm_inbox();
                }
            }
            _ => {} // OP_CANCEL, OP_CLOSE: nothing to do.
        }
    }

    fn on_accept(&mut self, fd: RawFd) {
        let Some(peer) = peer_ip(fd) else {
            // SAFETY: we own the accepted descriptor.
            unsafe { libc::close(fd) };
            return;
        };
        set_nodelay(fd);
        match self.core.admit(peer, self.now) {
            Ok(key) => {
                let slot = key.slot as usize;
                if self.socks.len() <= slot {
                    self.socks.resize_with(slot + 1, Sock::default);
                }
                self.socks[slot] = Sock {
                    fd,
                    gen: key.gen,
                    live: true,
                    recv_armed: false,
                    send: None,
                    tearing_down: false,
                };
                self.arm_recv(key.slot);
            }
            Err(refusal) => {
                let (status, reason) = match refusal {
                    Refusal::ServerFull => (503, "server is at its connection limit"),
                    Refusal::TooManyFromIp => (429, "too many connections from this address"),
                    Refusal::TooFastFromIp => (429, "connecting too fast from this address"),
                };
                let resp = handshake::error_response(status, reason);
                // Best effort, never waits: the socket is closed right after.
                // SAFETY: sends from a live buffer on a descriptor we own, then closes it.
                unsafe {
                    libc::send(
                        fd,
                        resp.as_ptr().cast(),
                        resp.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    );
                    libc::close(fd);
                }
            }
        }
    }

    /// Hot path: one receive completion.
    fn on_recv(&mut self, slot: u32, gen: u32, res: i32, flags: u32, more: bool) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        debug_assert_eq!(sock.gen & 0x00ff_ffff, gen);
        if !more {
            sock.recv_armed = false;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                self.core.on_io_error(slot, self.now);
                return;
            };
            if !sock.tearing_down {
                // Copying out (usually a few hundred bytes) gives the buffer straight
                // back, so the ring never waits on a connection's partial frame.
                self.read_buf
                    .extend_from_slice(self.bufs.get(bid, res as usize));
                self.bufs.push(bid);
                self.core.on_read(slot, &mut self.read_buf, self.now);
                self.read_buf.clear();
            } else {
                self.bufs.push(bid);
            }
            if !more {
                self.rearm.push(slot);
            }
        } else if res == 0 {
            self.core.on_eof(slot, self.now);
        } else if res == -libc::ENOBUFS {
            // The ring ran dry this turn: arm again once the buffers are back.
            ShardMetrics::add(&self.core.metrics().uring_buffers_exhausted, 1);
            self.rearm.push(slot);
        } else if res != -libc::ECANCELED {
            self.core.on_io_error(slot, self.now);
        }
        self.maybe_finish(slot);
    }

    fn on_send(&mut self, slot: u32, res: i32) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        let Some(op) = sock.send.take() else {
            return;
        };
        let fd = sock.fd;
        let tearing_down = sock.tearing_down;
        self.pool.push(op);
        self.sends_in_flight -= 1;
        if tearing_down {
            return self.maybe_finish(slot);
        }
        if res >= 0 {
            self.core.written(slot, res as usize);
            let Some(out) = self.core.out_mut(slot) else {
                return;
            };
            out.unpin();
            if !out.is_empty() {
                self.resend.push(slot);
            } else if self.core.flushed(slot) == AfterFlush::ShutdownWrite {
                // SAFETY: shuts down the write side of a socket we own.
                unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            }
        } else if res != -libc::ECANCELED {
            if let Some(out) = self.core.out_mut(slot) {
                out.unpin();
            }
            self.core.on_io_error(slot, self.now);
        }
    }

    fn drain_inbox(&mut self) {
        self.inbox_more = false;
        let mesh = self.mesh.clone();
        let inbox = mesh.inbox(self.id);
        let mut n = 0;
        let now = Now::read();
        while let Some(msg) = inbox.pop() {
            self.core.on_message(msg, now);
            n += 1;
            if n == INBOX_BUDGET {
                self.inbox_more = true;
                break;
            }
        }
    }

    /// Wake the shards the core pushed messages to: a ring message straight into each
    /// io_uring shard's completion queue, submitted with this turn's other work (no
    /// eventfd write here, no eventfd read there).
    fn wake_shards(&mut self) {
        let mut wakes = self.core.take_wakes();
        while wakes != 0 {
            let shard = wakes.trailing_zeros() as usize;
            wakes &= wakes - 1;
            let inbox = self.mesh.inbox(shard);
            match inbox.ring_fd() {
                Some(fd) => {
                    let sqe = opcode::MsgRingData::new(
                        types::Fd(fd),
                        0,
                        user_data(OP_WAKE_IN, 0, 0),
                        None,
                    )
                    .build()
                    .user_data(user_data(OP_WAKE_SENT, shard as u32, 0));
                    self.push(&sqe);
                }
                None => inbox.wake(),
            }
        }
    }

    /// After the core ran: tear down closed connections, write queued frames, re-arm.
    fn after_core(&mut self) {
        let mut list = std::mem::take(&mut self.scratch);
        self.core.take_wake(&mut list);
        for &slot in &list {
            if self.core_state(slot) == Some(ConnState::Closed) {
                self.tear_down(slot);
            }
        }
        self.core.take_dirty(&mut list);
        list.append(&mut self.resend);
        for &slot in &list {
            self.send(slot);
        }
        list.clear();
        let mut rearm = std::mem::take(&mut self.rearm);
        for &slot in &rearm {
            self.arm_recv(slot);
        }
        rearm.clear();
        self.rearm = rearm;
        self.scratch = list;
        self.core.record_flush_latency(Now::read());
        self.core.end_turn();
        self.wake_shards();
    }

    fn core_state(&self, slot: u32) -> Option<ConnState> {
        let s = self.socks.get(slot as usize)?;
        if !s.live {
            return None;
        }
        self.core.state(crate::core::ConnKey { slot, gen: s.gen })
    }

    /// Hot path: queue one send with every frame waiting for `slot` (up to `IOV_MAX`).
    fn send(&mut self, slot: u32) {
        let Some(sock) = self.socks.get(slot as usize) else {
            return;
        };
        if !sock.live || sock.tearing_down || sock.send.is_some() {
            return; // A completion will continue (or nothing is left to write).
        }
        let (fd, gen) = (sock.fd, sock.gen);
        let Some(out) = self.core.out_mut(slot) else {
            return;
        };
        if out.is_empty() {
            return;
        }
        let mut op = self.pool.pop().unwrap_or_else(SendOp::new);
        let (n, offset) = out.pin(IOV_MAX);
        let sqe = if n == 1 {
            let Some(front) = out.frames().next() else {
                return;
            };
            let f = &front[offset..];
            opcode::Send::new(types::Fd(fd), f.as_ptr(), f.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            for (i, f) in out.frames().take(n).enumerate() {
                let b = if i == 0 { &f[offset..] } else { &f[..] };
                op.iov[i] = libc::iovec {
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                };
            }
            op.hdr.msg_iov = op.iov.as_mut_ptr();
            op.hdr.msg_iovlen = n;
            opcode::SendMsg::new(types::Fd(fd), &op.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        let sqe = sqe.user_data(user_data(OP_SEND, slot, gen));
        self.socks[slot as usize].send = Some(op);
        self.sends_in_flight += 1;
        self.sends_peak = self.sends_peak.max(self.sends_in_flight);
        self.push(&sqe);
    }

    /// The core closed `slot`: cancel what is in flight; `maybe_finish` closes the fd.
    fn tear_down(&mut self, slot: u32) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if !sock.live || sock.tearing_down {
            return;
        }
        sock.tearing_down = true;
        if sock.ops() > 0 {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(sock.fd)).all())
                .build()
                .user_data(user_data(OP_CANCEL, slot, sock.gen));
            self.push(&sqe);
        }
        self.maybe_finish(slot);
    }

    /// Close and forget a torn-down connection once nothing of it is in flight.
    fn maybe_finish(&mut self, slot: u32) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if !sock.live {
            return;
        }
        if !sock.tearing_down {
            // The core may have closed it during this completion.
            let key = crate::core::ConnKey {
                slot,
                gen: sock.gen,
            };
            if self.core.state(key) == Some(ConnState::Closed) {
                return self.tear_down(slot);
            }
            return;
        }
        if sock.ops() > 0 {
            return;
        }
        let fd = sock.fd;
        *sock = Sock::default();
        let sqe = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data(OP_CLOSE, slot, 0));
        self.push(&sqe);
        self.core.remove(slot);
    }

    /// Give back send operations kept for a burst that is over.
    fn trim_pool(&mut self) {
        let keep = self.sends_peak.max(SEND_POOL_MIN);
        self.pool.truncate(keep);
        self.sends_peak = self.sends_in_flight;
    }

    /// Stop: cancel every operation and close every socket, then wait (briefly) for the
    /// kernel to finish with our memory before the ring and buffers are dropped.
    fn close_everything(&mut self) {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(OP_CANCEL, 0, 0));
        self.push(&sqe);
        let deadline = clock::mono() + Duration::from_secs(1);
        while self.outstanding > 0 && clock::mono() < deadline {
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(self.ring.completion());
            for cqe in &cqes {
                if !cqueue::more(cqe.flags()) {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                let (op, _, slot) = split_user_data(cqe.user_data());
                if op == OP_SEND {
                    if let Some(s) = self.socks.get_mut(slot as usize) {
                        s.send = None;
                    }
                }
            }
            self.cqes = cqes;
        }
        for s in &mut self.socks {
            if s.live {
                // SAFETY: closing descriptors we own; nothing uses them after this.
                unsafe { libc::close(s.fd) };
                s.live = false;
            }
        }
        if self.outstanding > 0 {
            tracing::warn!(
                shard = self.id,
                outstanding = self.outstanding,
                "io_uring operations still in flight at exit; leaking the shard's memory"
            );
        }
    }
}

fn peer_ip(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid; getpeername fills it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` has room for any address and `len` says so.
    if unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return None;
    }
    // SAFETY: `storage` and `len` come straight from getpeername.
    let addr = unsafe { socket2::SockAddr::new(storage, len) };
    addr.as_socket().map(|a: SocketAddr| a.ip())
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: sets an int option from a live local on a socket we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
