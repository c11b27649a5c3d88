//! What a backend takes from a core after each call, and what it hands back.
//!
//! Owns the lists of connections with frames to write (socketless Engine.IO sessions
//! hand theirs to an HTTP answer or a relaying WebSocket first), to wake and to read
//! again, access to a connection's queue, and the accounting of writes (bytes written,
//! a queue flushed, input resumed below the low-water mark). Does not own sockets or
//! the order a backend does this in ([`crate::backend`]).

use super::conn::{AfterFlush, ConnState};
use super::ShardCore;
use crate::metrics::ShardMetrics;
use crate::outq::OutQueue;

impl ShardCore {
    /// Move the list of connections with frames to write into `into` (cleared first).
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        into.clear();
        // Socketless Engine.IO sessions first: their frames go to an HTTP answer or a
        // relaying WebSocket, which then join the list.
        let mut i = 0;
        while i < self.dirty.len() {
            let slot = self.dirty[i];
            match self.conns.get_mut(slot as usize) {
                Some(c) if c.socketless() => {
                    c.dirty = false;
                    self.dirty.swap_remove(i);
                    self.eio_flush(slot);
                }
                _ => i += 1,
            }
        }
        std::mem::swap(into, &mut self.dirty);
        for &slot in into.iter() {
            if let Some(c) = self.conns.get_mut(slot as usize) {
                c.dirty = false;
            }
        }
    }

    /// Whether any connection has frames to write.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Move the list of connections whose backend task must run into `into`.
    pub fn take_wake(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(into, &mut self.wake);
        // A socketless session has no socket to drop: it is removed here.
        into.retain(|&slot| match self.conns.get(slot as usize) {
            Some(c) if c.state == ConnState::Closed && c.socketless() => {
                self.remove(slot);
                false
            }
            _ => true,
        });
    }

    /// The outbound queue of `slot` (the backend writes from it and advances it).
    pub fn out_mut(&mut self, slot: u32) -> Option<&mut OutQueue> {
        self.conns.get_mut(slot as usize).map(|c| &mut c.out)
    }

    /// `bytes` of `slot`'s queue were written by one syscall. A connection whose
    /// input was paused for a full queue resumes once the queue is below the low-water
    /// mark (an eighth of `max_outbound_bytes`): its waiting commands run now.
    pub fn written(&mut self, slot: u32, bytes: usize) {
        if let Some(c) = self.conns.get_mut(slot as usize) {
            let frames = c.out.advance(bytes);
            ShardMetrics::add(&self.metrics.frames_out, frames as u64);
            ShardMetrics::add(&self.metrics.bytes_out, bytes as u64);
            ShardMetrics::add(&self.metrics.writes, 1);
            if c.input_paused {
                // The client is reading: alive, whatever it has not sent meanwhile.
                c.last_rx = self.tick;
                if c.out.charged() <= self.cfg.max_outbound_bytes / 8 {
                    self.resume_input(slot);
                }
            }
        }
    }

    /// Whether the backend should read `slot`'s socket now (false while its input is
    /// paused, see [`ShardCore::take_resumed`]).
    pub fn wants_input(&self, slot: u32) -> bool {
        self.conns
            .get(slot as usize)
            .is_some_and(|c| !c.input_paused)
    }

    /// Connections whose input was paused (`wants_input` was false) and may be read
    /// again: the backend re-arms or polls their reads.
    pub fn take_resumed(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(into, &mut self.resumed);
    }

    /// `slot`'s queue is empty after writing: a queued close has gone out.
    pub fn flushed(&mut self, slot: u32) -> AfterFlush {
        match self.conns.get_mut(slot as usize) {
            Some(c) if c.state == ConnState::Closing && c.out.is_empty() => {
                c.state = ConnState::Draining;
                AfterFlush::ShutdownWrite
            }
            _ => AfterFlush::Nothing,
        }
    }
}
