//! One connection type for the store's two databases: the embedded SQLite file and
//! PostgreSQL. The control plane's workers (notifications, schedules, calls, audit,
//! data requests, start-up bookkeeping) write their statements once, with `?1`-style
//! placeholders and columns named as both databases accept them (`"user"` and
//! `"offset"` quoted), and run them through [`Exec`] on either.
//!
//! Owns the connection ([`Db`]), transactions ([`Tx`]), rows ([`Row`]), errors, the
//! placeholder translation for PostgreSQL and each connection's prepared-statement
//! cache. Does not own any table or statement (the features do), nor the journal's
//! write path and history pages, which are written per database for speed
//! (`store::writer`/`store::pages`, `store::postgres::journal`/`store::postgres::pages`).
//!
//! Why not a crate: sqlx's `Any` driver is async (every worker would need a runtime)
//! and diesel's backends need its query builder; the workers' SQL is plain and
//! synchronous, and this adapter is the few lines between it and the two drivers the
//! store already uses.

mod pg;
mod value;

/// Parameters of a statement, each bound by reference:
/// `db.execute("… ?1, ?2", args![user, id])`.
macro_rules! args {
    () => {
        &[] as &[&dyn $crate::sql::Param]
    };
    ($($arg:expr),+ $(,)?) => {
        &[$(&$arg as &dyn $crate::sql::Param),+]
    };
}
pub(crate) use args;

pub use pg::{describe, target_of, PgError, PgStore};
pub use value::{FromColumn, Param, Value};

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use postgres::{GenericClient, Statement};

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    File(PathBuf),
    /// A PostgreSQL database (`postgres://user:password@host:port/database`).
    Postgres {
        /// The URL (holds the password: never shown).
        url: String,
        /// `host:port/database`, for messages.
        target: String,
    },
}

impl Location {
    /// What messages call it: the file, or `host:port/database`.
    pub fn name(&self) -> PathBuf {
        match self {
            Location::File(p) => p.clone(),
            Location::Postgres { target, .. } => PathBuf::from(target),
        }
    }
}

/// A connection of `who` to the SQLite store file at `path` (already created and
/// prepared by [`crate::store::open`]; WAL lets it write beside the journal writer).
pub fn open_file(path: &std::path::Path, who: &str) -> Result<rusqlite::Connection, crate::Error> {
    let fail = |e: rusqlite::Error| crate::Error::Store {
        path: path.to_owned(),
        message: format!("{who} cannot open it: {e}"),
    };
    let conn = rusqlite::Connection::open(path).map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
    conn.execute_batch("PRAGMA synchronous = FULL;")
        .map_err(fail)?;
    Ok(conn)
}

/// Which database a connection talks to, for the rare statement written per database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A statement that failed, or a column that is not what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said so.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said so.
    #[error("{}", describe(.0))]
    Postgres(#[from] postgres::Error),
    /// Column `0` is not `1`.
    #[error("column {0} is not {1}")]
    Column(usize, &'static str),
    /// A query for one row found none.
    #[error("no row found")]
    NoRows,
    /// The connection was lost and could not be made again.
    #[error("{0}")]
    Connect(#[from] PgError),
}

/// A connection to the store.
pub enum Db {
    /// The SQLite file.
    Sqlite(rusqlite::Connection),
    /// The PostgreSQL database.
    Postgres(Box<PgStore>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Sqlite(_) => f.write_str("Db::Sqlite"),
            Db::Postgres(p) => write!(f, "Db::Postgres({})", p.target()),
        }
    }
}

impl Db {
    /// Open a connection for `who` (a worker) to the store at `at`, which start-up
    /// already created and migrated.
    pub fn open(at: &Location, who: &str) -> Result<Db, crate::Error> {
        let fail = |message: String| crate::Error::Store {
            path: at.name(),
            message: format!("{who} cannot open it: {message}"),
        };
        match at {
            Location::File(path) => open_file(path, who).map(Db::Sqlite),
            Location::Postgres { url, .. } => PgStore::connect(url, Duration::from_secs(10))
                .map(|p| Db::Postgres(Box::new(p)))
                .map_err(|e| fail(e.to_string())),
        }
    }

    /// Which database.
    pub fn kind(&self) -> Kind {
        match self {
            Db::Sqlite(_) => Kind::Sqlite,
            Db::Postgres(_) => Kind::Postgres,
        }
    }

    /// Begin a transaction (rolled back if dropped without [`Tx::commit`]).
    pub fn transaction(&mut self) -> Result<Tx<'_>, DbError> {
        Ok(match self {
            Db::Sqlite(conn) => Tx::Sqlite(conn.transaction()?),
            Db::Postgres(store) => {
                // A lost connection is found by the `BEGIN` at the latest: made again
                // and begun once more.
                pg_run_reconnecting(store, "BEGIN", args![], &mut |_| Ok(()))?;
                Tx::Postgres(PgTx { store, done: false })
            }
        })
    }
}

