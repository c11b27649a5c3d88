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
//!
//! # Layout
//! - this file: the ring, submissions, the loop (`run`), completions dispatched by
//!   kind;
//! - `completions`: accepts, receives, sends and inbox messages handed to the core;
//! - `flush`: writing queued frames, tearing down closed sockets;
//! - `buffers`: the provided-buffer ring and send operations;
//! - `probe`: whether io_uring works here.

mod buffers;
mod completions;
mod flush;
mod probe;
pub(crate) use probe::probe;

use buffers::{BufRing, SendOp};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::{self, Now};

use bytes::BytesMut;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::core::ShardCore;
use crate::epoll::{NotAcceptingOnExit, ShardSetup};
use crate::mesh::Mesh;

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
/// With `engine.uring_coalesce_us` set, the completions that wake a shard before the
/// coalescing time is up.
const COALESCE_BATCH: usize = 64;

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

#[derive(Default)]
struct Sock {
    fd: RawFd,
    gen: u32,
    live: bool,
    /// The multishot receive is armed (its final completion has not arrived).
    recv_armed: bool,
    /// Its cancellation was asked for: the core paused the connection's input.
    recv_cancelling: bool,
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
    /// Accept failures (EMFILE), logged at most once per 10 s.
    accept_failures: crate::files::Throttled,
    inbox_armed: bool,
    inbox_more: bool,
    /// Connections whose receive ended and must be armed again this turn.
    rearm: Vec<u32>,
    /// Connections whose send completed with frames still queued.
    resend: Vec<u32>,
    scratch: Vec<u32>,
    cqes: Vec<cqueue::Entry>,
    /// `engine.uring_coalesce_us` when the kernel supports it, else 0.
    coalesce_us: u32,
}

/// Whether an `io_uring_enter` error stops the shard: not a timeout (ETIME), a signal
/// (EINTR) or a full completion queue (EBUSY), which the next turn handles.
fn enter_failed(e: &io::Error) -> bool {
    !matches!(
        e.raw_os_error(),
        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
    )
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
            let _ = started.send(Err(crate::Error::Backend {
                backend: "io_uring",
                message: e,
            }));
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
        let coalesce_us = if cfg.uring_coalesce_us > 0 && !ring.params().is_feature_min_timeout() {
            if id == 0 {
                tracing::warn!(
                    "engine.uring_coalesce_us is set but this kernel has no io_uring min_wait \
                     (Linux 6.12+): shards wake for every completion"
                );
            }
            0
        } else {
            cfg.uring_coalesce_us
        };
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
            accept_failures: crate::files::Throttled::new(Duration::from_secs(10)),
            inbox_armed: false,
            inbox_more: false,
            rearm: Vec::new(),
            resend: Vec::new(),
            scratch: Vec::new(),
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            coalesce_us,
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
        if !s.live || s.recv_armed || s.tearing_down || !self.core.wants_input(slot) {
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
            if self.coalesce_us > 0 && !busy && !self.ring.submission().is_empty() {
                // Sends usually complete inside the submission: reap those first, or
                // the coalescing wait would count them and sleep a full `coalesce_us`
                // only to hand them back.
                if let Err(e) = self.ring.submit() {
                    if enter_failed(&e) {
                        tracing::error!(shard = self.id, "io_uring_enter failed: {e}; shard stops");
                        break;
                    }
                }
                if !self.ring.completion().is_empty() {
                    continue;
                }
            }
            // Coalescing: sleep until COALESCE_BATCH completions or `coalesce_us` with
            // at least one, whichever is first (the tick's timeout still bounds it).
            let wait = match (busy, self.coalesce_us) {
                (true, _) => 0,
                (false, 0) => 1,
                (false, _) => COALESCE_BATCH,
            };
            let timeout = next_tick.saturating_duration_since(clock::mono());
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new()
                .timespec(&ts)
                .min_wait_usec(self.coalesce_us);
            if let Err(e) = self.ring.submitter().submit_with_args(wait, &args) {
                if enter_failed(&e) {
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
                    // Retried next tick (see `run`); said once per 10 s, not per attempt.
                    if let Some(suppressed) = self.accept_failures.allow(self.now.mono) {
                        tracing::warn!(
                            shard = self.id,
                            suppressed,
                            "accept failed: {}; retrying each tick",
                            io::Error::from_raw_os_error(-res)
                        );
                    }
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
}
