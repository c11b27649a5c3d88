//! The PostgreSQL store, for nodes that share durable state: the same data as the
//! embedded SQLite store (publications with their authors and revisions, stream tops,
//! inbox cursors and receipts, notifications, scheduled messages, audit), in a database
//! the teams we replace already run.
//!
//! Owns the versioned schema and its migrations (applied at start under an advisory
//! lock, so nodes starting together migrate once; a database whose schema is newer than
//! this build is refused in plain words). The connection itself is
//! [`crate::sql::PgStore`].
//!
//! The server runs on it with `[store] backend = "postgres"`: start-up reads it back
//! (`startup`), the writer thread commits the journal to it (`writer`, `journal`) and
//! prunes it (`retention`), the history reader pages it (`pages`), data requests run on
//! it (`data_requests`), and the workers (notifications, schedules, calls, audit) keep
//! their tables in it through `crate::sql`.

pub(crate) mod data_requests;
pub mod journal;
pub mod pages;
pub(crate) mod retention;
mod schema;
pub(crate) mod startup;
mod temp_server;
pub mod writer;

pub use schema::SCHEMA_VERSION;
pub use temp_server::TempServer;

pub use crate::sql::{PgError, PgStore};

/// Any constant: the advisory lock a running node holds on its database.
const NODE_LOCK: i64 = 0x5357_4243_4844_0002;

/// Take the lock a running node (`node`: its cluster id, "" alone) holds on its
/// database for as long as `store`'s session lasts (the writer's): its run marks (a
/// clean stop) and the Socket.IO sessions it keeps are its own, so a second process
/// as the same node is refused.
pub(crate) fn hold_node_lock(store: &mut PgStore, node: &str) -> Result<(), PgError> {
    let target = store.target().to_string();
    // Nodes of a cluster share the database, each under its own id.
    let mut key = NODE_LOCK;
    for b in node.bytes() {
        key = (key ^ i64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let free: bool = crate::sql::off_runtime(|| {
        store
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
    })
    .map_err(|e| PgError::Query {
        target: target.clone(),
        message: crate::sql::describe(&e),
    })?
    .get(0);
    if free {
        return Ok(());
    }
    Err(PgError::Query {
        target,
        message: if node.is_empty() {
            "the database is in use by another running Switchboard node \
             (nodes alone need a database each; nodes of a cluster share one, each \
             with its own cluster.node_id)"
                .into()
        } else {
            format!("node {node} is already running on this database (cluster.node_id must differ)")
        },
    })
}

/// Bring the schema of `store`'s database to this build's version; the version found
/// before.
pub fn migrate(store: &mut PgStore) -> Result<i32, PgError> {
    migrate_to(store, SCHEMA_VERSION)
}

/// [`migrate`], stopping at version `upto`: what an earlier build left (for the tests
/// of migrating its databases).
#[doc(hidden)]
pub fn migrate_to(store: &mut PgStore, upto: i32) -> Result<i32, PgError> {
    let target = store.target().to_string();
    crate::sql::off_runtime(|| schema::migrate(&mut store.client, upto)).map_err(|e| match e {
        schema::Outcome::Newer(found) => PgError::Newer {
            target,
            found,
            ours: SCHEMA_VERSION,
        },
        schema::Outcome::Failed(e) => PgError::Query {
            target,
            message: crate::sql::describe(&e),
        },
    })
}