/// A transaction on the store.
pub enum Tx<'c> {
    /// On SQLite.
    Sqlite(rusqlite::Transaction<'c>),
    /// On PostgreSQL.
    Postgres(PgTx<'c>),
}

/// A transaction on PostgreSQL: begun on the connection with `BEGIN` (so that
/// beginning can connect again when the connection was lost), rolled back if dropped
/// unfinished.
pub struct PgTx<'c> {
    store: &'c mut PgStore,
    done: bool,
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let store = &mut *self.store;
            let _ = off_runtime(|| store.client.batch_execute("ROLLBACK"));
        }
    }
}

impl Tx<'_> {
    /// Make it durable.
    pub fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(tx) => tx.commit()?,
            Tx::Postgres(mut t) => {
                let store = &mut *t.store;
                off_runtime(|| store.client.batch_execute("COMMIT"))?;
                t.done = true;
            }
        }
        Ok(())
    }
}

/// One row of a result.
pub enum Row<'r> {
    /// From SQLite.
    Sqlite(&'r rusqlite::Row<'r>),
    /// From PostgreSQL.
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `i` as `T`.
    pub fn get<T: FromColumn>(&self, i: usize) -> Result<T, DbError> {
        let v = match self {
            Row::Sqlite(r) => value::sqlite_column(r, i)?,
            Row::Postgres(r) => value::pg_column(r, i)?,
        };
        T::from_column(v, i)
    }
}

/// Running statements, on a connection or in a transaction.
pub trait Exec {
    /// Which database.
    fn kind(&self) -> Kind;

    /// Run `sql` with `params`, calling `each` for every row; rows changed (or read).
    fn run(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<u64, DbError>;

    /// Run a statement; rows changed.
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        self.run(sql, params, &mut |_| Ok(()))
    }

