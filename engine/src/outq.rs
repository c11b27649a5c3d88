//! A connection's bounded outbound queue.
//!
//! Owns the frames waiting to be written to one socket and their byte count. Does not
//! own the socket: a backend asks for the frames as I/O slices (`fill`), writes them
//! in one vectored call, and reports how many bytes went (`advance`).
//!
//! Hot path: fan-out pushes one shared `Bytes` (a refcount bump) per subscriber.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// Bookkeeping charged per queued frame on top of its length, so a flood of tiny frames
/// is bounded too.
pub const FRAME_OVERHEAD_BYTES: usize = 32;

/// The queue would exceed its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Frames waiting for one socket.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Bytes charged against the bound (lengths plus per-frame overhead).
    charged: usize,
    /// Bytes of the front frame already written.
    head_written: usize,
    /// Front frames handed to the kernel by a completion-based backend and not yet
    /// completed: they count as started, so `discard_unstarted` keeps them.
    pinned: usize,
    /// Pinned frames that `clear` took out of the queue: kept alive until `unpin` (or
    /// until the queue is dropped, which the backend does only after the completion).
    graveyard: Vec<Bytes>,
}

impl OutQueue {
    /// Queue `frame` unless that would pass `limit` charged bytes.
    #[inline]
    pub fn push(&mut self, frame: Bytes, limit: usize) -> Result<(), Overflow> {
        if frame.is_empty() {
            // Nothing to send (a Socket.IO session's answer to an event without ack).
            return Ok(());
        }
        let cost = frame.len() + FRAME_OVERHEAD_BYTES;
        if self.charged + cost > limit {
            return Err(Overflow);
        }
        self.charged += cost;
        self.frames.push_back(frame);
        Ok(())
    }

    /// Queue a frame regardless of the bound (handshake answers, close frames).
    pub fn push_unbounded(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.charged += frame.len() + FRAME_OVERHEAD_BYTES;
        self.frames.push_back(frame);
    }

    /// Replace the queued, not yet started frame that is `old` (the same bytes, by
    /// address) with `new`. False when `old` is no longer waiting (written, being
    /// written, or never queued here). Scans the queue: used only for coalescing
    /// control-plane pushes on a slow connection, never on the fan-out path.
    pub fn replace_unstarted(&mut self, old: &Bytes, new: Bytes) -> bool {
        let started = self.pinned.max(usize::from(self.head_written > 0));
        let found = self
            .frames
            .iter()
            .skip(started)
            .position(|f| f.as_ptr() == old.as_ptr() && f.len() == old.len());
        let Some(i) = found else {
            return false;
        };
        let slot = &mut self.frames[started + i];
        self.charged = self.charged - slot.len() + new.len();
        *slot = new;
        true
    }

    /// Whether nothing waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes charged against the bound.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// Drop every frame not yet started. A frame partly written stays, so the stream
    /// stays well-formed for what is queued after it (a close frame).
    /// Frames handed to the kernel (pinned) count as started.
    pub fn discard_unstarted(&mut self) {
        let keep = self.pinned.max(usize::from(self.head_written > 0));
        if keep == 0 {
            return self.clear();
        }
        self.frames.truncate(keep);
        self.charged = self
            .frames
            .iter()
            .map(|f| f.len() + FRAME_OVERHEAD_BYTES)
            .sum();
    }

    /// Drop everything queued.
    /// Frames the kernel may still be reading (pinned) are not dropped: they move to a
    /// graveyard until [`OutQueue::unpin`].
    pub fn clear(&mut self) {
        if self.pinned > 0 {
            let pinned = self.pinned.min(self.frames.len());
            self.graveyard.extend(self.frames.drain(..pinned));
        }
        self.frames = VecDeque::new();
        self.charged = 0;
        self.head_written = 0;
        self.pinned = 0;
    }

    /// Completion-based backends: hand up to `max` front frames to the kernel; returns
    /// how many, and how much of the first one is already written. Until
    /// [`OutQueue::unpin`] those frames stay allocated whatever the core does (a
    /// slow-consumer discard keeps them as started, `clear` moves them aside), so the
    /// backend can point the kernel at them without taking references of its own, as
    /// long as it drops the queue only after the operation's completion.
    #[inline]
    pub fn pin(&mut self, max: usize) -> (usize, usize) {
        let n = self.frames.len().min(max);
        self.pinned = n;
        (n, self.head_written)
    }

    /// The kernel finished with the pinned frames (call after `advance`).
    #[inline]
    pub fn unpin(&mut self) {
        self.pinned = 0;
        if !self.graveyard.is_empty() {
            self.graveyard = Vec::new();
        }
    }

