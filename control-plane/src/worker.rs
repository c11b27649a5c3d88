//! The control plane's worker threads (scheduler, notifications, calls): each owns a
//! connection to the store ([`crate::sql::Db`]) and runs until told to stop.
//!
//! Owns starting such a thread and stopping it (a flag it polls, then a join). Does
//! not own what a worker does, nor its connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running worker thread; stopped (and joined) by [`WorkerHandle::finish`] or on drop.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Start thread `name` running `run` with the stop flag it must poll.
    pub fn spawn(
        name: &str,
        run: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<WorkerHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&flag))?;
        Ok(WorkerHandle {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the thread and wait for it.
    pub fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
