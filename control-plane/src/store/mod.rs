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
//! channels interleaved, because every channel dirtied its own page. Between commits the
//! writer moves the log's tail, sorted by channel, into `archive` (clustered by channel,
//! epoch and offset; see [`archive`]), so a channel's stored history
//! is one range to read. Each channel's epoch and top offset are in the small `streams`
//! table, written when its epoch changes and otherwise at most once a second; start-up
//! takes the top from the archive and the log's tail where it is newer. Retention on
//! disk is by age: every `prune_interval_ms` a round deletes each channel's archived
//! publications older than its namespace's `history_ttl_ms`, 256 channels a step between
//! commits (after every lagging `streams` row is brought up to date, so a top offset is
//! never lost; the log loses rows only to archive passes); `history_size` bounds what is
//! reloaded and served.
//!
//! A store that cannot be opened, created or read is a start-up error naming the file.
//! A write that fails at run time opens the circuit: the shards refuse new durable
//! publications (`Unavailable`), readiness reports it, and the writer retries the same
//! transaction until it succeeds; nothing handed over is dropped.
//!
//! The seam (batches in, commit notices and seeds out) is what a shared store for
//! several nodes would implement too; only this module knows about SQLite: start-up
//! reading in `startup`, the writer thread in `writer`, the handles here.

pub(crate) mod archive;
pub(crate) mod bookkeeping;
pub mod data_requests;
pub(crate) mod group_commit;
mod pages;
pub mod postgres;
mod reader;
pub(crate) mod retention;
mod revisions;
mod startup;
mod writer;

pub use reader::{spawn as spawn_reader, HistoryReader};
pub(crate) use revisions::{apply as apply_revision, Original};

use startup::{prepare, read_seeds};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use writer::Writer;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use switchboard_engine::journal::{Batch, Durable, JournalLink, JournalState, NamespacePolicy};
use switchboard_engine::ShardSender;

use crate::error::Error;
use switchboard_protocol::Format;

/// Version of the schema this build writes.
const SCHEMA_VERSION: i64 = 5;

/// `[store]`: where and how durable data is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Which database: `sqlite` (the embedded file at `path`, the default) or
    /// `postgres` (the database at `postgres_url`, for nodes that share state).
    pub backend: Backend,
    /// The SQLite file (created with its directory if missing).
    pub path: PathBuf,
    /// With `backend = "postgres"`: `postgres://user:password@host:port/database`
    /// (better set from the environment: `SWITCHBOARD_STORE__POSTGRES_URL`).
    pub postgres_url: Option<String>,
    /// Most publications handed to the writer and not yet stored; durable publications
    /// beyond it are refused as overloaded.
    pub max_backlog: usize,
    /// Most publications written in one transaction.
    pub max_batch: usize,
    /// After a failed write, wait this long before retrying it.
    pub retry_ms: u64,
    /// How often stored publications older than their namespace's `history_ttl_ms` are
    /// deleted.
    pub prune_interval_ms: u64,
    /// Longest a stored publication waits in the log before it is moved to the archive
    /// (sooner when enough wait per channel, see `archive`). Publications are durable
    /// from their commit either way; this bounds the log's tail that start-up scans.
    pub archive_after_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sqlite,
            path: PathBuf::from("data/switchboard.db"),
            postgres_url: None,
            max_backlog: 262_144,
            max_batch: 16_384,
            retry_ms: 500,
            prune_interval_ms: 60_000,
            archive_after_ms: 30_000,
        }
    }
}

impl StoreConfig {
    /// Check ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("store.path must not be empty".into());
        }
        match (self.backend, &self.postgres_url) {
            (Backend::Postgres, None) => {
                return Err(
                    "store.postgres_url must be set when store.backend is \"postgres\"".into(),
                )
            }
            (Backend::Postgres, Some(url)) => {
                url.parse::<::postgres::Config>().map_err(|_| {
                    "store.postgres_url is not a PostgreSQL URL \
                     (postgres://user:password@host:port/database)"
                        .to_string()
                })?;
            }
            (Backend::Sqlite, _) => {}
        }
        for (key, v) in [
            ("store.max_backlog", self.max_backlog as u64),
            ("store.max_batch", self.max_batch as u64),
            ("store.retry_ms", self.retry_ms),
            ("store.prune_interval_ms", self.prune_interval_ms),
            ("store.archive_after_ms", self.archive_after_ms),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        Ok(())
    }
}

/// `store.backend`: which database keeps durable data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded SQLite file (one node).
    #[default]
    Sqlite,
    /// A PostgreSQL database (nodes that share state).
    Postgres,
}

