//! The PostgreSQL store's schema, one migration per version, applied in order inside
//! one transaction under an advisory lock (nodes starting together migrate once; the
//! others wait, then find it done).
//!
//! Owns the table definitions and `switchboard_schema`, the one-row table holding the
//! version. Tables mirror the SQLite store's, with PostgreSQL's types: publications are
//! one table with its primary key (channel, epoch, offset) and a time index —
//! PostgreSQL adds index entries without the whole-page rewrite that made SQLite's
//! per-channel indexes slow under group commit — with `revisions` holding each
//! original's latest edit.

use postgres::Client;

/// Version of the schema this build writes.
pub const SCHEMA_VERSION: i32 = 6;

/// Why migrating stopped.
pub(super) enum Outcome {
    /// The database's schema is newer than this build's (its version).
    Newer(i32),
    /// A statement failed.
    Failed(postgres::Error),
}

impl From<postgres::Error> for Outcome {
    fn from(e: postgres::Error) -> Self {
        Outcome::Failed(e)
    }
}

/// Any constant: the advisory lock every node takes to migrate.
const LOCK: i64 = 0x5357_4243_4844_0001;

/// Migration `n` brings version `n - 1` to `n`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // 1: everything the SQLite store holds as of its schema 5.
    "CREATE TABLE publications (
         channel TEXT NOT NULL,
         epoch BIGINT NOT NULL,
         \"offset\" BIGINT NOT NULL,
         ts_ms BIGINT NOT NULL,
         format SMALLINT NOT NULL,
         data BYTEA NOT NULL,
         meta BYTEA,
         key TEXT,
         sender TEXT,
         event TEXT,
         author TEXT,
         revises BIGINT,
         PRIMARY KEY (channel, epoch, \"offset\")
     );
     CREATE INDEX publications_author ON publications (author) WHERE author IS NOT NULL;
     CREATE TABLE revisions (
         channel TEXT NOT NULL,
         epoch BIGINT NOT NULL,
         target BIGINT NOT NULL,
         \"offset\" BIGINT NOT NULL,
         ts_ms BIGINT NOT NULL,
         deleted BOOLEAN NOT NULL,
         format SMALLINT NOT NULL,
         data BYTEA NOT NULL,
         meta BYTEA,
         PRIMARY KEY (channel, epoch, target)
     );
     CREATE TABLE streams (
         channel TEXT PRIMARY KEY,
         epoch BIGINT NOT NULL,
         top BIGINT NOT NULL,
         updated_ms BIGINT NOT NULL
     );
     CREATE TABLE marks (
         channel TEXT NOT NULL,
         kind SMALLINT NOT NULL,
         who TEXT NOT NULL,
         epoch BIGINT NOT NULL,
         delivered BIGINT NOT NULL,
         read BIGINT NOT NULL,
         at_ms BIGINT NOT NULL,
         PRIMARY KEY (channel, kind, who)
     );
     CREATE TABLE notifications (
         id BIGSERIAL PRIMARY KEY,
         key TEXT UNIQUE,
         topic TEXT,
         kind TEXT NOT NULL,
         data TEXT NOT NULL,
         created_ms BIGINT NOT NULL,
         updated_ms BIGINT NOT NULL
     );
     CREATE TABLE notification_recipients (
         \"user\" TEXT NOT NULL,
         id BIGINT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
         read_ms BIGINT,
         PRIMARY KEY (\"user\", id)
     );
     CREATE INDEX notification_recipients_id ON notification_recipients (id);
     CREATE TABLE notification_topics (
         topic TEXT NOT NULL,
         \"user\" TEXT NOT NULL,
         PRIMARY KEY (topic, \"user\")
     );
     CREATE INDEX notification_topics_user ON notification_topics (\"user\");
     CREATE TABLE scheduled (
         id BIGSERIAL PRIMARY KEY,
         due_ms BIGINT NOT NULL,
         channel TEXT NOT NULL,
         sender TEXT,
         format SMALLINT NOT NULL,
         data BYTEA NOT NULL,
         meta BYTEA,
         owner TEXT NOT NULL,
         created_ms BIGINT NOT NULL,
         state SMALLINT NOT NULL,
         fired_ms BIGINT,
         epoch BIGINT,
         \"offset\" BIGINT,
         error TEXT
     );
     CREATE INDEX scheduled_due ON scheduled (state, due_ms);
     CREATE TABLE audit (
         id BIGSERIAL PRIMARY KEY,
         at_ms BIGINT NOT NULL,
         actor TEXT NOT NULL,
         action TEXT NOT NULL,
         target TEXT,
         result TEXT NOT NULL,
         detail TEXT NOT NULL
     );
     CREATE TABLE revocations (
         \"user\" TEXT PRIMARY KEY,
         at_ms BIGINT NOT NULL
     );",
    // 2: pages by time find their first and last offset in one seek each (a binary
    // search over offsets costs a round trip per probe here).
    "CREATE INDEX publications_time ON publications (channel, epoch, ts_ms, \"offset\");",
    // 3: the server runs on PostgreSQL: its run marks and keys, Socket.IO sessions kept
    // over a clean restart, the call log, pending jobs by owner.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE sio_sessions (
         pid TEXT PRIMARY KEY,
         home BIGINT NOT NULL,
         closed_ms BIGINT NOT NULL,
         body BYTEA NOT NULL
     );
     CREATE TABLE calls (
         id BIGINT PRIMARY KEY,
         caller TEXT NOT NULL,
         callee TEXT,
         room TEXT,
         media TEXT,
         created_ms BIGINT NOT NULL,
         answered_ms BIGINT,
         ended_ms BIGINT,
         outcome TEXT,
         reason TEXT,
         participants TEXT
     );
     CREATE INDEX calls_caller ON calls (caller, id);
     CREATE INDEX calls_callee ON calls (callee, id);
     CREATE TABLE call_quality (
         call BIGINT NOT NULL,
         \"user\" TEXT NOT NULL,
         at_ms BIGINT NOT NULL,
         data TEXT NOT NULL
     );
     CREATE INDEX call_quality_call ON call_quality (call);
     CREATE INDEX scheduled_owner ON scheduled (owner, state);
     CREATE INDEX marks_at ON marks (at_ms);
     CREATE INDEX publications_sender ON publications (sender) WHERE sender IS NOT NULL;",
    // 4: nodes of a cluster share the database: each keeps its own Socket.IO sessions
    // (and its own run marks, `clean:<node>` in `meta`).
    "ALTER TABLE sio_sessions ADD COLUMN node TEXT NOT NULL DEFAULT '';",
    // 5: nodes sharing the database claim the scheduled messages they fire, for a lease.
    "ALTER TABLE scheduled ADD COLUMN claimed_until BIGINT;",
    // 6: the call log says whose call each is (a node restarting closes only its own).
    "ALTER TABLE calls ADD COLUMN node TEXT NOT NULL DEFAULT '';",
];

/// Apply every migration after the database's version up to `upto`; the version found.
pub(super) fn migrate(client: &mut Client, upto: i32) -> Result<i32, Outcome> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS switchboard_schema (
             version INTEGER NOT NULL,
             migrated_ms BIGINT NOT NULL
         )",
    )?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM switchboard_schema", &[])?
        .map(|r| r.get(0));
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(Outcome::Newer(found));
    }
    let upto = upto.clamp(found, SCHEMA_VERSION);
    for sql in &MIGRATIONS[found as usize..upto as usize] {
        tx.batch_execute(sql)?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    tx.execute("DELETE FROM switchboard_schema", &[])?;
    tx.execute(
        "INSERT INTO switchboard_schema (version, migrated_ms) VALUES ($1, $2)",
        &[&upto, &now],
    )?;
    tx.commit()?;
    Ok(found)
}
