//! Messages to other shards.
//!
//! Owns pushing onto other shards' inboxes, waking them (now, or batched by the
//! backend), and the spill queue for inboxes that were full. Does not own the inboxes
//! ([`crate::mesh`]).

use super::ShardCore;
use crate::mesh::ShardMsg;
use crate::metrics::ShardMetrics;
use std::collections::VecDeque;

/// Messages to other shards that could not go yet, and wake-ups owed.
#[derive(Debug, Default)]
pub(super) struct Links {
    /// Messages for other shards whose inbox was full, in order.
    pub(super) spill: VecDeque<(u16, ShardMsg)>,
    /// The backend wakes other shards (see [`ShardCore::defer_wakes`]).
    pub(super) deferred: bool,
    /// Shards to wake, a bit each.
    pub(super) wakes: u64,
}

impl ShardCore {
    pub(super) fn send_to(&mut self, shard: u16, msg: ShardMsg) {
        ShardMetrics::add(&self.metrics.mesh_sent, 1);
        if !self.links.spill.is_empty() {
            self.links.spill.push_back((shard, msg));
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
                self.links.spill.push_back((shard, msg));
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
            if self.links.deferred {
                self.links.wakes |= 1 << shard;
            } else {
                inbox.wake();
            }
        }
        Ok(())
    }

    /// Let the backend wake other shards itself (batched with its own I/O):
    /// [`ShardCore::take_wakes`] then lists the shards to wake.
    pub fn defer_wakes(&mut self) {
        self.links.deferred = true;
    }

    /// Shards (bit per shard) pushed to since the last call that must be woken.
    pub fn take_wakes(&mut self) -> u64 {
        std::mem::take(&mut self.links.wakes)
    }

    /// Retry messages that found another shard's inbox full. Returns whether some
    /// are still waiting.
    pub fn retry_spill(&mut self) -> bool {
        while let Some((shard, msg)) = self.links.spill.pop_front() {
            if let Err(msg) = self.push_and_wake(shard, msg) {
                self.links.spill.push_front((shard, msg));
                return true;
            }
        }
        false
    }
}
