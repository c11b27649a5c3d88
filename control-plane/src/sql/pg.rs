//! The connection to a PostgreSQL store: connecting (errors name the server, never the
//! password, and say whether it could not be reached or refused the login), its
//! prepared-statement cache, and errors in plain words.
//!
//! Owns the connection only; the schema, the journal and every other use of it are
//! the store's (`crate::store::postgres`) and the workers'.

use std::time::Duration;

use postgres::{Client, NoTls};

/// Why the PostgreSQL store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse.
    #[error("store.postgres_url is not a PostgreSQL URL: {0}")]
    Url(String),
    /// The server could not be reached, or refused the connection or the login.
    #[error("PostgreSQL at {target}: {message}")]
    Connect {
        /// `host:port/database` (never the password).
        target: String,
        /// What the server or the network said.
        message: String,
    },
    /// The database holds a schema written by a later build (see
    /// `crate::store::postgres::migrate`).
    #[error(
        "PostgreSQL at {target}: schema version {found} is newer than this build's {ours} \
         (written by a later Switchboard; run that one, or use another database)"
    )]
    Newer {
        /// `host:port/database`.
        target: String,
        /// The database's version.
        found: i32,
        /// This build's.
        ours: i32,
    },
    /// A statement failed.
    #[error("PostgreSQL at {target}: {message}")]
    Query {
        /// `host:port/database`.
        target: String,
        /// What failed.
        message: String,
    },
}

/// A connection to the store's database, with the target named for errors and the
/// statements it prepared (each once: a prepare is a round trip).
pub struct PgStore {
    /// The client.
    pub client: Client,
    target: String,
    statements: std::collections::HashMap<String, postgres::Statement>,
    /// How it connected, to connect again (holds the password: never shown).
    cfg: postgres::Config,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// `host:port/database` of a configuration, for messages.
pub fn target_of(cfg: &postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", cfg.get_dbname().unwrap_or("postgres"))
}

impl PgStore {
    /// Connect to `url` (`postgres://user:password@host:port/database`), giving up
    /// after `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<PgStore, PgError> {
        let mut cfg: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            // The parser's message may quote the URL: say what is wrong, not the secret.
            let text = e.to_string();
            PgError::Url(if text.contains(url) {
                "malformed".into()
            } else {
                text
            })
        })?;
        cfg.connect_timeout(timeout);
        let target = target_of(&cfg);
        let client =
            crate::sql::off_runtime(|| cfg.connect(NoTls)).map_err(|e| PgError::Connect {
                target: target.clone(),
                message: describe(&e),
            })?;
        Ok(PgStore {
            client,
            target,
            statements: Default::default(),
            cfg,
        })
    }

    /// Connect again if the connection was lost (the server restarted, failed over, or
    /// ended this session); whether it did. Statements are prepared again on the new
    /// connection; session state (advisory locks) is gone.
    pub fn reconnect_if_closed(&mut self) -> Result<bool, PgError> {
        if !self.client.is_closed() {
            return Ok(false);
        }
        let cfg = self.cfg.clone();
        let client =
            crate::sql::off_runtime(|| cfg.connect(NoTls)).map_err(|e| PgError::Connect {
                target: self.target.clone(),
                message: describe(&e),
            })?;
        tracing::info!(store = %self.target, "connected to PostgreSQL again");
        self.client = client;
        self.statements.clear();
        Ok(true)
    }

    /// `sql`, prepared on this connection (once).
    pub fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// [`PgStore::prepared`] for a text built at run time.
    pub fn prepared_owned(&mut self, sql: String) -> Result<postgres::Statement, postgres::Error> {
        self.prepared(&sql)
    }

    /// The client and the statements prepared on it, borrowed apart (a transaction
    /// holds the one and fills the other).
    pub(crate) fn parts(
        &mut self,
    ) -> (
        &mut Client,
        &mut std::collections::HashMap<String, postgres::Statement>,
    ) {
        (&mut self.client, &mut self.statements)
    }

    /// `host:port/database`.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// A PostgreSQL error in plain words: the server's message when it sent one, else the
/// client's (connection refused, timed out).
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}
