//! The cluster bus: admin actions an operator takes on one node, carried out on every
//! node.
//!
//! Owns the actions that cross nodes ([`ClusterAction`]: disconnecting a user or
//! everyone, revoking a user's tokens), their channel `{P}:control` (Redis pub/sub),
//! and the revocations kept in Redis (`{P}:revoked`, user → Unix ms, only ever
//! raised): pub/sub is the fast path, the hash is what a node that was away — Redis
//! down, the node restarting, a message missed — reads when its link comes back, so a
//! revocation reaches every node however the network behaved. Actions taken while
//! Redis is away wait in a bounded queue (10,000; a disconnect older than a minute is
//! dropped as stale when the link returns, a revocation never is). Does not own doing
//! an action on a node (`crate::admin_ops`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_engine::control::Target;
use switchboard_engine::EngineHandle;

use super::ClusterState;
use crate::admin_ops;
use crate::audit::Audit;
use crate::auth::Revocations;

/// Most actions waiting for Redis.
const MAX_PENDING: usize = 10_000;
/// A disconnect or broadcast that waited longer than this for Redis is not sent
/// (stale).
const STALE_DISCONNECT_MS: u64 = 60_000;

/// An admin action every node carries out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ClusterAction {
    /// Close a user's connections, or every connection (4009).
    Disconnect {
        /// The user (`None` with `all`).
        user: Option<String>,
        /// Every connection.
        all: bool,
        /// The close reason.
        reason: String,
        /// Whether clients should reconnect.
        reconnect: bool,
        /// Spread their reconnects over this long.
        spread_ms: u32,
    },
    /// Revoke a user's tokens issued before `at_ms` and close its connections (4011).
    Revoke {
        /// The user.
        user: String,
        /// Tokens issued before this (Unix ms) are refused.
        at_ms: u64,
    },
    /// Maintenance mode on or off (new connections refused with 4010).
    Maintenance {
        /// On or off.
        on: bool,
        /// What clients are told.
        message: String,
        /// Their retry hint.
        retry_after_ms: u32,
        /// Newer wins (the origin's clock, Unix ms, made unique).
        version: u64,
    },
    /// A push to every connection (`POST /api/broadcast`; not stored, not replayed to
    /// a node that was away).
    Broadcast {
        /// The push's data.
        data: serde_json::Value,
    },
    /// The rate limits in force: the whole table.
    RateLimits {
        /// The rules.
        rules: Vec<switchboard_engine::limits::LimitRule>,
        /// Newer wins.
        version: u64,
    },
}

/// An action as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Envelope {
    /// The node where the operator acted.
    origin: String,
    /// Who acted there.
    actor: String,
    /// When it was taken, Unix ms.
    sent_ms: u64,
    #[serde(flatten)]
    action: ClusterAction,
}

/// What carrying out remote actions needs.
#[derive(Debug, Clone)]
pub struct Hands {
    /// The shards.
    pub engine: Arc<EngineHandle>,
    /// The audit log (and stored revocations).
    pub audit: Arc<Audit>,
    /// Revoked users, honoured by the auth workers.
    pub revocations: Arc<Revocations>,
    /// The maintenance mode in force.
    pub maintenance: Arc<admin_ops::MaintenanceSlot>,
}

/// An action to tell the other nodes.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) actor: String,
    pub(super) action: ClusterAction,
}

/// Keys and channel of the bus.
#[derive(Debug, Clone)]
pub(super) struct BusKeys {
    control: String,
    revoked: String,
    state: String,
}

impl BusKeys {
    pub(super) fn new(prefix: &str) -> BusKeys {
        BusKeys {
            control: format!("{{{prefix}}}:control"),
            revoked: format!("{{{prefix}}}:revoked"),
            state: format!("{{{prefix}}}:state"),
        }
    }
}

/// Raise a user's revocation time in the hash (never lower it) and publish.
const REVOKE_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('PUBLISH', KEYS[2], ARGV[3])
";

/// Keep the newest version of a cluster-wide setting (field `ARGV[1]`, version
/// `ARGV[2]`, the action's JSON `ARGV[3]`) and publish it.
const STATE_SCRIPT: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1] .. ':v')
if not v or tonumber(v) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3], ARGV[1] .. ':v', ARGV[2])
end
return redis.call('PUBLISH', KEYS[2], ARGV[3])
";

