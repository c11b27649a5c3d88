//! The audit log: every admin action (who, what, on what, when, with which result),
//! stored in the store file and queryable, and mirrored to the `security` log target;
//! and the token revocations the admin API makes, kept across restarts.
//!
//! Owns the `audit` and `revocations` tables (its own store connection behind a mutex:
//! admin actions are rare and each is one short statement). Does not own who may act
//! (the admin routes check the admin token first).

use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::clock::now_ms;
use crate::sql::{args, Db, Exec, Location};

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
    conn: Mutex<Db>,
}

impl Audit {
    /// Open the log in the store at `at` (prepared by [`crate::store::open`]).
    pub fn open(at: &Location) -> Result<Audit, crate::Error> {
        Ok(Audit {
            conn: Mutex::new(Db::open(at, "the audit log")?),
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
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO audit (at_ms, actor, action, target, result, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![now_ms(), actor, action, target, result, detail.to_string()],
        )
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(target: "security", action, "cannot store an audit entry: {e}");
            e.to_string()
        })
    }

    /// Keep a revocation (a later one for the same user replaces it).
    pub fn save_revocation(&self, user: &str, at_ms: u64) -> Result<(), String> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO revocations (\"user\", at_ms) VALUES (?1, ?2)
             ON CONFLICT (\"user\") DO UPDATE SET at_ms = excluded.at_ms",
            args![user, at_ms],
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Every revocation kept.
    pub fn revocations(&self) -> Result<Vec<(String, u64)>, String> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.query("SELECT \"user\", at_ms FROM revocations", args![], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| e.to_string())
    }

    /// The newest entries first, optionally of one actor or action.
    pub fn list(
        &self,
        limit: u32,
        actor: Option<&str>,
        action: Option<&str>,
    ) -> Result<Vec<AuditEntry>, String> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // `CAST` so PostgreSQL knows the type of a parameter that may be NULL.
        conn.query(
            "SELECT id, at_ms, actor, action, target, result, detail FROM audit
             WHERE (CAST(?1 AS TEXT) IS NULL OR actor = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR action = ?2)
             ORDER BY id DESC LIMIT ?3",
            args![actor, action, limit.clamp(1, 1000)],
            |r| {
                let detail: String = r.get(6)?;
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    result: r.get(5)?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                })
            },
        )
        .map_err(|e| e.to_string())
    }
}
