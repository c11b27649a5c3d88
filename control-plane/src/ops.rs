//! The admin API (`/admin/*`): what operators do to a running server, behind an admin
//! JWT, every action audited.
//!
//! An admin token is a JWT signed (HS256) with `admin.jwt_secret` — a key of its own,
//! not the clients' — carrying `sub` (who acts, recorded in the audit log), `exp`, and
//! `role` (a string or a list) containing `admin.role` (default `admin`). No token or
//! a bad one: 401; a valid one without the role: 403; no admin key configured: 403.
//!
//! Owns the routes, the admin token check and the validation of admin bodies (errors
//! carry the JSON path of the bad field). Does not own the actions themselves (the
//! engine applies rate limits; the audit log stores entries).

#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_engine::control::{self, AdminOp, ConnFilter, ConnView, Maintenance, Target};
use switchboard_engine::limits::LimitRule;

use crate::admin::{invalid, AdminState};

/// Checks admin tokens.
pub struct AdminAuth {
    key: DecodingKey,
    role: String,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Roles {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct AdminClaims {
    sub: String,
    #[serde(default)]
    role: Option<Roles>,
}

/// Who is acting.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The token's `sub`.
    pub name: String,
}

impl AdminAuth {
    /// Tokens signed with `secret`, needing `role`.
    pub fn new(secret: &str, role: &str) -> AdminAuth {
        AdminAuth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            role: role.to_string(),
        }
    }

    fn verify(&self, headers: &HeaderMap) -> Result<Admin, Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                fail(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "an admin token is required (Authorization: Bearer <JWT>)",
                )
            })?;
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<AdminClaims>(token, &self.key, &v).map_err(|e| {
            let (code, why) = match e.kind() {
                ErrorKind::ExpiredSignature => ("token_expired", "the admin token has expired"),
                ErrorKind::InvalidSignature => ("unauthorized", "bad admin token signature"),
                _ => ("unauthorized", "invalid admin token"),
            };
            tracing::warn!(target: "security", reason = why, "admin token refused");
            fail(StatusCode::UNAUTHORIZED, code, why)
        })?;
        let claims = data.claims;
        let has_role = match &claims.role {
            Some(Roles::One(r)) => *r == self.role,
            Some(Roles::Many(rs)) => rs.contains(&self.role),
            None => false,
        };
        if !has_role {
            tracing::warn!(target: "security", sub = %claims.sub, "admin token without the admin role");
            return Err(fail(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("the token's role does not include {:?}", self.role),
            ));
        }
        Ok(Admin { name: claims.sub })
    }
}

/// The admin routes.
pub fn routes() -> Router<Arc<AdminState>> {
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
        .route("/admin/breakers", get(breakers))
        .route("/admin/alerts", get(alerts))
        .route("/admin/breakers/{name}/reset", post(reset_breaker))
        .route("/admin/drain", post(drain))
        .route("/admin/shutdown", post(shutdown))
}

fn fail(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn admin(s: &AdminState, headers: &HeaderMap) -> Result<Admin, Response> {
    match &s.admin_auth {
        Some(a) => a.verify(headers),
        None => Err(fail(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin key is configured (admin.jwt_secret)",
        )),
    }
}

/// Check the admin token and the query (a bad one is a 400 naming `query`).
fn admin_query<T>(
    s: &AdminState,
    headers: &HeaderMap,
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Response> {
    admin(s, headers)?;
    query
        .map(|q| q.0)
        .map_err(|e| invalid("query", &e.body_text()))
}

/// Check the admin token, read the body and parse it as `T`; a bad field is a 400
/// naming its path.
async fn admin_body<T: DeserializeOwned>(
    s: &AdminState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Admin, T), Response> {
    let who = admin(s, headers)?;
    let bytes = axum::body::to_bytes(body, s.max_body_bytes)
        .await
        .map_err(|_| {
            fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body too large",
            )
        })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "" } else { &path };
        invalid(field, &e.inner().to_string())
    })?;
    Ok((who, value))
}

