//! The SQLite journal: the shards' batches appended to the log in one transaction each
//! turn, moving the log's tail to the archive between commits (`archive`), retention.
//!
//! Owns every write to the store file's publications after start-up. Does not own the
//! writer thread's loop, retries and commit notices (`group_commit`), nor reading at
//! start-up (`startup`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use switchboard_engine::journal::{Batch, NamespacePolicy};

use super::*;

#[derive(Debug)]
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) namespaces: Vec<NamespacePolicy>,
    /// What the writer remembers per channel it wrote, so most commits are only the
    /// appends.
    pub(super) channels: HashMap<Arc<str>, Written>,
    /// The latest `ts_ms` written: stamps never go back, so a wall clock stepped back
    /// does not make what is written next look old and expire early (retention and
    /// the history reloaded at start-up go by `ts_ms`).
    pub(super) stamp_ms: i64,
    pub(super) archive: ArchiveState,
}

/// Where moving the log's tail to the archive stands.
#[derive(Debug)]
pub(super) struct ArchiveState {
    /// The last log id archived.
    upto: i64,
    /// Roughly how many log rows wait (appended since the last pass took its rows).
    waiting: usize,
    /// The channels those rows belong to (as far as this run wrote them).
    channels: HashSet<Arc<str>>,
    /// When the oldest of them was written (this run's start for a log left over).
    since: Option<Instant>,
    after: Duration,
    pass: Option<archive::Pass>,
    /// A pruning round in progress: the last channel it pruned ("" at the start) and
    /// the time it prunes against.
    pruning: Option<(String, i64)>,
}

impl ArchiveState {
    pub(super) fn open(conn: &Connection, cfg: &StoreConfig) -> rusqlite::Result<ArchiveState> {
        let upto = archive::archived_upto(conn)?;
        let top: Option<i64> = conn.query_row("SELECT MAX(id) FROM log", [], |r| r.get(0))?;
        let waiting = top.unwrap_or(0).saturating_sub(upto).max(0) as usize;
        Ok(ArchiveState {
            upto,
            waiting,
            channels: HashSet::new(),
            since: (waiting > 0).then(Instant::now),
            after: Duration::from_millis(cfg.archive_after_ms),
            pass: None,
            pruning: None,
        })
    }

    /// `records` rows of these channels were just committed.
    fn wrote<'a>(&mut self, records: usize, channels: impl Iterator<Item = &'a Arc<str>>) {
        self.waiting += records;
        self.since.get_or_insert_with(Instant::now);
        for c in channels {
            if !self.channels.contains(c) {
                self.channels.insert(c.clone());
            }
        }
    }

    /// Whether a pass should start now.
    fn due(&self, now: Instant) -> bool {
        self.waiting > 0
            && (self.waiting >= archive::ARCHIVE_ROWS
                || self.waiting >= archive::ROWS_PER_CHANNEL * self.channels.len().max(1)
                || self
                    .since
                    .is_some_and(|t| now.duration_since(t) >= self.after))
    }
}

/// Per channel: the epoch and top offset written to the log, and what its `streams`
/// row says (and since when).
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    pub(super) epoch: u64,
    pub(super) top: u64,
    pub(super) row_top: u64,
    pub(super) row_ms: i64,
}

/// A channel's `streams` row is rewritten at most this often unless its epoch changes
/// (start-up takes the top offset from the log where it is newer).
pub(super) const ROW_REFRESH_MS: i64 = 1_000;

impl super::group_commit::Journal for Writer {
    fn write(&mut self, batches: &[Batch]) -> Result<(), String> {
        Writer::write(self, batches).map_err(|e| e.to_string())
    }

    fn committed(&mut self, batches: &[Batch], records: usize) {
        self.archive.wrote(
            records,
            batches
                .iter()
                .flat_map(|b| b.records.iter().map(|r| &r.channel)),
        );
    }

    fn between_commits(&mut self, stats: &StoreStats) {
        self.archive_step(stats);
        self.prune_step(stats);
    }

    fn prune(&mut self) -> Result<usize, String> {
        self.prune_by_age().map_err(|e| e.to_string())
    }

    fn close_clean(&mut self) {
        // Every `streams` row exact, so the next start continues each stream from
        // its row without doubt.
        if let Err(e) = self.sync_rows() {
            tracing::warn!("cannot bring the streams' rows up to date at shutdown: {e}");
        }
        if let Err(e) = self
            .conn
            .execute("UPDATE meta SET value = '1' WHERE key = 'clean'", [])
        {
            tracing::error!("cannot mark the store's stop clean: {e}");
        }
    }
}