    /// Point `out` at the unwritten bytes, front first; returns how many slices it set.
    #[inline]
    pub fn fill<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, f) in self.frames.iter().take(out.len()).enumerate() {
            out[i] = IoSlice::new(if i == 0 {
                &f[self.head_written..]
            } else {
                &f[..]
            });
            n += 1;
        }
        n
    }

    /// Take every frame out, front first (a queue no socket writes: an Engine.IO
    /// polling session hands its frames to the HTTP answer or to its WebSocket).
    pub fn take_all(&mut self) -> VecDeque<Bytes> {
        debug_assert!(self.pinned == 0 && self.head_written == 0);
        self.charged = 0;
        std::mem::take(&mut self.frames)
    }

    /// Frames in order (for completion-based backends that take ownership).
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter()
    }

    /// `n` bytes were written; drop the frames they completed. Returns frames completed.
    #[inline]
    pub fn advance(&mut self, mut n: usize) -> usize {
        let mut done = 0;
        while let Some(front) = self.frames.front() {
            let left = front.len() - self.head_written;
            if n >= left {
                n -= left;
                self.charged -= front.len() + FRAME_OVERHEAD_BYTES;
                self.frames.pop_front();
                self.head_written = 0;
                self.pinned = self.pinned.saturating_sub(1);
                done += 1;
            } else {
                self.head_written += n;
                break;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 64 {
            // A burst grew the ring: give the memory back so idle connections stay small.
            self.frames = VecDeque::new();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_unstarted_swaps_only_waiting_frames() {
        let mut q = OutQueue::default();
        let (a, b, c) = (
            Bytes::from_static(b"aaaa"),
            Bytes::from_static(b"bb"),
            Bytes::from_static(b"cccccc"),
        );
        q.push(a.clone(), 1 << 20).unwrap();
        q.push(b.clone(), 1 << 20).unwrap();
        let before = q.charged();
        assert!(q.replace_unstarted(&b, c.clone()));
        assert_eq!(q.charged(), before + 4);
        assert!(!q.replace_unstarted(&b, c.clone()), "b is gone");
        // The head frame, once partly written, is started and stays.
        q.advance(1);
        assert!(!q.replace_unstarted(&a, b.clone()));
        let mut slices = [IoSlice::new(&[]); 4];
        let n = q.fill(&mut slices);
        let bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(bytes, b"aaacccccc");
    }

    fn front(q: &OutQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 4];
        let n = q.fill(&mut slices);
        assert!(n > 0);
        slices[0].to_vec()
    }

    #[test]
    fn bounded_and_partial_writes() {
        let mut q = OutQueue::default();
        let f = Bytes::from_static(b"0123456789");
        q.push(f.clone(), 100).unwrap();
        q.push(f.clone(), 100).unwrap();
        assert_eq!(q.push(f.clone(), 100), Err(Overflow));
        assert_eq!(q.charged(), 84);
        assert_eq!(q.advance(4), 0);
        assert_eq!(front(&q), b"456789");
        assert_eq!(q.advance(6 + 3), 1);
        assert_eq!(q.advance(7), 1);
        assert!(q.is_empty());
        assert_eq!(q.charged(), 0);
        q.push_unbounded(Bytes::from(vec![0; 500]));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn discard_keeps_a_started_frame() {
        let mut q = OutQueue::default();
        for _ in 0..3 {
            q.push(Bytes::from_static(b"0123456789"), 1000).unwrap();
        }
        q.discard_unstarted();
        assert!(q.is_empty());
        for _ in 0..3 {
            q.push(Bytes::from_static(b"0123456789"), 1000).unwrap();
        }
        q.advance(3);
        q.discard_unstarted();
        assert_eq!(q.len(), 1);
        assert_eq!(front(&q), b"3456789");
        assert_eq!(q.advance(7), 1);
        assert_eq!(q.charged(), 0);
    }

    #[test]
    fn discard_keeps_frames_pinned_by_the_kernel() {
        let mut q = OutQueue::default();
        for i in 0..4u8 {
            q.push(Bytes::from(vec![i; 10]), 1000).unwrap();
        }
        assert_eq!(q.pin(2), (2, 0));
        q.discard_unstarted();
        assert_eq!(q.len(), 2, "frames the kernel is sending stay queued");
        assert_eq!(q.charged(), 2 * (10 + FRAME_OVERHEAD_BYTES));
        // The kernel wrote one frame and a half: the half stays, the count follows.
        assert_eq!(q.advance(15), 1);
        q.unpin();
        assert_eq!(front(&q), vec![1; 5]);
        q.push(Bytes::from_static(b"close"), 1000).unwrap();
        q.discard_unstarted();
        assert_eq!(q.len(), 1, "only the started frame survives once unpinned");
    }

    #[test]
    fn clear_keeps_pinned_frames_alive_until_unpinned() {
        let mut q = OutQueue::default();
        let frame = Bytes::from(vec![7u8; 100]);
        q.push(frame.clone(), 1000).unwrap();
        q.push(Bytes::from(vec![8u8; 100]), 1000).unwrap();
        assert_eq!(q.pin(8), (2, 0));
        q.clear();
        assert!(q.is_empty());
        // Our `frame` plus the graveyard's: the kernel's memory is still owned.
        assert!(
            !frame.is_unique(),
            "pinned frame dropped while the kernel may read it"
        );
        q.unpin();
        assert!(frame.is_unique(), "released once the kernel is done");
    }
}
