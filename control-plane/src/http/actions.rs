//! Actions both APIs offer: disconnecting connections and revoking a user's tokens.
//!
//! Owns doing them (engine, revocation list, audit log) for the admin API and the
//! server API's user routes alike. Does not own authorising them (each API checks its
//! own credentials).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::{error, overloaded};
use super::state::HttpState;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use std::sync::Arc;
use switchboard_engine::control::{AdminOp, Target};

/// Close the target's connections (4009) and record it as `actor`'s action; how many
/// closed. Shared by the admin API and the server API.
pub async fn disconnect_target(
    s: &HttpState,
    actor: &str,
    target: Target,
    reason: String,
    reconnect: bool,
    spread_ms: u32,
) -> Result<usize, Response> {
    let only = match &target {
        Target::Client(c) => Some(c.shard),
        _ => None,
    };
    let reason_arc: Arc<str> = Arc::from(reason.as_str());
    let counts = s
        .engine
        .admin(only, |done| AdminOp::Disconnect {
            who: target.clone(),
            reason: reason_arc.clone(),
            reconnect,
            spread_ms,
            done,
        })
        .await;
    let (name, target_text) = match &target {
        Target::Client(c) => ("connection", Some(c.to_string())),
        Target::User(u) => ("user", Some(u.to_string())),
        Target::All => ("all", None),
    };
    let n: usize = counts.as_ref().map_or(0, |c| c.iter().sum());
    let detail = json!({"reason": reason, "reconnect": reconnect, "spread_ms": spread_ms, "disconnected": n});
    let result = if counts.is_ok() { "ok" } else { "overloaded" };
    let action = format!("disconnect.{name}");
    let _ = s
        .audit
        .record(actor, &action, target_text.as_deref(), result, &detail);
    counts.map(|_| n).map_err(|_| overloaded())
}

/// Revoke `user`'s tokens issued before now (stored, honoured by the auth workers and
/// the shards) and close its connections (4011), recorded as `actor`'s action; the
/// revocation time and how many connections closed. Shared by the admin API and the
/// server API.
pub async fn revoke_user(s: &HttpState, actor: &str, user: &str) -> Result<(u64, usize), Response> {
    let at_ms = crate::clock::now_ms();
    let audit = s.audit.clone();
    let owned = user.to_string();
    let saved = tokio::task::spawn_blocking(move || audit.save_revocation(&owned, at_ms))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = saved {
        let _ = s.audit.record(actor, "revoke", Some(user), &e, &json!({}));
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e,
        ));
    }
    s.revocations.revoke(user, at_ms);
    let arc: Arc<str> = Arc::from(user);
    let closed = s
        .engine
        .admin(None, |done| AdminOp::Revoke {
            user: arc.clone(),
            before_ms: at_ms,
            done,
        })
        .await;
    let n: usize = closed.as_ref().map_or(0, |c| c.iter().sum());
    let result = if closed.is_ok() { "ok" } else { "overloaded" };
    let _ = s.audit.record(
        actor,
        "revoke",
        Some(user),
        result,
        &json!({"revoked_at": at_ms, "disconnected": n}),
    );
    closed.map(|_| (at_ms, n)).map_err(|_| overloaded())
}