impl Writer {
    /// One transaction for every waiting batch: the appends, and the `streams` rows
    /// of channels whose epoch changed or whose row is a second old.
    pub(super) fn write(&mut self, batches: &[Batch]) -> rusqlite::Result<()> {
        let now = (crate::clock::now_ms() as i64).max(self.stamp_ms);
        let tx = self.conn.transaction()?;
        let mut tops: HashMap<&Arc<str>, (u64, u64)> = HashMap::new();
        let mut updates: Vec<(Arc<str>, Written)> = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO log (channel, epoch, offset, ts_ms, format, data, meta, key, sender, event, author, revises)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut revision = tx.prepare_cached(super::revisions::UPSERT)?;
            for r in batches.iter().flat_map(|b| b.records.iter()) {
                insert.execute(params![
                    &*r.channel,
                    r.epoch as i64,
                    r.offset as i64,
                    now,
                    format_code(r.format),
                    &r.data[..],
                    r.meta.as_deref(),
                    r.key.as_deref(),
                    r.from.as_deref(),
                    r.event.as_deref(),
                    r.author.as_deref(),
                    r.revises.map(archive::revises_code),
                ])?;
                if let Some(rev) = r.revises {
                    revision.execute(params![
                        &*r.channel,
                        r.epoch as i64,
                        rev.target.min(i64::MAX as u64) as i64,
                        r.offset as i64,
                        now,
                        rev.delete,
                        format_code(r.format),
                        &r.data[..],
                        r.meta.as_deref(),
                    ])?;
                }
                tops.insert(&r.channel, (r.epoch, r.offset));
            }
            let mut mark = tx.prepare_cached(
                "INSERT INTO marks (channel, kind, who, epoch, delivered, read, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (channel, kind, who) DO UPDATE SET epoch = excluded.epoch,
                     delivered = excluded.delivered, read = excluded.read, at_ms = excluded.at_ms",
            )?;
            for m in batches.iter().flat_map(|b| b.marks.iter()) {
                mark.execute(params![
                    &*m.channel,
                    m.kind.code(),
                    &*m.who,
                    m.epoch as i64,
                    m.delivered as i64,
                    m.read as i64,
                    m.at_ms as i64,
                ])?;
            }
            let mut session = tx.prepare_cached(
                "INSERT OR REPLACE INTO sio_sessions (pid, home, closed_ms, body)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for s in batches.iter().flat_map(|b| b.sessions.iter()) {
                session.execute(params![
                    format!("{:032x}", s.pid),
                    i64::from(s.home),
                    s.closed_ms.min(i64::MAX as u64) as i64,
                    &s.body[..],
                ])?;
            }
            let mut row = tx.prepare_cached(UPSERT_STREAM)?;
            for (&channel, &(epoch, offset)) in &tops {
                let mut w = match self.channels.get(channel) {
                    Some(w) if w.epoch == epoch => *w,
                    // First write of this channel here, or a new epoch: its row says so
                    // now, so start-up never mixes epochs.
                    _ => Written {
                        epoch,
                        top: 0,
                        row_top: 0,
                        row_ms: i64::MIN,
                    },
                };
                w.top = offset;
                if now.saturating_sub(w.row_ms) >= ROW_REFRESH_MS {
                    row.execute(params![&**channel, epoch as i64, offset as i64, now])?;
                    w.row_ms = now;
                    w.row_top = offset;
                }
                updates.push((channel.clone(), w));
            }
        }
        tx.commit()?;
        self.stamp_ms = now;
        // Only once committed: a failed transaction is retried whole.
        for (channel, w) in updates {
            self.channels.insert(channel, w);
        }
        Ok(())
    }

    /// Between group commits: start a pass when one is due, or write the next chunk of
    /// the pass in progress (one transaction, bounded, so commits are not held up long).
    fn archive_step(&mut self, stats: &StoreStats) {
        let a = &mut self.archive;
        if a.pass.is_none() {
            if !a.due(Instant::now()) {
                return;
            }
            match archive::begin(&self.conn, a.upto) {
                Ok(pass) => {
                    let taken = pass.as_ref().map_or(0, |p| p.len());
                    if taken < archive::ARCHIVE_ROWS {
                        a.waiting = 0;
                        a.since = None;
                        a.channels.clear();
                    } else {
                        // More than one pass waits: the next starts right after.
                        a.waiting = a.waiting.saturating_sub(taken).max(archive::ARCHIVE_ROWS);
                    }
                    a.pass = pass;
                }
                Err(e) => return tracing::warn!("archive pass cannot read the log: {e}"),
            }
        }
        let Some(pass) = a.pass.as_mut() else {
            return;
        };
        match archive::step(&mut self.conn, pass) {
            Ok(false) => {}
            Ok(true) => {
                stats
                    .archived
                    .fetch_add(pass.len() as u64, Ordering::Relaxed);
                a.upto = pass.top();
                a.pass = None;
            }
            // Retried from the same chunk on the next turn (chunks are idempotent).
            Err(e) => tracing::warn!("archive pass failed, retrying: {e}"),
        }
    }

    /// Run passes until the log's tail is archived; how many rows moved.
    pub(super) fn archive_all(&mut self) -> rusqlite::Result<usize> {
        let mut moved = 0;
        while let Some(mut pass) = archive::begin(&self.conn, self.archive.upto)? {
            while !archive::step(&mut self.conn, &mut pass)? {}
            moved += pass.len();
            self.archive.upto = pass.top();
        }
        self.archive.waiting = 0;
        self.archive.since = None;
        self.archive.channels.clear();
        Ok(moved)
    }

    /// Bring every lagging `streams` row up to date (before the log loses anything,
    /// and at a clean stop).
    pub(super) fn sync_rows(&mut self) -> rusqlite::Result<()> {
        let now = (crate::clock::now_ms() as i64).max(self.stamp_ms);
        let tx = self.conn.transaction()?;
        {
            let mut row = tx.prepare_cached(UPSERT_STREAM)?;
            for (channel, w) in self.channels.iter_mut() {
                if w.row_top != w.top {
                    row.execute(params![&**channel, w.epoch as i64, w.top as i64, now])?;
                }
            }
        }
        tx.commit()?;
        for w in self.channels.values_mut() {
            if w.row_top != w.top {
                w.row_top = w.top;
                w.row_ms = now;
            }
        }
        Ok(())
    }

    /// Delete marks older than theirs and start a round deleting archived publications
    /// older than their namespace's `history_ttl_ms` (after the `streams` rows caught up,
    /// so no top offset is lost).
    pub(super) fn prune_by_age(&mut self) -> rusqlite::Result<usize> {
        let now = crate::clock::now_ms() as i64;
        self.sync_rows()?;
        // Forget channels not written for a while (their next write rewrites the row).
        self.channels
            .retain(|_, w| now.saturating_sub(w.row_ms) < 10 * 60 * 1000);
        let marks_cutoff = retention::marks_cutoff(&self.namespaces, now);
        let marks = self
            .conn
            .execute("DELETE FROM marks WHERE at_ms < ?1", params![marks_cutoff])?;
        if !retention::limited(&self.namespaces) {
            return Ok(marks);
        }
        // The log itself loses rows only to archive passes (which move them first), so
        // its ids and the passes' progress stay in step; what is beyond retention goes
        // from the archive, a few channels between commits (`prune_step`).
        if self.archive.pruning.is_none() {
            self.archive.pruning = Some((String::new(), now));
        }
        Ok(marks)
    }

    /// One step of a pruning round: the archive loses, for the next
    /// [`retention::PRUNE_CHANNELS`] channels, what is beyond their namespace's retention (the
    /// most generous one for a channel whose namespace is no longer configured
    /// durable); work in proportion to what is deleted (`archive::prune`). Bounded, so
    /// commits go on in between however many channels there are.
    fn prune_step(&mut self, stats: &StoreStats) {
        let Some((after, now)) = self.archive.pruning.take() else {
            return;
        };
        match self.prune_channels(&after, now) {
            Ok((gone, last)) => {
                stats.pruned.fetch_add(gone as u64, Ordering::Relaxed);
                self.archive.pruning = last.map(|c| (c, now));
            }
            Err(e) => {
                tracing::warn!("store retention step failed, retrying: {e}");
                self.archive.pruning = Some((after, now));
            }
        }
    }

    /// Prune the channels after `after`; how many rows went, and the last channel (None
    /// when the round is complete).
    fn prune_channels(
        &mut self,
        after: &str,
        now: i64,
    ) -> rusqlite::Result<(usize, Option<String>)> {
        let channels: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT channel FROM streams WHERE channel > ?1 ORDER BY channel LIMIT ?2",
            )?
            .query_map(params![after, retention::PRUNE_CHANNELS as i64], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<_>>()?;
        let keeps: Vec<retention::Keep> = channels
            .iter()
            .map(|c| retention::keep_of(c, &self.namespaces, now))
            .collect();
        let tx = self.conn.transaction()?;
        let mut gone = 0;
        for (channel, keep) in channels.iter().zip(keeps) {
            if !keep.everything() {
                gone += archive::prune(&tx, channel, keep)?;
            }
        }
        tx.commit()?;
        let last = (channels.len() == retention::PRUNE_CHANNELS)
            .then(|| channels.into_iter().next_back())
            .flatten();
        Ok((gone, last))
    }
}

pub(super) const UPSERT_STREAM: &str =
    "INSERT INTO streams (channel, epoch, top, updated_ms) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (channel) DO UPDATE SET
         epoch = excluded.epoch, top = excluded.top, updated_ms = excluded.updated_ms";