impl StoreConfig {
    /// Where the store is.
    pub fn location(&self) -> crate::sql::Location {
        match (self.backend, &self.postgres_url) {
            (Backend::Postgres, Some(url)) => crate::sql::Location::Postgres {
                url: url.clone(),
                target: url
                    .parse::<::postgres::Config>()
                    .map(|c| crate::sql::target_of(&c))
                    .unwrap_or_else(|_| "PostgreSQL".into()),
            },
            _ => crate::sql::Location::File(self.path.clone()),
        }
    }
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
    /// Publications moved from the log's tail to the archive.
    pub archived: AtomicU64,
    /// History pages read from the store (beyond what owner shards keep in memory).
    pub pages_read: AtomicU64,
    /// History pages the store failed to read.
    pub page_failures: AtomicU64,
    /// Duration of the last history page read, microseconds.
    pub last_page_us: AtomicU64,
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
    journal: Database,
    location: crate::sql::Location,
    rx: crossbeam_channel::Receiver<Batch>,
    state: Arc<JournalState>,
    cfg: StoreConfig,
    /// What the engine takes: the journal link and the streams to continue.
    durable: Option<Durable>,
    /// What start-up learned.
    pub opening: Opening,
}

/// The journal on each database.
#[derive(Debug)]
enum Database {
    Sqlite(Box<Writer>),
    Postgres(Box<crate::store::postgres::writer::PgJournal>),
}

/// The running writer.
#[derive(Debug)]
pub struct StoreHandle {
    location: crate::sql::Location,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<JournalState>,
    stats: Arc<StoreStats>,
}

fn format_code(f: Format) -> i64 {
    f.index() as i64
}

pub(crate) fn format_from(code: i64) -> Format {
    Format::ALL
        .into_iter()
        .find(|f| f.index() as i64 == code)
        .unwrap_or(Format::Json)
}

/// Open (or create) the store, read back the streams active within `stream_idle_ms`,
/// and mark the run as started. `namespaces` decides which streams continue after an
/// unclean stop and how much history each keeps.
///
/// `node` is this node's id in a cluster sharing a PostgreSQL database ("" alone): its
/// run marks and Socket.IO sessions are its own there.
pub fn open(
    cfg: &StoreConfig,
    namespaces: &[NamespacePolicy],
    stream_idle_ms: u64,
    node: &str,
) -> Result<Opened, Error> {
    match cfg.location() {
        crate::sql::Location::File(path) => open_file(cfg, path, namespaces, stream_idle_ms),
        crate::sql::Location::Postgres { url, target } => {
            let (store, read) = crate::sql::off_runtime(|| {
                crate::store::postgres::startup::open(&url, namespaces, stream_idle_ms, node)
            })
            .map_err(|e| Error::Store {
                path: PathBuf::from(&target),
                message: e.to_string(),
            })?;
            let journal =
                crate::store::postgres::writer::PgJournal::new(store, namespaces.to_vec(), node);
            let opening = Opening {
                clean: read.clean,
                streams: read.seeds.len(),
                continued: read.seeds.iter().filter(|s| s.epoch.is_some()).count(),
                marks: read.marks.len(),
                reconnect_key: read.reconnect_key,
            };
            Ok(Opened::new(
                Database::Postgres(Box::new(journal)),
                cfg.location(),
                cfg,
                (read.seeds, read.marks, read.sessions),
                opening,
            ))
        }
    }
}

