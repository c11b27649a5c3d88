//! The admin API (`/admin/*`): what operators do to a running server, behind an admin
//! token ([`super::admin_auth`]), every action audited.
//!
//! Owns the routes: rate limits, audit log, disconnect, maintenance, revocation,
//! connections, health, drain, shutdown, alerts (breakers: [`super::breakers`]). Does not own the actions
//! themselves (the engine applies rate limits; the audit log stores entries).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::actions::disconnect_target;
use super::admin_auth::Admin;
use super::errors::{error, invalid, overloaded};
use super::requests::{admin, admin_body, admin_query};
use super::state::HttpState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use switchboard_engine::control::{self, AdminOp, ConnFilter, ConnView, Maintenance, Target};
use switchboard_engine::limits::LimitRule;

/// The admin routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route(
            "/admin/rate-limits",
            get(list_limits).put(replace_limits).post(add_limit),
        )
        .route("/admin/rate-limits/{index}", delete(remove_limit))
        .route("/admin/audit", get(audit_log))
        .route("/admin/disconnect", post(disconnect))
        .route(
            "/admin/maintenance",
            get(maintenance_state).post(maintenance),
        )
        .route("/admin/revoke", post(revoke))
        .route("/admin/connections", get(connections))
        .route("/admin/connections/{client}", get(connection))
        .route("/admin/health", get(health))
        .route("/admin/nodes", get(nodes))
        .route("/admin/alerts", get(alerts))
        .route("/admin/drain", post(drain))
        .route("/admin/shutdown", post(shutdown))
}

/// Apply `rules` on every shard and record the action.
pub(super) async fn apply(
    s: &Arc<HttpState>,
    who: &Admin,
    action: &str,
    target: Option<String>,
    rules: Vec<LimitRule>,
    detail: Value,
) -> Response {
    let applied = crate::admin_ops::rate_limits(
        &s.engine,
        &s.audit,
        &who.name,
        action,
        target.as_deref(),
        rules.clone(),
        &detail,
    )
    .await;
    match applied {
        Ok(()) => {
            if let Some(c) = &s.cluster {
                // The whole table, so every node ends with the same one.
                c.broadcast(
                    &who.name,
                    crate::cluster::ClusterAction::RateLimits {
                        rules,
                        version: c.next_version(),
                    },
                );
            }
            Json(json!({"ok": true, "rules": s.engine.limits()})).into_response()
        }
        Err(switchboard_engine::Error::Config { key, message }) => invalid(&key, &message),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            &e.to_string(),
        ),
    }
}

