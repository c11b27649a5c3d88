//! Messages to other shards.
//!
//! Owns pushing onto other shards' inboxes, waking them (now, or batched by the
//! backend), and the spill queue for inboxes that were full. Does not own the inboxes
//! ([`crate::mesh`]).

use super::ShardCore;
use crate::mesh::ShardMsg;
use crate::metrics::ShardMetrics;

impl ShardCore {
    pub(super) fn send_to(&mut self, shard: u16, msg: ShardMsg) {
        ShardMetrics::add(&self.metrics.mesh_sent, 1);
        if !self.spill.is_empty() {
            self.spill.push_back((shard, msg));
            return;
        }
        self.push_to(shard, msg);
    }

    /// Push to `shard`'s inbox and wake it now, or (with deferred wake-ups) note it
    /// for the backend; a full inbox spills.
    #[inline]
    pub(super) fn push_to(&mut self, shard: u16, msg: ShardMsg) -> bool {
        match self.push_and_wake(shard, msg) {
            Ok(()) => true,
            Err(msg) => {
                ShardMetrics::add(&self.metrics.mesh_spilled, 1);
                self.spill.push_back((shard, msg));
                false
            }
        }
    }

    /// Push to `shard`'s inbox; if it needs waking, wake it now or note it for the
    /// backend. Gives the message back if the inbox is full.
    #[inline]
    pub(super) fn push_and_wake(&mut self, shard: u16, msg: ShardMsg) -> Result<(), ShardMsg> {
        let inbox = self.mesh.inbox(shard as usize);
        if inbox.push_quiet(msg)? {
            if self.defer_wakes {
                self.wakes |= 1 << shard;
            } else {
                inbox.wake();
            }
        }
        Ok(())
    }

    /// Let the backend wake other shards itself (batched with its own I/O):
    /// [`ShardCore::take_wakes`] then lists the shards to wake.
    pub fn defer_wakes(&mut self) {
        self.defer_wakes = true;
    }

    /// Shards (bit per shard) pushed to since the last call that must be woken.
    pub fn take_wakes(&mut self) -> u64 {
        std::mem::take(&mut self.wakes)
    }

    /// Retry messages that found another shard's inbox full. Returns whether some
    /// are still waiting.
    pub fn retry_spill(&mut self) -> bool {
        while let Some((shard, msg)) = self.spill.pop_front() {
            if let Err(msg) = self.push_and_wake(shard, msg) {
                self.spill.push_front((shard, msg));
                return true;
            }
        }
        false
    }
}