/// The bus task: subscribe to the control channel (reconnecting with backoff), catch
/// up on revocations at every (re)connect, carry out other nodes' actions, and send
/// this node's.
pub(super) async fn run(
    source: super::source::Source,
    keys: BusKeys,
    state: Arc<ClusterState>,
    hands: Hands,
    mut outbox: tokio::sync::mpsc::Receiver<Outgoing>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let scripts = Scripts {
        revoke: redis::Script::new(REVOKE_SCRIPT),
        state: redis::Script::new(STATE_SCRIPT),
    };
    let mut pending: VecDeque<Envelope> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let linked = async {
            let (mut sub, messages) = source.subscriber().await?.split();
            // The control channel is not sharded: every node hears it, also on a
            // Redis Cluster.
            sub.subscribe(vec![keys.control.clone()], false).await?;
            let conn = source.link().await?;
            Ok::<_, redis::RedisError>(((sub, messages), conn))
        }
        .await;
        let (sub, mut conn) = match linked {
            Ok(l) => l,
            Err(_) => {
                // The heartbeat reports Redis down; wait for it, or for new actions.
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                let deadline = tokio::time::sleep(wait);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        out = outbox.recv() => match out {
                            Some(o) => queue(&mut pending, &state, o),
                            None => return,
                        },
                        _ = stop.changed() => return,
                    }
                }
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        catch_up(&mut conn, &keys, &hands, &state).await;
        state.bus_linked.store(true, Ordering::Relaxed);
        // The subscribing half stays alive as long as the messages are read.
        let (_sub, mut messages) = sub;
        // What waited goes out first, in order.
        if !flush(&mut pending, &mut conn, &keys, &scripts).await {
            state.bus_linked.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(m) => {
                        let Ok(e) = serde_json::from_slice::<Envelope>(m.get_payload_bytes()) else {
                            tracing::warn!("cluster bus: a message that is not an action, ignored");
                            continue;
                        };
                        if e.origin != state.node_id {
                            carry_out(&hands, &state, e).await;
                        }
                    }
                    None => {
                        // The subscription's connection ended: link again.
                        state.bus_linked.store(false, Ordering::Relaxed);
                        break;
                    }
                },
                out = outbox.recv() => match out {
                    Some(o) => {
                        queue(&mut pending, &state, o);
                        if !flush(&mut pending, &mut conn, &keys, &scripts).await {
                            // Link again (after a failover, to the new master).
                            state.bus_linked.store(false, Ordering::Relaxed);
                            break;
                        }
                    }
                    None => return,
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Send what waits, in order; false (and the rest kept) when a send fails.
async fn flush(
    pending: &mut VecDeque<Envelope>,
    conn: &mut super::conn::Link,
    keys: &BusKeys,
    scripts: &Scripts,
) -> bool {
    while let Some(e) = pending.pop_front() {
        if let Err(err) = send(conn, keys, scripts, &e).await {
            tracing::warn!("cluster bus: sending failed, will retry: {err}");
            pending.push_front(e);
            return false;
        }
    }
    true
}

/// Wrap an action for the wire and keep it in order, bounded (the oldest disconnects
/// go first when full).
fn queue(pending: &mut VecDeque<Envelope>, state: &ClusterState, o: Outgoing) {
    if pending.len() >= MAX_PENDING {
        let drop_at = pending
            .iter()
            .position(|e| matches!(e.action, ClusterAction::Disconnect { .. }))
            .unwrap_or(0);
        pending.remove(drop_at);
        state.bus_dropped.fetch_add(1, Ordering::Relaxed);
    }
    pending.push_back(Envelope {
        origin: state.node_id.clone(),
        actor: o.actor,
        sent_ms: crate::clock::now_ms(),
        action: o.action,
    });
}

/// The bus's scripts.
struct Scripts {
    revoke: redis::Script,
    state: redis::Script,
}

/// Publish one action (a revocation also raises its entry in the hash, a setting
/// replaces the stored one if newer, atomically).
async fn send(
    conn: &mut super::conn::Link,
    keys: &BusKeys,
    scripts: &Scripts,
    e: &Envelope,
) -> redis::RedisResult<()> {
    let body = serde_json::to_string(e).expect("serialising to memory cannot fail");
    match &e.action {
        ClusterAction::Maintenance { version, .. } | ClusterAction::RateLimits { version, .. } => {
            let field = if matches!(e.action, ClusterAction::Maintenance { .. }) {
                "maintenance"
            } else {
                "rate_limits"
            };
            let _: i64 = scripts
                .state
                .key(&keys.state)
                .key(&keys.control)
                .arg(field)
                .arg(*version)
                .arg(body)
                .invoke_async(conn)
                .await?;
        }
        ClusterAction::Revoke { user, at_ms } => {
            let _: i64 = scripts
                .revoke
                .key(&keys.revoked)
                .key(&keys.control)
                .arg(user)
                .arg(*at_ms)
                .arg(body)
                .invoke_async(conn)
                .await?;
        }
        ClusterAction::Disconnect { .. } | ClusterAction::Broadcast { .. } => {
            if crate::clock::now_ms().saturating_sub(e.sent_ms) > STALE_DISCONNECT_MS {
                tracing::warn!("cluster bus: an action waited too long for Redis, not sent");
                return Ok(());
            }
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&keys.control)
                .arg(body)
                .query_async(conn)
                .await?;
        }
    }
    Ok(())
}

/// Every revocation and cluster-wide setting in Redis newer than this node knows:
/// carried out here (what a node that was away missed).
async fn catch_up(
    conn: &mut super::conn::Link,
    keys: &BusKeys,
    hands: &Hands,
    state: &ClusterState,
) {
    let revoked: Vec<(String, u64)> = match redis::cmd("HGETALL")
        .arg(&keys.revoked)
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        Err(e) => return tracing::warn!("cluster bus: cannot read revocations: {e}"),
    };
    for (user, at_ms) in revoked {
        let e = Envelope {
            origin: "redis".into(),
            actor: "cluster".into(),
            sent_ms: at_ms,
            action: ClusterAction::Revoke { user, at_ms },
        };
        carry_out(hands, state, e).await;
    }
    let settings: Vec<(String, String)> = match redis::cmd("HGETALL")
        .arg(&keys.state)
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        Err(e) => return tracing::warn!("cluster bus: cannot read cluster settings: {e}"),
    };
    for (field, body) in settings {
        if field.ends_with(":v") {
            continue;
        }
        match serde_json::from_str::<Envelope>(&body) {
            Ok(e) => carry_out(hands, state, e).await,
            Err(err) => tracing::warn!("cluster bus: setting {field} does not read: {err}"),
        }
    }
}

