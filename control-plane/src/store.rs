//! The store: durable channel streams in an embedded SQLite file (WAL).
//!
//! Owns the other end of the engine's journal seam ([`switchboard_engine::journal`]):
//! one writer thread that takes the shards' batches, appends everything that is
//! waiting to the `log` table in one transaction (group commit: one fsync for all of
//! it), and tells each shard with a `sync` publication waiting which of its batches are
//! durable. At start-up it reads the streams back for the shards to continue
//! ([`open`]), and records whether the last stop was clean: after an unclean stop,
//! channels of `async` namespaces start a new epoch (their last publications may be
//! missing), `sync` ones continue.
//!
//! Layout: publications are appended in commit order to `log` (a rowid table with no
//! other index), so a commit writes a few sequential pages however many channels it
//! touches; a clustered per-channel table cost ~20 µs per publication with 1,000
//! channels interleaved, because every channel dirtied its own page. Each channel's
//! epoch and top offset are in the small `streams` table, written when its epoch
//! changes and otherwise at most once a second; start-up takes the top from the log
//! where it is newer. Retention on disk is by age: every `prune_interval_ms` the log
//! loses what is older than the longest `history_ttl_ms` of the durable namespaces
//! (after every lagging `streams` row is brought up to date, so a top offset is never
//! lost); `history_size` bounds what is reloaded and served.
//!
//! A store that cannot be opened, created or read is a start-up error naming the file.
//! A write that fails at run time opens the circuit: the shards refuse new durable
//! publications (`Unavailable`), readiness reports it, and the writer retries the same
//! transaction until it succeeds; nothing handed over is dropped.
//!
//! The seam (batches in, commit notices and seeds out) is what a shared store for
//! several nodes would implement too; only this file knows about SQLite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use switchboard_engine::journal::{
    Batch, Durability, Durable, JournalLink, JournalState, MarkKind, MarkRecord, NamespacePolicy,
    SeedEntry, SeedStream,
};
use switchboard_engine::{ShardMsg, ShardSender};
use switchboard_protocol::Format;

/// Version of the schema this build writes.
const SCHEMA_VERSION: i64 = 3;

/// Marks (inbox cursors, receipts) not updated for this long are deleted, unless the
/// longest durable `history_ttl_ms` is longer.
const MARKS_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// `[store]`: where and how durable data is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file (created with its directory if missing).
    pub path: PathBuf,
    /// Most publications handed to the writer and not yet stored; durable publications
    /// beyond it are refused as overloaded.
    pub max_backlog: usize,
    /// Most publications written in one transaction.
    pub max_batch: usize,
    /// After a failed write, wait this long before retrying it.
    pub retry_ms: u64,
    /// How often publications older than the longest `history_ttl_ms` of the durable
    /// namespaces are deleted.
    pub prune_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("data/switchboard.db"),
            max_backlog: 262_144,
            max_batch: 16_384,
            retry_ms: 500,
            prune_interval_ms: 60_000,
        }
    }
}

impl StoreConfig {
    /// Check ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("store.path must not be empty".into());
        }
        for (key, v) in [
            ("store.max_backlog", self.max_backlog as u64),
            ("store.max_batch", self.max_batch as u64),
            ("store.retry_ms", self.retry_ms),
            ("store.prune_interval_ms", self.prune_interval_ms),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        Ok(())
    }
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
#[error("store {path}: {message}")]
pub struct StoreError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Counters of the writer, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Publications written.
    pub records: AtomicU64,
    /// Failed write attempts.
    pub failures: AtomicU64,
    /// Duration of the last commit, microseconds.
    pub last_commit_us: AtomicU64,
    /// Publications deleted by retention.
    pub pruned: AtomicU64,
}

/// What start-up learned about the previous run.
#[derive(Clone, PartialEq, Eq)]
pub struct Opening {
    /// Whether the previous run stopped cleanly (or the file is new).
    pub clean: bool,
    /// Streams handed to the shards.
    pub streams: usize,
    /// Of those, continued in their epoch.
    pub continued: usize,
    /// Inbox cursors and receipts handed to the shards.
    pub marks: usize,
    /// Key of reconnect tokens (generated once per store, so every process sharing
    /// the store accepts the others' tokens).
    pub reconnect_key: Vec<u8>,
}

impl std::fmt::Debug for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opening")
            .field("clean", &self.clean)
            .field("streams", &self.streams)
            .field("continued", &self.continued)
            .field("marks", &self.marks)
            .field("reconnect_key", &"<redacted>")
            .finish()
    }
}