/// Apply `rules` on every shard and record the action.
async fn apply(
    s: &Arc<AdminState>,
    who: &Admin,
    action: &str,
    target: Option<String>,
    rules: Vec<LimitRule>,
    detail: Value,
) -> Response {
    let engine = s.engine.clone();
    let applied = tokio::task::spawn_blocking(move || engine.set_limits(rules))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let result = match &applied {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    let _ = s
        .audit
        .record(&who.name, action, target.as_deref(), &result, &detail);
    match applied {
        Ok(()) => Json(json!({"ok": true, "rules": s.engine.limits()})).into_response(),
        Err(e) if e.starts_with("rules[") => {
            let (field, message) = e.split_once(": ").unwrap_or((&e, ""));
            invalid(field, message)
        }
        Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, "overloaded", &e),
    }
}

/// `GET /admin/rate-limits`: the rules in force.
async fn list_limits(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    Json(json!({"rules": s.engine.limits()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesBody {
    rules: Vec<LimitRule>,
}

/// `PUT /admin/rate-limits {"rules": [...]}`: replace every rule.
async fn replace_limits(
    State(s): State<Arc<AdminState>>,
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
async fn add_limit(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
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
async fn remove_limit(
    State(s): State<Arc<AdminState>>,
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
        return fail(
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
struct AuditQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

/// `GET /admin/audit[?limit=N&actor=…&action=…]`: the audit log, newest first.
async fn audit_log(
    State(s): State<Arc<AdminState>>,
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
        Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e),
    }
}

fn overloaded() -> Response {
    fail(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "a shard cannot take the request now; retry",
    )
}

fn client_id(field: &str, s: &str) -> Result<switchboard_engine::presence::ClientId, Response> {
    control::parse_client_id(s)
        .ok_or_else(|| invalid(field, "expected a client id (shard.slot.generation)"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
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

fn yes() -> bool {
    true
}

/// `POST /admin/disconnect {"client" | "user" | "all": true, "reason"?, "reconnect"?,
/// "spread_ms"?}`: close connections with 4009; `spread_ms` spreads their reconnect
/// hints (a drain).
async fn disconnect(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
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

/// Close the target's connections (4009) and record it as `actor`'s action; how many
/// closed. Shared by the admin API and the server API.
pub async fn disconnect_target(
    s: &AdminState,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    on: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u32>,
}

/// `GET /admin/maintenance`: whether maintenance mode is on.
async fn maintenance_state(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
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
async fn maintenance(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
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
    let mode = req.on.then(|| {
        Arc::new(Maintenance {
            message,
            retry_after_ms: req.retry_after_ms.unwrap_or(30_000),
        })
    });
    let told = s
        .engine
        .admin(None, |done| AdminOp::Maintenance {
            mode: mode.clone(),
            done,
        })
        .await;
    let detail = json!({"on": req.on, "mode": mode.as_deref()});
    let result = if told.is_ok() { "ok" } else { "overloaded" };
    let _ = s
        .audit
        .record(&who.name, "maintenance", None, result, &detail);
    let Ok(told) = told else {
        return overloaded();
    };
    *s.maintenance.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    let n: usize = told.iter().sum();
    Json(json!({"ok": true, "on": req.on, "told": n})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    user: String,
}

/// `POST /admin/revoke {"user"}`: the user's connections close (4011) and every token
/// of theirs issued before now (JWTs by `iat`, reconnect tokens) is refused, also after
/// a restart; tokens issued from the next second on work.
async fn revoke(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
    let (who, req) = match admin_body::<RevokeBody>(&s, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !crate::notify::valid_user_id(&req.user) {
        return invalid("user", "1 to 128 bytes");
    }
    match revoke_user(&s, &who.name, &req.user).await {
        Ok((at_ms, n)) => {
            Json(json!({"ok": true, "revoked_at": at_ms, "disconnected": n})).into_response()
        }
        Err(r) => r,
    }
}

/// Revoke `user`'s tokens issued before now (stored, honoured by the auth workers and
/// the shards) and close its connections (4011), recorded as `actor`'s action; the
/// revocation time and how many connections closed. Shared by the admin API and the
/// server API.
pub async fn revoke_user(
    s: &AdminState,
    actor: &str,
    user: &str,
) -> Result<(u64, usize), Response> {
    let at_ms = crate::schedule::now_ms();
    let audit = s.audit.clone();
    let owned = user.to_string();
    let saved = tokio::task::spawn_blocking(move || audit.save_revocation(&owned, at_ms))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = saved {
        let _ = s.audit.record(actor, "revoke", Some(user), &e, &json!({}));
        return Err(fail(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionsQuery {
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

async fn list(
    s: &AdminState,
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
async fn connections(
    State(s): State<Arc<AdminState>>,
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
async fn connection(
    State(s): State<Arc<AdminState>>,
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
        Ok(_) => fail(StatusCode::NOT_FOUND, "not_found", "no such connection"),
        Err(r) => r,
    }
}

/// `GET /admin/health`: everything at once for an operator: shards (accepting,
/// connections, authenticated), backend, store and its circuit, maintenance, rate
/// limits, auth counters.
async fn health(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let (ready, mut body) = crate::admin::readiness(&s);
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

/// `GET /admin/breakers`: the circuit breakers and their failure counts. Today the
/// store's (open: durable publications are refused with 111 until a write works).
async fn breakers(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let mut list: Vec<Value> = s
        .store
        .iter()
        .map(|st| {
            json!({
                "name": "store",
                "state": if st.state.healthy() { "closed" } else { "open" },
                "failures": st.stats.failures.load(Relaxed),
                "backlog": st.state.backlog(),
            })
        })
        .collect();
    list.push(json!({
        "name": "webhooks",
        "state": if s.alerts.webhook_open.load(Relaxed) { "open" } else { "closed" },
        "failures": s.alerts.webhook_failures.load(Relaxed),
        "sent": s.alerts.webhook_sent.load(Relaxed),
    }));
    Json(json!({ "breakers": list })).into_response()
}

/// `POST /admin/breakers/{name}/reset`: close a breaker now (the store's writer keeps
/// retrying; if its next write fails the breaker opens again).
async fn reset_breaker(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
) -> Response {
    let who = match admin(&s, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let name = path.0.as_str();
    let was_open = match (name, s.store.as_ref()) {
        ("store", Some(st)) => {
            let open = !st.state.healthy();
            st.state.set_healthy(true);
            open
        }
        ("webhooks", _) => s
            .alerts
            .webhook_open
            .swap(false, std::sync::atomic::Ordering::Relaxed),
        _ => {
            return fail(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such breaker (store, webhooks)",
            )
        }
    };
    let was = if was_open { "open" } else { "closed" };
    let _ = s.audit.record(
        &who.name,
        "breaker.reset",
        Some(name),
        "ok",
        &json!({ "was": was }),
    );
    Json(json!({"ok": true, "name": name, "was": was, "state": "closed"})).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    #[serde(default)]
    spread_ms: Option<u32>,
    #[serde(default)]
    message: Option<String>,
}

/// `POST /admin/drain {"spread_ms"?, "message"?}`: stop taking connections (maintenance
/// on: new ones get 4010, readiness 503) and move every client away, each told to
/// reconnect after a random delay below `spread_ms` (default 30 s), so they land on
/// other nodes without a stampede.
async fn drain(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
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
async fn shutdown(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
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
async fn alerts(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&s, &headers) {
        return r;
    }
    let (active, history) = s.alerts.snapshot();
    Json(json!({"active": active, "history": history})).into_response()
}
