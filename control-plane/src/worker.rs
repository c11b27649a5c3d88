//! The control plane's worker threads (scheduler, notifications, calls): each owns a
//! SQLite connection to the store file and runs until told to stop.
//!
//! Owns starting such a thread, stopping it (a flag it polls, then a join), opening
//! and its connection to the store. Does not own what a
//! worker does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

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

/// A worker's own connection to the store file at `path` (already opened and
/// prepared by [`crate::store::open`]; WAL lets it write beside the journal writer).
pub fn open_store(path: &std::path::Path, who: &str) -> Result<Connection, crate::Error> {
    let fail = |e: rusqlite::Error| crate::Error::Store {
        path: path.to_owned(),
        message: format!("{who} cannot open it: {e}"),
    };
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
    conn.execute_batch("PRAGMA synchronous = FULL;")
        .map_err(fail)?;
    Ok(conn)
}
