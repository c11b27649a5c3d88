//! The audit log: every admin action (who, what, on what, when, with which result),
//! stored in the store file and queryable, and mirrored to the `security` log target;
//! and the token revocations the admin API makes, kept across restarts.
//!
//! Owns the `audit` and `revocations` tables (its own SQLite connection behind a mutex:
//! admin actions are rare and each is one short statement). Does not own who may act
//! (the admin routes check the admin token first).

use std::sync::Mutex;

use rusqlite::{params, Connection};
use serde::Serialize;
use serde_json::Value;

use crate::clock::now_ms;

/// One admin action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Its id (rising).
    pub id: u64,
    /// When, Unix milliseconds.
    pub at: u64,
    /// Who: the admin token's `sub`.
    pub actor: String,
    /// What: `rate_limits.replace`, `rate_limits.add`, `rate_limits.remove`, …
    pub action: String,
    /// On what (a user, a connection, a rule), when it applies.
    pub target: Option<String>,
    /// `ok`, or what went wrong.
    pub result: String,
    /// The request's details.
    pub detail: Value,
}

/// The audit log.
#[derive(Debug)]
pub struct Audit {
    conn: Mutex<Connection>,
}

impl Audit {
    /// Open the log in the store at `path` (prepared by [`crate::store::open`]).
    pub fn open(path: &std::path::Path) -> Result<Audit, crate::Error> {
        Ok(Audit {
            conn: Mutex::new(crate::worker::open_store(path, "the audit log")?),
        })
    }

    /// Record an action; a failure to store it is logged (the action already
    /// happened) and returned.
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        result: &str,
        detail: &Value,
    ) -> Result<(), String> {
        tracing::info!(
            target: "security",
            actor,
            action,
            target = target.unwrap_or(""),
            result,
            "admin action"
        );
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO audit (at_ms, actor, action, target, result, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                now_ms() as i64,
                actor,
                action,
                target,
                result,
                detail.to_string()
            ],
        )
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(target: "security", action, "cannot store an audit entry: {e}");
            e.to_string()
        })
    }

    /// Keep a revocation (a later one for the same user replaces it).
    pub fn save_revocation(&self, user: &str, at_ms: u64) -> Result<(), String> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO revocations (user, at_ms) VALUES (?1, ?2)
             ON CONFLICT (user) DO UPDATE SET at_ms = excluded.at_ms",
            params![user, at_ms as i64],
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Every revocation kept.
    pub fn revocations(&self) -> Result<Vec<(String, u64)>, String> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut q = conn
            .prepare("SELECT user, at_ms FROM revocations")
            .map_err(|e| e.to_string())?;
        let rows = q
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    /// The newest entries first, optionally of one actor or action.
    pub fn list(
        &self,
        limit: u32,
        actor: Option<&str>,
        action: Option<&str>,
    ) -> Result<Vec<AuditEntry>, String> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut q = conn
            .prepare_cached(
                "SELECT id, at_ms, actor, action, target, result, detail FROM audit
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(|e| e.to_string())?;
        let rows = q
            .query_map(params![actor, action, limit.clamp(1, 1000) as i64], |r| {
                let detail: String = r.get(6)?;
                Ok(AuditEntry {
                    id: r.get::<_, i64>(0)? as u64,
                    at: r.get::<_, i64>(1)? as u64,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    result: r.get(5)?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                })
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }
}
