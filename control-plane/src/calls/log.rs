//! The call log (the `calls` table): how long a call lasted, and the log the admin API
//! reads.
//!
//! Owns these reads. Does not own writing the log (`super::book`, as calls move).

use rusqlite::{params, Connection};

use super::state::LogEntry;

pub(super) fn logged_duration(conn: &Connection, id: u64) -> Option<u64> {
    conn.query_row(
        "SELECT ended_ms - answered_ms FROM calls WHERE id = ?1",
        params![id as i64],
        |r| r.get::<_, Option<i64>>(0),
    )
    .ok()
    .flatten()
    .map(|d| d.max(0) as u64)
}

pub(super) fn read(
    conn: &Connection,
    user: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<LogEntry>> {
    let mut q = conn.prepare_cached(
        "SELECT id, caller, callee, room, media, created_ms, answered_ms, ended_ms,
                    outcome, reason, participants
             FROM calls
             WHERE ?1 IS NULL OR caller = ?1 OR callee = ?1
                OR EXISTS (SELECT 1 FROM json_each(calls.participants) WHERE value = ?1)
             ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = q.query_map(params![user, limit.clamp(1, 1000) as i64], |r| {
        let opt = |i: usize| -> rusqlite::Result<Option<u64>> {
            Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64))
        };
        let (answered, ended) = (opt(6)?, opt(7)?);
        let participants: Option<String> = r.get(10)?;
        Ok(LogEntry {
            id: r.get::<_, i64>(0)? as u64,
            caller: r.get(1)?,
            callee: r.get(2)?,
            room: r.get(3)?,
            media: r.get(4)?,
            created: r.get::<_, i64>(5)? as u64,
            answered,
            ended,
            duration_ms: answered.zip(ended).map(|(a, e)| e.saturating_sub(a)),
            outcome: r.get(8)?,
            reason: r.get(9)?,
            participants: participants
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or_default(),
        })
    })?;
    rows.collect()
}
