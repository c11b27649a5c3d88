//! Buffers the kernel reads into and writes from: the provided-buffer ring for
//! multishot receives, and the send operations that own their iovecs while the kernel
//! reads them.
//!
//! Owns those buffers' lifetimes. Does not own the sockets or the ring.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{types, IoUring};

use super::*;

/// The shard's provided receive buffers: a ring of buffer descriptors shared with the
/// kernel and one block of memory cut into equal buffers.
///
/// The kernel takes a buffer from the head of the ring for each completed receive; the
/// shard returns it at the tail as soon as it copied the bytes out, so the ring only
/// runs dry when more receives complete in one turn than it has buffers (the receive
/// then ends with `ENOBUFS` and is re-armed after the turn's buffers are back).
pub(super) struct BufRing {
    pub(super) ring: *mut types::BufRingEntry,
    pub(super) ring_layout: std::alloc::Layout,
    pub(super) bufs: *mut u8,
    pub(super) bufs_layout: std::alloc::Layout,
    pub(super) entries: u16,
    pub(super) buf_bytes: usize,
    pub(super) tail: u16,
}

impl BufRing {
    pub(super) fn new(uring: &IoUring, entries: usize, buf_bytes: usize) -> io::Result<BufRing> {
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
    pub(super) fn get(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(bid < self.entries);
        let len = len.min(self.buf_bytes);
        // SAFETY: `bid` indexes one of our buffers, which the kernel has finished
        // writing (its completion was posted) and gets back only through `push`.
        unsafe { std::slice::from_raw_parts(self.bufs.add(bid as usize * self.buf_bytes), len) }
    }

    /// Give buffer `bid` back to the kernel (visible after `publish`).
    #[inline]
    pub(super) fn push(&mut self, bid: u16) {
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
    pub(super) fn publish(&self) {
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
pub(super) struct SendOp {
    pub(super) hdr: libc::msghdr,
    pub(super) iov: [libc::iovec; IOV_MAX],
}

impl SendOp {
    pub(super) fn new() -> Box<SendOp> {
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