/// Carry out another node's action here, recorded in this node's audit log as
/// `<actor>@<origin>`.
async fn carry_out(hands: &Hands, state: &ClusterState, e: Envelope) {
    let actor = format!("{}@{}", e.actor, e.origin);
    let done = match e.action {
        ClusterAction::Maintenance {
            on,
            message,
            retry_after_ms,
            version,
        } => {
            if !state.adopt(&state.maintenance_version, version) {
                return; // This node has it, or newer.
            }
            let mode = on.then(|| {
                Arc::new(switchboard_engine::control::Maintenance {
                    message,
                    retry_after_ms,
                })
            });
            admin_ops::maintenance(
                &hands.engine,
                &hands.audit,
                &hands.maintenance,
                &actor,
                mode,
            )
            .await
            .map(|_| ())
        }
        ClusterAction::Broadcast { data } => admin_ops::broadcast(&hands.engine, &data),
        ClusterAction::RateLimits { rules, version } => {
            if !state.adopt(&state.limits_version, version) {
                return;
            }
            let detail = serde_json::json!({ "rules": rules });
            if let Err(err) = admin_ops::rate_limits(
                &hands.engine,
                &hands.audit,
                &actor,
                "rate_limits.replace",
                None,
                rules,
                &detail,
            )
            .await
            {
                tracing::warn!("cluster bus: another node's rate limits do not apply here: {err}");
            }
            Ok(())
        }
        ClusterAction::Disconnect {
            user,
            all,
            reason,
            reconnect,
            spread_ms,
        } => {
            let target = match (user, all) {
                (Some(u), false) => Target::User(Arc::from(u.as_str())),
                (None, true) => Target::All,
                _ => return tracing::warn!("cluster bus: a disconnect without a target, ignored"),
            };
            admin_ops::disconnect(
                &hands.engine,
                &hands.audit,
                &actor,
                target,
                &reason,
                reconnect,
                spread_ms,
            )
            .await
            .map(|_| ())
        }
        ClusterAction::Revoke { user, at_ms } => {
            if hands
                .revocations
                .revoked_at(&user)
                .is_some_and(|t| t >= at_ms)
            {
                return; // Known already.
            }
            admin_ops::revoke(
                &hands.engine,
                &hands.audit,
                &hands.revocations,
                &actor,
                &user,
                at_ms,
            )
            .await
            .map(|_| ())
        }
    };
    if let Err(err) = done {
        tracing::warn!("cluster bus: another node's action failed here: {err:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_travel_as_tagged_json() {
        let e = Envelope {
            origin: "n1".into(),
            actor: "ops".into(),
            sent_ms: 5,
            action: ClusterAction::Revoke {
                user: "eve".into(),
                at_ms: 5,
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"origin":"n1","actor":"ops","sent_ms":5,"action":"revoke","user":"eve","at_ms":5}"#
        );
        let keys = BusKeys::new("sb");
        assert_eq!(keys.control, "{sb}:control");
        assert_eq!(keys.revoked, "{sb}:revoked");
    }
}