/// `GET /admin/rate-limits`: the rules in force.
pub(super) async fn list_limits(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    Json(json!({"rules": s.engine.limits()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RulesBody {
    rules: Vec<LimitRule>,
}

/// `PUT /admin/rate-limits {"rules": [...]}`: replace every rule.
pub(super) async fn replace_limits(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (who, req) = match admin_body::<RulesBody>(&s, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let detail = json!({ "rules": req.rules });
    apply(&s, &who, "rate_limits.replace", None, req.rules, detail).await
}

/// `POST /admin/rate-limits {rule}`: add a rule (it replaces one for the same scope,
/// event and tier).
pub(super) async fn add_limit(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (who, rule) = match admin_body::<LimitRule>(&s, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(p) = rule.problem() {
        return invalid("", &p);
    }
    let mut rules = s.engine.limits();
    rules.retain(|r| (r.scope, r.event, &r.tier) != (rule.scope, rule.event, &rule.tier));
    let detail = json!({ "rule": rule });
    rules.push(rule);
    apply(&s, &who, "rate_limits.add", None, rules, detail).await
}

/// `DELETE /admin/rate-limits/{index}`: remove the rule at `index` of the list.
pub(super) async fn remove_limit(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: Result<axum::extract::Path<usize>, axum::extract::rejection::PathRejection>,
) -> Response {
    let who = match admin(&s, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Ok(axum::extract::Path(index)) = path else {
        return invalid("index", "expected a rule's position in the list (0, 1, …)");
    };
    let mut rules = s.engine.limits();
    if index >= rules.len() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no rule at {index}: there are {}", rules.len()),
        );
    }
    let removed = rules.remove(index);
    let detail = json!({ "index": index, "rule": removed });
    apply(
        &s,
        &who,
        "rate_limits.remove",
        Some(index.to_string()),
        rules,
        detail,
    )
    .await
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

/// `GET /admin/audit[?limit=N&actor=…&action=…]`: the audit log, newest first.
pub(super) async fn audit_log(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match admin_query(&s, &headers, query) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let audit = s.audit.clone();
    let limit = q.limit.unwrap_or(100);
    let listed = tokio::task::spawn_blocking(move || {
        audit.list(limit, q.actor.as_deref(), q.action.as_deref())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match listed {
        Ok(entries) => Json(json!({ "entries": entries })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e),
    }
}

pub(super) fn client_id(
    field: &str,
    s: &str,
) -> Result<switchboard_engine::presence::ClientId, Response> {
    control::parse_client_id(s)
        .ok_or_else(|| invalid(field, "expected a client id (shard.slot.generation)"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectBody {
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default = "yes")]
    reconnect: bool,
    #[serde(default)]
    spread_ms: u32,
}

pub(super) fn yes() -> bool {
    true
}

/// `POST /admin/disconnect {"client" | "user" | "all": true, "reason"?, "reconnect"?,
/// "spread_ms"?}`: close connections with 4009; `spread_ms` spreads their reconnect
/// hints (a drain).
pub(super) async fn disconnect(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (who, req) = match admin_body::<DisconnectBody>(&s, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let target = match (req.client.as_deref(), req.user.as_deref(), req.all) {
        (Some(c), None, false) => match client_id("client", c) {
            Ok(id) => Target::Client(id),
            Err(r) => return r,
        },
        (None, Some(u), false) if !u.is_empty() => Target::User(Arc::from(u)),
        (None, None, true) => Target::All,
        _ => return invalid("", "give exactly one of 'client', 'user' and 'all': true"),
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "disconnected by an operator".into());
    if reason.len() > 120 {
        return invalid("reason", "at most 120 bytes (it goes in a close frame)");
    }
    match disconnect_target(&s, &who.name, target, reason, req.reconnect, req.spread_ms).await {
        Ok(n) => Json(json!({"ok": true, "disconnected": n})).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MaintenanceBody {
    on: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u32>,
}

/// `GET /admin/maintenance`: whether maintenance mode is on.
pub(super) async fn maintenance_state(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let mode = s
        .maintenance
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Json(json!({"on": mode.is_some(), "mode": mode.as_deref()})).into_response()
}

/// `POST /admin/maintenance {"on": bool, "message"?, "retry_after_ms"?}`: while on,
/// new connections are closed with 4010 and the retry hint; connected clients get a
/// `maintenance` push when it starts and ends.
pub(super) async fn maintenance(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (who, req) = match admin_body::<MaintenanceBody>(&s, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let message = req
        .message
        .unwrap_or_else(|| "the server is under maintenance".into());
    if message.is_empty() || message.len() > 100 {
        return invalid("message", "1 to 100 bytes (it goes in a close frame)");
    }
    let retry_after_ms = req.retry_after_ms.unwrap_or(30_000);
    let mode = req.on.then(|| {
        Arc::new(Maintenance {
            message: message.clone(),
            retry_after_ms,
        })
    });
    let told =
        crate::admin_ops::maintenance(&s.engine, &s.audit, &s.maintenance, &who.name, mode).await;
    let Ok(n) = told else {
        return overloaded();
    };
    if let Some(c) = &s.cluster {
        c.broadcast(
            &who.name,
            crate::cluster::ClusterAction::Maintenance {
                on: req.on,
                message,
                retry_after_ms,
                version: c.next_version(),
            },
        );
    }
    Json(json!({"ok": true, "on": req.on, "told": n})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeBody {
    user: String,
}

/// `POST /admin/revoke {"user"}`: the user's connections close (4011) and every token
/// of theirs issued before now (JWTs by `iat`, reconnect tokens) is refused, also after
/// a restart; tokens issued from the next second on work.
pub(super) async fn revoke(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (who, req) = match admin_body::<RevokeBody>(&s, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !crate::notify::valid_user_id(&req.user) {
        return invalid("user", "1 to 128 bytes");
    }
    match super::actions::revoke_user(&s, &who.name, &req.user).await {
        Ok((at_ms, n)) => {
            Json(json!({"ok": true, "revoked_at": at_ms, "disconnected": n})).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionsQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ip: Option<std::net::IpAddr>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    shard: Option<u16>,
    #[serde(default)]
    min_age_ms: Option<u64>,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn list(
    s: &HttpState,
    shard: Option<u16>,
    filter: ConnFilter,
    limit: usize,
) -> Result<Vec<ConnView>, Response> {
    let lists = s
        .engine
        .admin(shard, |done| AdminOp::List {
            filter: filter.clone(),
            limit,
            done,
        })
        .await
        .map_err(|_| overloaded())?;
    Ok(lists.into_iter().flatten().collect())
}

/// `GET /admin/connections[?user&ip&channel&shard&min_age_ms&offset&limit]`: the
/// connections matching every filter given, by shard and slot, a page at a time
/// (`limit` at most 1,000, default 100; `next_offset` while more may follow).
pub(super) async fn connections(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ConnectionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match admin_query(&s, &headers, query) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(100).clamp(1, 1000));
    let filter = ConnFilter {
        user: q.user,
        ip: q.ip,
        channel: q.channel,
        min_age_ms: q.min_age_ms,
        client: None,
        detail: false,
    };
    let mut all = match list(&s, q.shard, filter, offset + limit + 1).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    all.sort_by_key(|c| (c.client.shard, c.client.slot));
    let more = all.len() > offset + limit;
    let page: Vec<ConnView> = all.into_iter().skip(offset).take(limit).collect();
    let next = more.then_some(offset + limit);
    Json(json!({"connections": page, "next_offset": next})).into_response()
}

/// `GET /admin/connections/{client}`: one connection with its subscriptions, queue and
/// rate-limit state.
pub(super) async fn connection(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let id = match client_id("client", &path.0) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let filter = ConnFilter {
        client: Some(id),
        detail: true,
        ..Default::default()
    };
    match list(&s, Some(id.shard), filter, 1).await {
        Ok(mut l) if !l.is_empty() => Json(l.remove(0)).into_response(),
        Ok(_) => error(StatusCode::NOT_FOUND, "not_found", "no such connection"),
        Err(r) => r,
    }
}

/// `GET /admin/health`: everything at once for an operator: shards (accepting,
/// connections, authenticated), backend, store and its circuit, maintenance, rate
/// limits, auth counters.
pub(super) async fn health(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let (ready, mut body) = super::health::readiness(&s);
    let maintenance = s
        .maintenance
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    body["ready"] = json!(ready);
    body["version"] = json!(env!("CARGO_PKG_VERSION"));
    body["maintenance"] = json!(maintenance.as_deref());
    body["rate_limits"] = json!(s.engine.limits());
    body["auth"] = json!({
        "accepted": s.auth.accepted.load(Relaxed),
        "refused": s.auth.refused.load(Relaxed),
    });
    Json(body).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainBody {
    #[serde(default)]
    spread_ms: Option<u32>,
    #[serde(default)]
    message: Option<String>,
}

/// `POST /admin/drain {"spread_ms"?, "message"?}`: stop taking connections (maintenance
/// on: new ones get 4010, readiness 503) and move every client away, each told to
/// reconnect after a random delay below `spread_ms` (default 30 s), so they land on
/// other nodes without a stampede.
pub(super) async fn drain(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (who, req) = match admin_body::<DrainBody>(&s, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let spread = req.spread_ms.unwrap_or(30_000);
    let message = req
        .message
        .unwrap_or_else(|| "this node is draining".into());
    if message.is_empty() || message.len() > 100 {
        return invalid("message", "1 to 100 bytes (it goes in a close frame)");
    }
    let mode = Some(Arc::new(Maintenance {
        message: message.clone(),
        retry_after_ms: spread,
    }));
    let told = s
        .engine
        .admin(None, |done| AdminOp::Maintenance {
            mode: mode.clone(),
            done,
        })
        .await;
    if told.is_err() {
        return overloaded();
    }
    *s.maintenance.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    match disconnect_target(&s, &who.name, Target::All, message, true, spread).await {
        Ok(n) => {
            let _ = s.audit.record(
                &who.name,
                "drain",
                None,
                "ok",
                &json!({"spread_ms": spread, "disconnected": n}),
            );
            Json(json!({"ok": true, "disconnected": n, "spread_ms": spread})).into_response()
        }
        Err(r) => r,
    }
}

/// `POST /admin/shutdown`: stop the process as SIGTERM does (close 1001, drain for
/// `engine.drain_timeout_ms`, exit 0).
pub(super) async fn shutdown(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let who = match admin(&s, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let _ = s
        .audit
        .record(&who.name, "shutdown", None, "ok", &json!({}));
    tracing::warn!(target: "security", actor = %who.name, "shutdown requested through the admin API");
    s.engine.shutdown();
    s.shutdown.notify_one();
    Json(json!({"ok": true, "stopping": true})).into_response()
}

/// `GET /admin/alerts`: alerts firing now, the notices (newest first) and the rules.
pub(super) async fn alerts(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let (active, history) = s.alerts.snapshot();
    Json(json!({"active": active, "history": history})).into_response()
}

/// `GET /admin/nodes`: every live node of the cluster (address, shards, connections,
/// load, last heartbeat), as this node last read the registry; a node alone lists
/// itself.
pub(super) async fn nodes(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let now = crate::clock::now_ms();
    let Some(c) = &s.cluster else {
        let me = json!({
            "id": "local",
            "ws": s.engine.local_addr().to_string(),
            "shards": s.engine.metrics().len(),
            "connections": s.engine.connections(),
            "last_heartbeat_ms_ago": 0,
        });
        return Json(json!({"cluster": false, "nodes": [me]})).into_response();
    };
    let nodes: Vec<Value> = c
        .nodes()
        .into_iter()
        .map(|n| {
            let ago = now.saturating_sub(n.heartbeat_ms);
            let mut v = serde_json::to_value(&n).unwrap_or_default();
            v["last_heartbeat_ms_ago"] = json!(ago);
            v["self"] = json!(n.id == c.node_id);
            v
        })
        .collect();
    Json(json!({
        "cluster": true,
        "node": c.node_id,
        "redis": if c.up() { "up" } else { "unreachable" },
        "nodes": nodes,
    }))
    .into_response()
}
