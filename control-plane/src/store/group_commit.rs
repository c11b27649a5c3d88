//! The writer thread's loop, the same on every database: take the shards' journal
//! batches, write everything waiting in one transaction (group commit: one flush for
//! all of it), tell each shard with a `sync` publication waiting which of its batches
//! are durable, and between commits give the database its housekeeping turn.
//!
//! Owns the loop, the circuit a failing write opens (the shards refuse new durable
//! publications while it is open; the same transaction is retried until it succeeds,
//! nothing handed over is dropped), the writer's counters and the commit notices. Does
//! not own how a database stores a batch or keeps itself tidy: that is a [`Journal`]
//! (`super::writer` for SQLite, `crate::store::postgres::writer` for PostgreSQL).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use switchboard_engine::journal::{Batch, JournalState};
use switchboard_engine::{ShardMsg, ShardSender};

use super::{StoreConfig, StoreStats};

/// A database the writer thread writes the journal to.
pub trait Journal: Send + 'static {
    /// Write every batch in one transaction; all or nothing (a failed one is retried
    /// whole).
    fn write(&mut self, batches: &[Batch]) -> Result<(), String>;

    /// `batches` (`records` publications) were just committed.
    fn committed(&mut self, _batches: &[Batch], _records: usize) {}

    /// Between commits, while writes succeed: one bounded step of background work
    /// (archive passes, pruning), so commits are never held up long.
    fn between_commits(&mut self, _stats: &StoreStats) {}

    /// Every `prune_interval_ms`: apply retention (or start a round of it); how many
    /// rows went now.
    fn prune(&mut self) -> Result<usize, String>;

    /// At a stop with everything written: leave the store exact and mark the stop
    /// clean (so the next start continues `async` streams in their epoch).
    fn close_clean(&mut self);
}

/// The loop's settings and ends.
pub struct GroupCommit {
    /// The database (called once per commit: a virtual call is nothing beside it).
    pub journal: Box<dyn Journal>,
    /// What messages name the store by.
    pub name: String,
    /// Batches from the shards.
    pub rx: Receiver<Batch>,
    /// Backlog and health, shared with the shards.
    pub state: Arc<JournalState>,
    /// Batch size, retry and pruning intervals.
    pub cfg: StoreConfig,
}

impl GroupCommit {
    /// Run until `stop` is set and everything handed over is written (or the store
    /// still fails at that point: then the stop is not marked clean).
    pub fn run(mut self, shards: &ShardSender, stop: &AtomicBool, stats: &StoreStats) {
        let mut batches: Vec<Batch> = Vec::new();
        let prune_every = Duration::from_millis(self.cfg.prune_interval_ms);
        let mut next_prune = Instant::now() + prune_every;
        let mut complete = true;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if batches.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(b) => batches.push(b),
                    Err(RecvTimeoutError::Timeout) => {
                        if stopping {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let mut n: usize = batches.iter().map(|b| b.records.len()).sum();
            while n < self.cfg.max_batch {
                match self.rx.try_recv() {
                    Ok(b) => {
                        n += b.records.len();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            if !batches.is_empty() {
                let started = Instant::now();
                match self.journal.write(&batches) {
                    Ok(()) => {
                        stats
                            .last_commit_us
                            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        stats.records.fetch_add(n as u64, Ordering::Relaxed);
                        if !self.state.healthy() {
                            tracing::info!(store = %self.name, "store writes again");
                            self.state.set_healthy(true);
                        }
                        self.state.stored(n);
                        self.journal.committed(&batches, n);
                        notify(shards, &batches, stop);
                        batches.clear();
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        if self.state.healthy() {
                            tracing::error!(
                                store = %self.name,
                                "store write failed; refusing durable publications until it works: {e}"
                            );
                            self.state.set_healthy(false);
                        }
                        if stopping {
                            // Shutting down with a store that cannot write: what is
                            // left is lost, so the stop is not clean (async streams
                            // start new epochs next time).
                            tracing::error!(
                                records = n,
                                "store still failing at shutdown; not marking the stop clean"
                            );
                            complete = false;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(self.cfg.retry_ms));
                    }
                }
            }
            if self.state.healthy() {
                self.journal.between_commits(stats);
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + prune_every;
                match self.journal.prune() {
                    Ok(n) => {
                        stats.pruned.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("store retention pass failed: {e}"),
                }
            }
        }
        if complete && self.rx.is_empty() {
            self.journal.close_clean();
        }
    }
}

/// Tell each shard with a `sync` publication waiting that its batches up to the last
/// one written are durable.
fn notify(shards: &ShardSender, batches: &[Batch], stop: &AtomicBool) {
    let mut last: HashMap<u16, (u64, bool)> = HashMap::new();
    for b in batches {
        let e = last.entry(b.shard).or_insert((b.seq, false));
        e.0 = e.0.max(b.seq);
        e.1 |= b.notify;
    }
    for (shard, (batch, wanted)) in last {
        if !wanted {
            continue;
        }
        let mut msg = ShardMsg::Committed { batch };
        // The inbox drains within a loop turn; a shard that has stopped does not.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(back) = shards.send(shard as usize, msg) {
            if stop.load(Ordering::Acquire) || Instant::now() > deadline {
                tracing::warn!(shard, "cannot tell the shard its publications are stored");
                break;
            }
            msg = back;
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