/// An opened store whose writer has not started yet (it needs the engine's shards to
/// notify).
#[derive(Debug)]
pub struct Opened {
    writer: Writer,
    /// What the engine takes: the journal link and the streams to continue.
    durable: Option<Durable>,
    /// What start-up learned.
    pub opening: Opening,
}

/// The running writer.
#[derive(Debug)]
pub struct StoreHandle {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<JournalState>,
    stats: Arc<StoreStats>,
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    path: PathBuf,
    rx: Receiver<Batch>,
    state: Arc<JournalState>,
    cfg: StoreConfig,
    namespaces: Vec<NamespacePolicy>,
    /// What the writer remembers per channel it wrote, so most commits are only the
    /// appends.
    channels: HashMap<Arc<str>, Written>,
}

/// Per channel: the epoch and top offset written to the log, and what its `streams`
/// row says (and since when).
#[derive(Debug, Clone, Copy)]
struct Written {
    epoch: u64,
    top: u64,
    row_top: u64,
    row_ms: i64,
}

/// A channel's `streams` row is rewritten at most this often unless its epoch changes
/// (start-up takes the top offset from the log where it is newer).
const ROW_REFRESH_MS: i64 = 1_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn format_code(f: Format) -> i64 {
    f.index() as i64
}

fn format_from(code: i64) -> Format {
    Format::ALL
        .into_iter()
        .find(|f| f.index() as i64 == code)
        .unwrap_or(Format::Json)
}

/// The namespace of `channel` among `namespaces`, if configured.
fn namespace_of<'a>(
    channel: &str,
    namespaces: &'a [NamespacePolicy],
) -> Option<&'a NamespacePolicy> {
    let (ns, _) = channel.split_once(':')?;
    namespaces.iter().find(|n| n.name == ns)
}