    /// Every row, mapped.
    fn query<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError>
    where
        Self: Sized,
    {
        let mut out = Vec::new();
        self.run(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, mapped, if there is one.
    fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError>
    where
        Self: Sized,
    {
        let mut f = Some(f);
        let mut out = None;
        self.run(sql, params, &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, mapped; [`DbError::NoRows`] when there is none.
    fn query_row<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError>
    where
        Self: Sized,
    {
        self.query_opt(sql, params, f)?.ok_or(DbError::NoRows)
    }
}

impl Exec for Db {
    fn kind(&self) -> Kind {
        Db::kind(self)
    }

    fn run(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(conn) => conn.run(sql, params, each),
            Db::Postgres(store) => store.run(sql, params, each),
        }
    }
}

impl Exec for rusqlite::Connection {
    fn kind(&self) -> Kind {
        Kind::Sqlite
    }

    fn run(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<u64, DbError> {
        sqlite_run(self, sql, params, each)
    }
}

impl Exec for PgStore {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }

    fn run(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<u64, DbError> {
        pg_run_reconnecting(self, sql, params, each)
    }
}

impl Exec for Tx<'_> {
    fn kind(&self) -> Kind {
        match self {
            Tx::Sqlite(_) => Kind::Sqlite,
            Tx::Postgres(_) => Kind::Postgres,
        }
    }

    fn run(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<u64, DbError> {
        match self {
            Tx::Sqlite(tx) => sqlite_run(tx, sql, params, each),
            Tx::Postgres(t) => {
                let (client, statements) = t.store.parts();
                pg_run(client, statements, sql, params, each)
            }
        }
    }
}

fn sqlite_run(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[&dyn Param],
    each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
) -> Result<u64, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let bound: Vec<value::Sqlite<'_>> = params.iter().map(|p| value::Sqlite(*p)).collect();
    let refs: Vec<&dyn rusqlite::ToSql> = bound.iter().map(|b| b as _).collect();
    if stmt.column_count() == 0 {
        return Ok(stmt.execute(&refs[..])? as u64);
    }
    let mut rows = stmt.query(&refs[..])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        each(&Row::Sqlite(r))?;
        n += 1;
    }
    Ok(n)
}

/// The rows of a query, or how many rows a statement changed.
type Ran = Result<Vec<postgres::Row>, u64>;

/// Run one statement on `client` (preparing it once per connection).
fn pg_statement(
    client: &mut (impl GenericClient + Send),
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    bound: &[value::Postgres<'_>],
) -> Result<Ran, postgres::Error> {
    let stmt = match statements.get(sql) {
        Some(s) => s.clone(),
        None => {
            let s = client.prepare(&dollars(sql))?;
            statements.insert(sql.to_owned(), s.clone());
            s
        }
    };
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = bound.iter().map(|b| b as _).collect();
    Ok(if stmt.columns().is_empty() {
        Err(client.execute(&stmt, &refs)?)
    } else {
        Ok(client.query(&stmt, &refs)?)
    })
}

/// Hand each row to `each`; rows read or changed.
fn rows_to(
    ran: Ran,
    each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
) -> Result<u64, DbError> {
    match ran {
        Err(changed) => Ok(changed),
        Ok(rows) => {
            for r in &rows {
                each(&Row::Postgres(r))?;
            }
            Ok(rows.len() as u64)
        }
    }
}

/// A statement in a transaction (a lost connection fails it: the caller retries the
/// whole transaction).
fn pg_run(
    client: &mut (impl GenericClient + Send),
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    params: &[&dyn Param],
    each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
) -> Result<u64, DbError> {
    let bound: Vec<value::Postgres<'_>> =
        params.iter().map(|p| value::Postgres(p.value())).collect();
    let ran = off_runtime(|| pg_statement(client, statements, sql, &bound))?;
    rows_to(ran, each)
}

/// A statement on its own: a connection found lost (the server restarted, failed over
/// or ended the session) is made again and the statement run once more.
fn pg_run_reconnecting(
    store: &mut PgStore,
    sql: &str,
    params: &[&dyn Param],
    each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
) -> Result<u64, DbError> {
    let bound: Vec<value::Postgres<'_>> =
        params.iter().map(|p| value::Postgres(p.value())).collect();
    let ran = off_runtime(|| -> Result<Ran, DbError> {
        store.reconnect_if_closed()?;
        let (client, statements) = store.parts();
        match pg_statement(client, statements, sql, &bound) {
            Err(_) if store.client.is_closed() => {
                store.reconnect_if_closed()?;
                let (client, statements) = store.parts();
                Ok(pg_statement(client, statements, sql, &bound)?)
            }
            other => Ok(other?),
        }
    })?;
    rows_to(ran, each)
}

/// Run `f`, which blocks on the synchronous PostgreSQL client, outside any async
/// runtime: inline on the control plane's own threads, on a scoped thread when called
/// from a runtime's thread (the HTTP API, start-up under a test's runtime), where the
/// client's own runtime could not block.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `?1`-style placeholders as PostgreSQL's `$1` (outside quoted text).
fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollars("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
    }

    #[test]
    fn sqlite_round_trips_every_value_kind() {
        let mut db = Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.execute(
            "CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d TEXT)",
            args![],
        )
        .unwrap();
        let none: Option<&str> = None;
        db.execute(
            "INSERT INTO t (a, b, c, d) VALUES (?1, ?2, ?3, ?4)",
            args![7u64, "x", vec![1u8, 2], none],
        )
        .unwrap();
        let row = db
            .query_row("SELECT a, b, c, d FROM t", args![], |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<Vec<u8>>(2)?,
                    r.get::<Option<String>>(3)?,
                ))
            })
            .unwrap();
        assert_eq!(row, (7, "x".into(), vec![1, 2], None));
        assert!(matches!(
            db.query_row("SELECT b FROM t", args![], |r| r.get::<i64>(0)),
            Err(DbError::Column(0, _))
        ));
        assert!(matches!(
            db.query_row("SELECT a FROM t WHERE a = 8", args![], |r| r.get::<i64>(0)),
            Err(DbError::NoRows)
        ));
    }
}
