//! The call log (the `calls` table): how long a call lasted, and the log the admin API
//! reads.
//!
//! Owns these reads. Does not own writing the log (`super::book`, as calls move).

use crate::sql::{args, Db, DbError, Exec, Kind};

use super::state::LogEntry;

pub(super) fn logged_duration(conn: &mut Db, id: u64) -> Option<u64> {
    conn.query_row(
        "SELECT ended_ms - answered_ms FROM calls WHERE id = ?1",
        args![id],
        |r| r.get::<Option<i64>>(0),
    )
    .ok()
    .flatten()
    .map(|d| d.max(0) as u64)
}

pub(super) fn read(
    conn: &mut Db,
    user: Option<&str>,
    limit: u32,
) -> Result<Vec<LogEntry>, DbError> {
    // The participants are a JSON array of user names.
    let sql = match conn.kind() {
        Kind::Sqlite => {
            "SELECT id, caller, callee, room, media, created_ms, answered_ms, ended_ms,
                    outcome, reason, participants
             FROM calls
             WHERE ?1 IS NULL OR caller = ?1 OR callee = ?1
                OR EXISTS (SELECT 1 FROM json_each(calls.participants) WHERE value = ?1)
             ORDER BY id DESC LIMIT ?2"
        }
        Kind::Postgres => {
            "SELECT id, caller, callee, room, media, created_ms, answered_ms, ended_ms,
                    outcome, reason, participants
             FROM calls
             WHERE CAST(?1 AS TEXT) IS NULL OR caller = ?1 OR callee = ?1
                OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(calls.participants::jsonb)
                           AS p (value) WHERE value = ?1)
             ORDER BY id DESC LIMIT ?2"
        }
    };
    conn.query(sql, args![user, limit.clamp(1, 1000)], |r| {
        let (answered, ended): (Option<u64>, Option<u64>) = (r.get(6)?, r.get(7)?);
        let participants: Option<String> = r.get(10)?;
        Ok(LogEntry {
            id: r.get(0)?,
            caller: r.get(1)?,
            callee: r.get(2)?,
            room: r.get(3)?,
            media: r.get(4)?,
            created: r.get(5)?,
            answered,
            ended,
            duration_ms: answered.zip(ended).map(|(a, e)| e.saturating_sub(a)),
            outcome: r.get(8)?,
            reason: r.get(9)?,
            participants: participants
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or_default(),
        })
    })
}