fn open_file(
    cfg: &StoreConfig,
    path: PathBuf,
    namespaces: &[NamespacePolicy],
    stream_idle_ms: u64,
) -> Result<Opened, Error> {
    let fail = |message: String| Error::Store {
        path: path.clone(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(format!("cannot open: {e}")))?;
    prepare(&conn).map_err(|e| {
        // SQLite says only "unable to open database file" when it cannot write the
        // file or create its journal beside it: ask the system why.
        let why = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .err()
            .map(|os| format!(" ({os})"))
            .unwrap_or_default();
        fail(format!("cannot use it as a Switchboard store: {e}{why}"))
    })?;
    let clean =
        bookkeeping::was_clean(&mut conn, "").map_err(|e| fail(format!("cannot read: {e}")))?;
    let seeds = read_seeds(&mut conn, namespaces, stream_idle_ms, clean)
        .map_err(|e| fail(format!("cannot read streams: {e}")))?;
    let marks =
        bookkeeping::read_marks(&mut conn).map_err(|e| fail(format!("cannot read marks: {e}")))?;
    let sessions = bookkeeping::take_sessions(&mut conn, None)
        .map_err(|e| fail(format!("cannot read Socket.IO sessions: {e}")))?;
    let reconnect_key = bookkeeping::reconnect_key(&mut conn)
        .map_err(|e| fail(format!("cannot read or write keys: {e}")))?;
    let opening = Opening {
        clean,
        streams: seeds.len(),
        continued: seeds.iter().filter(|s| s.epoch.is_some()).count(),
        marks: marks.len(),
        reconnect_key,
    };
    let archive = writer::ArchiveState::open(&conn, cfg)
        .map_err(|e| fail(format!("cannot read the archive's progress: {e}")))?;
    let writer = Writer {
        conn,
        namespaces: namespaces.to_vec(),
        channels: HashMap::new(),
        stamp_ms: i64::MIN,
        archive,
    };
    Ok(Opened::new(
        Database::Sqlite(Box::new(writer)),
        crate::sql::Location::File(path),
        cfg,
        (seeds, marks, sessions),
        opening,
    ))
}

type Read = (
    Vec<switchboard_engine::journal::SeedStream>,
    Vec<switchboard_engine::journal::MarkRecord>,
    Vec<switchboard_engine::journal::SessionRecord>,
);

impl Opened {
    fn new(
        journal: Database,
        location: crate::sql::Location,
        cfg: &StoreConfig,
        (seeds, marks, sessions): Read,
        opening: Opening,
    ) -> Opened {
        let (link, rx) = JournalLink::new(cfg.max_backlog);
        Opened {
            journal,
            location,
            rx,
            state: link.state().clone(),
            cfg: cfg.clone(),
            durable: Some(Durable {
                link,
                seeds,
                marks,
                sessions,
            }),
            opening,
        }
    }

    fn sqlite(&mut self) -> &mut Writer {
        match &mut self.journal {
            Database::Sqlite(w) => w,
            Database::Postgres(_) => panic!("an SQLite store's tool used on PostgreSQL"),
        }
    }

    /// Write `batches` now, on the caller's thread, as the writer would (one
    /// transaction). For benchmarks and tools on an SQLite store; a running server
    /// writes through [`Opened::spawn`].
    pub fn write_now(&mut self, batches: &[Batch]) -> rusqlite::Result<()> {
        self.sqlite().write(batches)
    }

    /// Move everything in the log's tail to the archive now, as the writer's passes
    /// would between commits; how many publications moved. For benchmarks and tools on
    /// an SQLite store.
    pub fn archive_now(&mut self) -> rusqlite::Result<usize> {
        self.sqlite().archive_all()
    }

    /// Read a history page of `channel` (whose owner is at `top` and keeps nothing in
    /// memory) as the history reader would; the publications and whether more follow.
    /// For benchmarks and tools on an SQLite store.
    pub fn read_page(
        &mut self,
        channel: &str,
        page: &switchboard_protocol::history::Page,
        top: switchboard_protocol::Position,
    ) -> rusqlite::Result<(Vec<switchboard_engine::streams::Entry>, bool)> {
        match pages::read(&mut self.sqlite().conn, channel, page, top, &[]) {
            Ok(out) => Ok((out.entries, out.more)),
            Err(pages::PageError::Store(e)) => Err(e),
            Err(pages::PageError::UnknownEpoch(..) | pages::PageError::Failed(_)) => {
                Err(rusqlite::Error::QueryReturnedNoRows)
            }
        }
    }

    /// The journal link and the streams to continue, for the engine (once).
    pub fn take_durable(&mut self) -> Option<Durable> {
        self.durable.take()
    }

    /// Mark the run as started (so a crash from now on is seen as unclean) and start
    /// the writer; commit notices go to the shards through `shards`.
    pub fn spawn(mut self, shards: ShardSender) -> Result<StoreHandle, Error> {
        let location = self.location.clone();
        let marked = match &mut self.journal {
            Database::Sqlite(w) => bookkeeping::mark_clean(&mut w.conn, "", false),
            Database::Postgres(j) => bookkeeping::mark_clean(&mut j.store, &j.node, false),
        };
        marked.map_err(|e| Error::Store {
            path: location.name(),
            message: format!("cannot write: {e}"),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(StoreStats::default());
        let state = self.state.clone();
        let name = location.name().display().to_string();
        let thread = {
            let stop = stop.clone();
            let stats = stats.clone();
            let commit = group_commit::GroupCommit {
                journal: match self.journal {
                    Database::Sqlite(w) => w,
                    Database::Postgres(j) => j,
                },
                name,
                rx: self.rx,
                state: self.state,
                cfg: self.cfg,
            };
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || commit.run(&shards, &stop, &stats))
                .map_err(|e| Error::Store {
                    path: location.name(),
                    message: format!("cannot start the writer thread: {e}"),
                })?
        };
        Ok(StoreHandle {
            location,
            stop,
            thread: Some(thread),
            state,
            stats,
        })
    }
}

impl StoreHandle {
    /// Where the store is (the workers connect there).
    pub fn location(&self) -> &crate::sql::Location {
        &self.location
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

/// What the HTTP API, metrics and alerts see of the store.
#[derive(Debug, Clone)]
pub struct StoreView {
    /// The file, or `host:port/database`.
    pub path: String,
    /// Where the store is (data requests connect there).
    pub location: crate::sql::Location,
    /// Backlog and health, shared with the shards.
    pub state: Arc<JournalState>,
    /// Writer counters.
    pub stats: Arc<StoreStats>,
}
