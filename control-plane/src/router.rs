//! The one place that routes the shards' control work to the workers.
//!
//! Owns which worker takes which [`ControlRequest`]: token checks stay with the auth
//! threads that read the shards' queue; call commands and departures go to the call
//! worker, notification commands to the notification worker, Socket.IO hook calls
//! to the hook threads, history pages to the store's reader, schedules to the
//! scheduler. Does not own any of that work.

use switchboard_engine::ControlRequest;

use crate::calls::Calls;
use crate::notify::Notifier;
use crate::schedule::Scheduler;

/// The control-plane workers a shard's requests other than token checks go to.
#[derive(Debug, Clone)]
pub struct Workers {
    /// `schedule`, `unschedule`.
    pub scheduler: Scheduler,
    /// Notification commands.
    pub notifier: Notifier,
    /// Call commands and departures.
    pub calls: Calls,
    /// Socket.IO backend hooks.
    pub hooks: crate::hooks::Hooks,
    /// History pages beyond what owner shards keep in memory.
    pub history: crate::store::HistoryReader,
}

impl Workers {
    /// Hand `req` to the worker that does it.
    pub fn route(&self, req: ControlRequest) {
        match req {
            ControlRequest::Command { ref cmd, .. } if cmd.is_call() => self.calls.submit(req),
            ControlRequest::Command { .. } => self.notifier.submit(req),
            ControlRequest::Gone { .. } => self.calls.submit(req),
            ControlRequest::Hook(call) => self.hooks.submit(call),
            ControlRequest::History(read) => self.history.submit(read),
            ControlRequest::CheckRevision(req) => self.history.check_revision(req),
            other => self.scheduler.submit(other),
        }
    }
}
