//! One shard's inbox: the bounded lock-free queue other shards and the control plane
//! push [`ShardMsg`]s into, and the eventfd (or io_uring message) that wakes the shard.
//!
//! Owns the wake-up protocol (notify once per drain) and closing when the shard stops.
//! Does not own what the messages mean (the core does) or who routes them (the mesh).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;

use super::ShardMsg;

/// One shard's inbox. Closed when the shard's thread ends ([`Inbox::close`]): from
/// then on what is pushed is dropped at once, so no reply channel inside waits forever.
#[derive(Debug)]
pub struct Inbox {
    /// The shard's io_uring fd, once it runs on io_uring (-1 otherwise): other io_uring
    /// shards wake it with a ring message instead of the eventfd.
    ring_fd: std::sync::atomic::AtomicI32,
    queue: ArrayQueue<ShardMsg>,
    /// Set by the first sender after a drain; cleared by the shard before draining.
    notified: AtomicBool,
    /// The shard has stopped: nothing will drain the queue again.
    closed: AtomicBool,
    eventfd: OwnedFd,
}

impl Inbox {
    pub(super) fn new(capacity: usize) -> std::io::Result<Inbox> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Inbox {
            ring_fd: std::sync::atomic::AtomicI32::new(-1),
            queue: ArrayQueue::new(capacity),
            notified: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            // SAFETY: fd was just created and is owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Push a message without waking the shard; returns whether the caller must wake
    /// it (it was not yet notified since its last drain): with [`Inbox::wake`], or
    /// another way that ends in [`Inbox::clear_notified`] before the shard drains.
    #[inline]
    pub fn push_quiet(&self, msg: ShardMsg) -> Result<bool, ShardMsg> {
        self.queue.push(msg)?;
        // A shard that has stopped never drains again: whoever waits on what was just
        // pushed (an admin answer, an API publication's reply) must hear "no" now, not
        // hang. Pairs with the store in `close` (both SeqCst): either `close` drains
        // this message or this load sees the flag. A plain load on x86.
        if self.closed.load(Ordering::SeqCst) {
            self.discard();
            return Ok(false);
        }
        Ok(!self.notified.swap(true, Ordering::AcqRel))
    }

    /// Shard side, when the shard stops for good: refuse what comes later and drop
    /// what is queued, so every reply channel inside is dropped and its waiter told.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.discard();
    }

    /// Whether the shard has stopped ([`Inbox::close`]).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn discard(&self) {
        while self.queue.pop().is_some() {}
    }

    /// Wake the shard through its eventfd.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd. A failure
        // (counter overflow) cannot happen with value 1 before 2^64 writes.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Shard side, woken other than by the eventfd (an io_uring message): reset the
    /// notification before draining, so a push during the drain wakes it again.
    pub fn clear_notified(&self) {
        self.notified.store(false, Ordering::Release);
    }

    /// Push a message; gives it back if the inbox is full.
    pub fn push(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        if self.push_quiet(msg)? {
            self.wake();
        }
        Ok(())
    }

    /// The shard's io_uring fd, if it runs on io_uring.
    pub fn ring_fd(&self) -> Option<RawFd> {
        let fd = self.ring_fd.load(Ordering::Acquire);
        (fd >= 0).then_some(fd)
    }

    /// Shard side: publish (or with -1, withdraw) the shard's io_uring fd.
    pub fn set_ring_fd(&self, fd: RawFd) {
        self.ring_fd.store(fd, Ordering::Release);
    }

    /// The eventfd the shard's reactor watches.
    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Shard side: consume the wake-up, then take messages. Call `clear_wakeup` before
    /// `pop`ping so a message pushed during the drain wakes the shard again.
    pub fn clear_wakeup(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        self.notified.store(false, Ordering::Release);
    }

    /// Shard side: take the next message.
    pub fn pop(&self) -> Option<ShardMsg> {
        self.queue.pop()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