/// Open (or create) the store, read back the streams active within `stream_idle_ms`,
/// and mark the run as started. `namespaces` decides which streams continue after an
/// unclean stop and how much history each keeps.
pub fn open(
    cfg: &StoreConfig,
    namespaces: &[NamespacePolicy],
    stream_idle_ms: u64,
) -> Result<Opened, StoreError> {
    let path = cfg.path.clone();
    let fail = |message: String| StoreError {
        path: path.clone(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(format!("cannot open: {e}")))?;
    prepare(&conn).map_err(|e| fail(format!("cannot use it as a Switchboard store: {e}")))?;
    let clean = conn
        .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(|e| fail(format!("cannot read: {e}")))?
        .is_none_or(|v| v == "1");
    let seeds = read_seeds(&conn, namespaces, stream_idle_ms, clean)
        .map_err(|e| fail(format!("cannot read streams: {e}")))?;
    let marks = read_marks(&conn).map_err(|e| fail(format!("cannot read marks: {e}")))?;
    let reconnect_key =
        reconnect_key(&conn).map_err(|e| fail(format!("cannot read or write keys: {e}")))?;
    let opening = Opening {
        clean,
        streams: seeds.len(),
        continued: seeds.iter().filter(|s| s.epoch.is_some()).count(),
        marks: marks.len(),
        reconnect_key,
    };
    let (link, rx) = JournalLink::new(cfg.max_backlog);
    let writer = Writer {
        conn,
        path: path.clone(),
        rx,
        state: link.state().clone(),
        cfg: cfg.clone(),
        namespaces: namespaces.to_vec(),
        channels: HashMap::new(),
    };
    Ok(Opened {
        writer,
        durable: Some(Durable { link, seeds, marks }),
        opening,
    })
}

/// Pragmas and schema; refuses files written by a newer schema.
fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    // FULL: every commit is fsynced (WAL), so a `sync` acknowledgment survives power
    // loss, not only a process crash.
    // SQLite's own WAL checkpoints (every 1,000 pages, on the committing thread). A
    // passive checkpoint on a separate thread was tried: under a sustained 50k
    // publications/s it fell behind, the WAL grew without bound and the tail latency
    // of commits got worse, not better.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "schema version {version} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS streams (
             channel TEXT PRIMARY KEY,
             epoch INTEGER NOT NULL,
             top INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS log (
             id INTEGER PRIMARY KEY,
             channel TEXT NOT NULL,
             epoch INTEGER NOT NULL,
             offset INTEGER NOT NULL,
             ts_ms INTEGER NOT NULL,
             format INTEGER NOT NULL,
             data BLOB NOT NULL,
             meta BLOB,
             key TEXT,
             sender TEXT
         );
         CREATE TABLE IF NOT EXISTS marks (
             channel TEXT NOT NULL,
             kind INTEGER NOT NULL,
             who TEXT NOT NULL,
             epoch INTEGER NOT NULL,
             delivered INTEGER NOT NULL,
             read INTEGER NOT NULL,
             at_ms INTEGER NOT NULL,
             PRIMARY KEY (channel, kind, who)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS scheduled (
             id INTEGER PRIMARY KEY,
             due_ms INTEGER NOT NULL,
             channel TEXT NOT NULL,
             sender TEXT,
             format INTEGER NOT NULL,
             data BLOB NOT NULL,
             meta BLOB,
             owner TEXT NOT NULL,
             created_ms INTEGER NOT NULL,
             state INTEGER NOT NULL,
             fired_ms INTEGER,
             epoch INTEGER,
             offset INTEGER,
             error TEXT
         );
         CREATE INDEX IF NOT EXISTS scheduled_pending ON scheduled (state, due_ms);
         CREATE INDEX IF NOT EXISTS scheduled_owner ON scheduled (owner, state);
         CREATE TABLE IF NOT EXISTS notifications (
             id INTEGER PRIMARY KEY,
             key TEXT UNIQUE,
             topic TEXT,
             kind TEXT NOT NULL,
             data TEXT NOT NULL,
             created_ms INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS notification_recipients (
             user TEXT NOT NULL,
             id INTEGER NOT NULL,
             read_ms INTEGER,
             PRIMARY KEY (user, id)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS notification_recipients_id ON notification_recipients (id);
         CREATE TABLE IF NOT EXISTS notification_topics (
             topic TEXT NOT NULL,
             user TEXT NOT NULL,
             PRIMARY KEY (topic, user)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS notification_topics_user ON notification_topics (user);
         CREATE TABLE IF NOT EXISTS calls (
             id INTEGER PRIMARY KEY,
             caller TEXT NOT NULL,
             callee TEXT,
             room TEXT,
             media TEXT,
             created_ms INTEGER NOT NULL,
             answered_ms INTEGER,
             ended_ms INTEGER,
             outcome TEXT,
             reason TEXT,
             participants TEXT
         );
         CREATE INDEX IF NOT EXISTS calls_caller ON calls (caller, id);
         CREATE INDEX IF NOT EXISTS calls_callee ON calls (callee, id);
         CREATE TABLE IF NOT EXISTS call_quality (
             call INTEGER NOT NULL,
             user TEXT NOT NULL,
             at_ms INTEGER NOT NULL,
             data TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS call_quality_call ON call_quality (call);
         CREATE TABLE IF NOT EXISTS revocations (
             user TEXT PRIMARY KEY,
             at_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS audit (
             id INTEGER PRIMARY KEY,
             at_ms INTEGER NOT NULL,
             actor TEXT NOT NULL,
             action TEXT NOT NULL,
             target TEXT,
             result TEXT NOT NULL,
             detail TEXT NOT NULL
         );
         COMMIT;",
    )?;
    // Version 1 files: the log had no sender column.
    let has_sender = conn
        .prepare("SELECT 1 FROM pragma_table_info('log') WHERE name = 'sender'")?
        .exists([])?;
    if !has_sender {
        conn.execute_batch("ALTER TABLE log ADD COLUMN sender TEXT")?;
    }
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    Ok(())
}

/// Every inbox cursor and receipt.
fn read_marks(conn: &Connection) -> rusqlite::Result<Vec<MarkRecord>> {
    let mut q =
        conn.prepare("SELECT channel, kind, who, epoch, delivered, read, at_ms FROM marks")?;
    let rows = q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)? as u64,
            r.get::<_, i64>(4)? as u64,
            r.get::<_, i64>(5)? as u64,
            r.get::<_, i64>(6)? as u64,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (channel, kind, who, epoch, delivered, read, at_ms) = row?;
        let Some(kind) = MarkKind::from_code(kind) else {
            continue;
        };
        out.push(MarkRecord {
            channel: channel.into(),
            kind,
            who: who.into(),
            epoch,
            delivered,
            read,
            at_ms,
        });
    }
    Ok(out)
}

/// The store's reconnect-token key, created on first use.
fn reconnect_key(conn: &Connection) -> rusqlite::Result<Vec<u8>> {
    let hex: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'reconnect_key'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let parse = |h: &str| -> Option<Vec<u8>> {
        (h.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
    };
    if let Some(key) = hex.as_deref().and_then(parse) {
        return Ok(key);
    }
    let hex = crate::ids::random_hex(32);
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('reconnect_key', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [&hex],
    )?;
    Ok(parse(&hex).expect("64 hex digits"))
}

fn read_seeds(
    conn: &Connection,
    namespaces: &[NamespacePolicy],
    stream_idle_ms: u64,
    clean: bool,
) -> rusqlite::Result<Vec<SeedStream>> {
    let now = now_ms();
    let since = now.saturating_sub(stream_idle_ms.min(i64::MAX as u64) as i64);
    // Every stream active within the idle time whose namespace is still durable.
    let mut by_channel: HashMap<String, (SeedStream, Option<&NamespacePolicy>)> = HashMap::new();
    let mut streams =
        conn.prepare("SELECT channel, epoch, top FROM streams WHERE updated_ms >= ?1")?;
    let rows = streams.query_map([since], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    for row in rows {
        let (channel, epoch, top) = row?;
        let Some(ns) = namespace_of(&channel, namespaces) else {
            // Its namespace is no longer configured (so no longer durable).
            continue;
        };
        // After an unclean stop only `sync` streams are known complete.
        let continues = match ns.durability {
            Durability::Sync => true,
            Durability::Async => clean,
            Durability::None => false,
        };
        let seed = SeedStream {
            channel: channel.as_str().into(),
            epoch: Some(epoch),
            offset: top,
            entries: Vec::new(),
        };
        by_channel.insert(channel, (seed, continues.then_some(ns)));
    }
    // The log, oldest first: the top offset where the row lags, and the kept
    // publications of each continuing stream.
    let mut kept: HashMap<String, std::collections::VecDeque<SeedEntry>> = HashMap::new();
    let mut log = conn.prepare(
        "SELECT channel, epoch, offset, ts_ms, format, data, meta, key, sender FROM log ORDER BY id",
    )?;
    let mut rows = log.query([])?;
    while let Some(r) = rows.next()? {
        let channel: String = r.get(0)?;
        let Some((seed, ns)) = by_channel.get_mut(&channel) else {
            continue;
        };
        if Some(r.get::<_, i64>(1)? as u64) != seed.epoch {
            continue;
        }
        let offset = r.get::<_, i64>(2)? as u64;
        seed.offset = seed.offset.max(offset);
        let Some(ns) = ns else { continue };
        let age_ms = now.saturating_sub(r.get::<_, i64>(3)?).max(0) as u64;
        if age_ms > ns.history_ttl_ms || ns.history_size == 0 {
            continue;
        }
        let list = kept.entry(channel).or_default();
        if list.len() == ns.history_size {
            list.pop_front();
        }
        list.push_back(SeedEntry {
            offset,
            age_ms,
            format: format_from(r.get(4)?),
            data: Bytes::from(r.get::<_, Vec<u8>>(5)?),
            meta: r.get::<_, Option<Vec<u8>>>(6)?.map(Bytes::from),
            key: r.get::<_, Option<String>>(7)?.map(String::into_boxed_str),
            from: r.get::<_, Option<String>>(8)?.map(String::into_boxed_str),
        });
    }
    let mut out = Vec::with_capacity(by_channel.len());
    for (channel, (mut seed, ns)) in by_channel {
        if ns.is_none() {
            // A new epoch: its tail may be lost.
            seed.epoch = None;
        } else if let Some(list) = kept.remove(&channel) {
            seed.entries = list.into();
        }
        out.push(seed);
    }
    Ok(out)
}

impl Opened {
    /// Write `batches` now, on the caller's thread, as the writer would (one
    /// transaction). For benchmarks and tools; a running server writes through
    /// [`Opened::spawn`].
    pub fn write_now(&mut self, batches: &[Batch]) -> rusqlite::Result<()> {
        self.writer.write(batches)
    }

    /// The journal link and the streams to continue, for the engine (once).
    pub fn take_durable(&mut self) -> Option<Durable> {
        self.durable.take()
    }

    /// Mark the run as started (so a crash from now on is seen as unclean) and start
    /// the writer; commit notices go to the shards through `shards`.
    pub fn spawn(self, shards: ShardSender) -> Result<StoreHandle, StoreError> {
        let Opened { writer, .. } = self;
        writer
            .conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('clean', '0')
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [],
            )
            .map_err(|e| StoreError {
                path: writer.path.clone(),
                message: format!("cannot write: {e}"),
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(StoreStats::default());
        let state = writer.state.clone();
        let path = writer.path.clone();
        let thread = {
            let stop = stop.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer.run(&shards, &stop, &stats))
                .map_err(|e| StoreError {
                    path: path.clone(),
                    message: format!("cannot start the writer thread: {e}"),
                })?
        };
        Ok(StoreHandle {
            path,
            stop,
            thread: Some(thread),
            state,
            stats,
        })
    }
}

impl StoreHandle {
    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Backlog and health, shared with the shards.
    pub fn state(&self) -> &Arc<JournalState> {
        &self.state
    }

    /// Writer counters.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// After the shards have stopped: write what is left, mark the stop clean (if
    /// everything was written) and stop the writer.
    pub fn finish(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

impl Writer {
    fn run(mut self, shards: &ShardSender, stop: &AtomicBool, stats: &StoreStats) {
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
                match self.write(&batches) {
                    Ok(()) => {
                        stats
                            .last_commit_us
                            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        stats.records.fetch_add(n as u64, Ordering::Relaxed);
                        if !self.state.healthy() {
                            tracing::info!(path = %self.path.display(), "store writes again");
                            self.state.set_healthy(true);
                        }
                        self.state.stored(n);
                        notify(shards, &batches, stop);
                        batches.clear();
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        if self.state.healthy() {
                            tracing::error!(
                                path = %self.path.display(),
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
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + prune_every;
                match self.prune_by_age() {
                    Ok(n) => {
                        stats.pruned.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("store retention pass failed: {e}"),
                }
            }
        }
        if complete && self.rx.is_empty() {
            if let Err(e) = self
                .conn
                .execute("UPDATE meta SET value = '1' WHERE key = 'clean'", [])
            {
                tracing::error!("cannot mark the store's stop clean: {e}");
            }
        }
    }

    /// One transaction for every waiting batch: the appends, and the `streams` rows
    /// of channels whose epoch changed or whose row is a second old.
    fn write(&mut self, batches: &[Batch]) -> rusqlite::Result<()> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let mut tops: HashMap<&Arc<str>, (u64, u64)> = HashMap::new();
        let mut updates: Vec<(Arc<str>, Written)> = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO log (channel, epoch, offset, ts_ms, format, data, meta, key, sender)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
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
                ])?;
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
        // Only once committed: a failed transaction is retried whole.
        for (channel, w) in updates {
            self.channels.insert(channel, w);
        }
        Ok(())
    }

    /// Bring every lagging `streams` row up to date (before the log loses anything,
    /// and at a clean stop).
    fn sync_rows(&mut self) -> rusqlite::Result<()> {
        let now = now_ms();
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

    /// Delete publications older than the longest `history_ttl_ms` of the durable
    /// namespaces (after the `streams` rows caught up, so no top offset is lost).
    fn prune_by_age(&mut self) -> rusqlite::Result<usize> {
        let now = now_ms();
        self.sync_rows()?;
        // Forget channels not written for a while (their next write rewrites the row).
        self.channels
            .retain(|_, w| now.saturating_sub(w.row_ms) < 10 * 60 * 1000);
        let ttl = self
            .namespaces
            .iter()
            .filter(|n| n.durability != Durability::None)
            .map(|n| n.history_ttl_ms)
            .max();
        let marks_ttl = ttl.unwrap_or(0).max(MARKS_TTL_MS);
        let marks_cutoff = now.saturating_sub(marks_ttl.min(i64::MAX as u64) as i64);
        let marks = self
            .conn
            .execute("DELETE FROM marks WHERE at_ms < ?1", params![marks_cutoff])?;
        let Some(ttl) = ttl else {
            return Ok(marks);
        };
        let cutoff = now.saturating_sub(ttl.min(i64::MAX as u64) as i64);
        // The log is in commit order, so what is too old is a prefix of ids.
        let log = self.conn.execute(
            "DELETE FROM log WHERE id < (SELECT COALESCE(MIN(id), 0) FROM log WHERE ts_ms >= ?1)
                 OR (SELECT MAX(ts_ms) FROM log) < ?1",
            params![cutoff],
        )?;
        Ok(log + marks)
    }
}

const UPSERT_STREAM: &str =
    "INSERT INTO streams (channel, epoch, top, updated_ms) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (channel) DO UPDATE SET
         epoch = excluded.epoch, top = excluded.top, updated_ms = excluded.updated_ms";

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

/// What the HTTP API, metrics and alerts see of the store.
#[derive(Debug, Clone)]
pub struct StoreView {
    /// The file.
    pub path: String,
    /// Backlog and health, shared with the shards.
    pub state: Arc<JournalState>,
    /// Writer counters.
    pub stats: Arc<StoreStats>,
}
