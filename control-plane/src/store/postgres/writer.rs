//! The PostgreSQL journal: what the writer thread does on PostgreSQL — each turn's
//! batches in one transaction ([`super::journal::write`]), retention a few channels
//! between commits, the clean-stop mark.
//!
//! Owns the journal's state on PostgreSQL (the newest stamp written, the pruning round
//! in progress). Does not own the thread's loop, retries and commit notices
//! (`crate::store::group_commit`). Unlike SQLite, PostgreSQL keeps one indexed table of
//! publications and writes every touched stream's row in each commit, so there is no
//! archive to move and no stream row to catch up.

use switchboard_engine::journal::{Batch, NamespacePolicy};

use super::retention;
use crate::sql::{args, Exec};
use crate::sql::{describe, PgStore};
use crate::store::group_commit::Journal;
use crate::store::{bookkeeping, StoreStats};

/// The journal on PostgreSQL.
#[derive(Debug)]
pub struct PgJournal {
    /// The writer's connection.
    pub(crate) store: PgStore,
    pub(crate) namespaces: Vec<NamespacePolicy>,
    /// The latest `ts_ms` written: stamps never go back, so a wall clock stepped back
    /// does not make what is written next look old and expire early.
    stamp_ms: i64,
    /// A pruning round in progress: the last channel it pruned ("" at the start) and
    /// the time it prunes against.
    pruning: Option<(String, i64)>,
    /// This node's id in a cluster sharing the database ("" alone).
    pub(crate) node: String,
}

impl PgJournal {
    /// The journal of `node` ("" alone) on `store` for these namespaces.
    pub fn new(store: PgStore, namespaces: Vec<NamespacePolicy>, node: &str) -> PgJournal {
        PgJournal {
            store,
            namespaces,
            stamp_ms: i64::MIN,
            pruning: None,
            node: node.to_string(),
        }
    }

    /// Write `batches` now, on the caller's thread (one transaction). For tools,
    /// benchmarks and tests; the running server writes through the writer thread.
    pub fn write_now(&mut self, batches: &[Batch]) -> Result<(), String> {
        Journal::write(self, batches)
    }

    /// Run a whole pruning round now; how many publications went.
    pub fn prune_now(&mut self) -> Result<usize, String> {
        let mut gone = Journal::prune(self)?;
        while let Some((after, now)) = self.pruning.take() {
            let (n, last) =
                retention::prune_channels(&mut self.store, &self.namespaces, &after, now)
                    .map_err(|e| describe(&e))?;
            gone += n;
            self.pruning = last.map(|c| (c, now));
        }
        Ok(gone)
    }
}

impl Journal for PgJournal {
    fn write(&mut self, batches: &[Batch]) -> Result<(), String> {
        if self
            .store
            .reconnect_if_closed()
            .map_err(|e| e.to_string())?
        {
            // The lock went with the old session: take it again, or stay refused.
            super::hold_node_lock(&mut self.store, &self.node).map_err(|e| e.to_string())?;
        }
        let now = (crate::clock::now_ms() as i64).max(self.stamp_ms);
        super::journal::write(&mut self.store.client, &self.node, batches, now)
            .map_err(|e| describe(&e))?;
        self.stamp_ms = now;
        Ok(())
    }

    fn between_commits(&mut self, stats: &StoreStats) {
        let Some((after, now)) = self.pruning.take() else {
            return;
        };
        match retention::prune_channels(&mut self.store, &self.namespaces, &after, now) {
            Ok((gone, last)) => {
                stats
                    .pruned
                    .fetch_add(gone as u64, std::sync::atomic::Ordering::Relaxed);
                self.pruning = last.map(|c| (c, now));
            }
            Err(e) => {
                tracing::warn!("store retention step failed, retrying: {}", describe(&e));
                self.pruning = Some((after, now));
            }
        }
    }

    fn prune(&mut self) -> Result<usize, String> {
        let now = crate::clock::now_ms() as i64;
        let cutoff = crate::store::retention::marks_cutoff(&self.namespaces, now);
        let marks = self
            .store
            .execute("DELETE FROM marks WHERE at_ms < ?1", args![cutoff])
            .map_err(|e| e.to_string())? as usize;
        if crate::store::retention::limited(&self.namespaces) && self.pruning.is_none() {
            self.pruning = Some((String::new(), now));
        }
        Ok(marks)
    }

    fn close_clean(&mut self) {
        if let Err(e) = bookkeeping::mark_clean(&mut self.store, &self.node, true) {
            tracing::error!("cannot mark the store's stop clean: {e}");
        }
    }
}
