//! Admin actions as this node carries them out: disconnecting connections, revoking a
//! user's tokens, maintenance mode, rate limits and broadcasts (the engine, the
//! revocation list, the store, the audit log).
//!
//! Owns doing them, for the HTTP APIs (`crate::http::actions`, which authorise them and
//! tell the other nodes) and for the cluster bus (`crate::cluster`, which applies what
//! another node's operator did). Does not own authorising them or crossing nodes.

use std::sync::Arc;

use serde_json::json;
use switchboard_engine::control::{AdminOp, Maintenance, Target};
use switchboard_engine::limits::LimitRule;
use switchboard_engine::EngineHandle;

use crate::audit::Audit;
use crate::auth::Revocations;

/// Why an action was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// A shard's admin queue was full.
    Overloaded,
    /// The store could not keep a revocation.
    Store(String),
}

/// Close the target's connections (4009) and record it as `actor`'s action; how many
/// closed.
pub async fn disconnect(
    engine: &EngineHandle,
    audit: &Audit,
    actor: &str,
    target: Target,
    reason: &str,
    reconnect: bool,
    spread_ms: u32,
) -> Result<usize, ActionError> {
    let only = match &target {
        Target::Client(c) => Some(c.shard),
        _ => None,
    };
    let reason_arc: Arc<str> = Arc::from(reason);
    let counts = engine
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
    let _ = audit.record(actor, &action, target_text.as_deref(), result, &detail);
    counts.map(|_| n).map_err(|_| ActionError::Overloaded)
}

/// Revoke `user`'s tokens issued before `at_ms` — kept in the store, honoured by the
/// auth workers and the shards — and close its connections (4011), recorded as
/// `actor`'s action; how many connections closed.
pub async fn revoke(
    engine: &EngineHandle,
    audit: &Arc<Audit>,
    revocations: &Revocations,
    actor: &str,
    user: &str,
    at_ms: u64,
) -> Result<usize, ActionError> {
    let store = audit.clone();
    let owned = user.to_string();
    let saved = tokio::task::spawn_blocking(move || store.save_revocation(&owned, at_ms))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = saved {
        let _ = audit.record(actor, "revoke", Some(user), &e, &json!({}));
        return Err(ActionError::Store(e));
    }
    revocations.revoke(user, at_ms);
    let arc: Arc<str> = Arc::from(user);
    let closed = engine
        .admin(None, |done| AdminOp::Revoke {
            user: arc.clone(),
            before_ms: at_ms,
            done,
        })
        .await;
    let n: usize = closed.as_ref().map_or(0, |c| c.iter().sum());
    let result = if closed.is_ok() { "ok" } else { "overloaded" };
    let _ = audit.record(
        actor,
        "revoke",
        Some(user),
        result,
        &json!({"revoked_at": at_ms, "disconnected": n}),
    );
    closed.map(|_| n).map_err(|_| ActionError::Overloaded)
}

/// Where the maintenance mode in force is kept (readiness reads it).
pub type MaintenanceSlot = std::sync::Mutex<Option<Arc<Maintenance>>>;

/// Turn maintenance on (`Some`) or off for this node's shards, recorded as `actor`'s
/// action; how many connections were told.
pub async fn maintenance(
    engine: &EngineHandle,
    audit: &Audit,
    slot: &MaintenanceSlot,
    actor: &str,
    mode: Option<Arc<Maintenance>>,
) -> Result<usize, ActionError> {
    let told = engine
        .admin(None, |done| AdminOp::Maintenance {
            mode: mode.clone(),
            done,
        })
        .await;
    let detail = json!({"on": mode.is_some(), "mode": mode.as_deref()});
    let result = if told.is_ok() { "ok" } else { "overloaded" };
    let _ = audit.record(actor, "maintenance", None, result, &detail);
    let told = told.map_err(|_| ActionError::Overloaded)?;
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    Ok(told.iter().sum())
}

/// Put `rules` in force on this node's shards, recorded as `actor`'s `action` (with
/// `target` and `detail`).
pub async fn rate_limits(
    engine: &Arc<EngineHandle>,
    audit: &Audit,
    actor: &str,
    action: &str,
    target: Option<&str>,
    rules: Vec<LimitRule>,
    detail: &serde_json::Value,
) -> Result<(), switchboard_engine::Error> {
    let shards = engine.clone();
    let applied = tokio::task::spawn_blocking(move || shards.set_limits(rules))
        .await
        .unwrap_or_else(|e| {
            Err(switchboard_engine::Error::Backend {
                backend: "mesh",
                message: e.to_string(),
            })
        });
    let result = match &applied {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let _ = audit.record(actor, action, target, &result, detail);
    applied
}

/// `{"push": "broadcast", "data": …}` to every connection on this node's shards (not
/// stored).
pub fn broadcast(engine: &EngineHandle, data: &serde_json::Value) -> Result<(), ActionError> {
    let frames = switchboard_engine::control::frames(&json!({"push": "broadcast", "data": data}));
    let push = Arc::new(switchboard_engine::control::Push {
        to: switchboard_engine::control::PushTo::All(frames),
        coalesce: None,
    });
    let sender = engine.sender();
    for shard in 0..sender.shards() {
        if sender
            .send(shard, switchboard_engine::ShardMsg::Push(push.clone()))
            .is_err()
        {
            return Err(ActionError::Overloaded);
        }
    }
    Ok(())
}
