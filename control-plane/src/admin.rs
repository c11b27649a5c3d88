//! The admin and server HTTP API (axum): health, metrics, publish.
//!
//! Owns the routes and their JSON error shape: every failure is
//! `{"error": {"code": "...", "message": "..."}}` with a matching HTTP status.
//! Does not own the engine or auth; it holds handles to them.

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_engine::{EngineHandle, PublishError};
use switchboard_protocol::{ErrorCode, Format, Payload, Position};

use crate::auth::AuthStats;
use crate::calls::Calls;
use crate::metrics::{self, ApiStats};
use crate::notify::{NewNotification, Notifier, Recipients, Refusal as NotifyRefusal};
use crate::schedule::{CancelError, Scheduler, API_OWNER};
use crate::store::StoreStats;
use switchboard_engine::journal::JournalState;

/// What the handlers share.
#[derive(Debug)]
pub struct AdminState {
    /// The running shards.
    pub engine: Arc<EngineHandle>,
    /// Keys accepted by `/api/*`, with their scopes; none: the API is disabled.
    pub api_keys: Vec<ApiKey>,
    /// Auth worker counters.
    pub auth: Arc<AuthStats>,
    /// API counters.
    pub api: ApiStats,
    /// Body size limit, in bytes.
    pub max_body_bytes: usize,
    /// The store's writer: path, backlog and health, counters.
    pub store: Option<StoreView>,
    /// Scheduled messages.
    pub scheduler: Scheduler,
    /// Notifications.
    pub notifier: Notifier,
    /// Calls.
    pub calls: Calls,
    /// Checks admin tokens (`None`: `/admin/*` is off).
    pub admin_auth: Option<crate::ops::AdminAuth>,
    /// The audit log of admin actions (and stored revocations).
    pub audit: Arc<crate::audit::Audit>,
    /// Revoked users, honoured by the auth workers.
    pub revocations: Arc<crate::auth::Revocations>,
    /// Alerts firing and their history, and the webhook breaker.
    pub alerts: Arc<crate::alerts::AlertsView>,
    /// Told when an operator asks the process to stop (`POST /admin/shutdown`).
    pub shutdown: Arc<tokio::sync::Notify>,
    /// Maintenance mode in force.
    pub maintenance: std::sync::Mutex<Option<Arc<switchboard_engine::control::Maintenance>>>,
}

/// What the admin API shows of the store.
#[derive(Debug, Clone)]
pub struct StoreView {
    /// The file.
    pub path: String,
    /// Backlog and health, shared with the shards.
    pub state: Arc<JournalState>,
    /// Writer counters.
    pub stats: Arc<StoreStats>,
}

/// The router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/publish", post(publish))
        .route("/api/history", get(history))
        .route("/api/send", post(send))
        .route("/api/receipts", get(receipts))
        .route("/api/presence", get(presence))
        .route("/api/schedule", post(schedule).get(list_scheduled))
        .route("/api/schedule/{id}", delete(unschedule))
        .route("/api/users/{user}/subscribe", post(user_subscribe))
        .route("/api/users/{user}/unsubscribe", post(user_unsubscribe))
        .route("/api/users/{user}/topics", post(user_topics))
        .route(
            "/api/notifications",
            post(create_notification).get(list_notifications),
        )
        .route("/api/notifications/read", post(read_notifications))
        .route("/api/calls", get(active_calls))
        .route("/api/calls/log", get(call_log))
        .merge(crate::ops::routes())
        .merge(crate::api::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api_scopes,
        ))
        .layer(axum::middleware::from_fn(harden))
        .with_state(state)
}

/// Every HTTP response: a request id (the client's `X-Request-Id` when it is a short
/// token, else a new one) on the response and on every log line of the request, and
/// security headers (this API serves JSON and text only: nothing may frame, sniff,
/// cache or embed it).
async fn harden(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(String::from)
        .unwrap_or_else(|| crate::server::random_hex(8));
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut res = next.run(req).instrument(span).await;
    let h = res.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("cross-origin-resource-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    res
}

/// A validation error: the JSON path of the bad field and what is wrong with it.
pub(crate) fn invalid(field: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"code": "bad_request", "field": field, "message": message}})),
    )
        .into_response()
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn live() -> Response {
    Json(json!({"status": "live"})).into_response()
}

async fn ready(State(s): State<Arc<AdminState>>) -> Response {
    let (ready, body) = readiness(&s);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Whether the node should get new clients, and why, with its shards and store: the
/// body of `/health/ready`, and the base of `/admin/health`.
pub(crate) fn readiness(s: &AdminState) -> (bool, Value) {
    let shards: Vec<_> = s
        .engine
        .metrics()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({
                "shard": i,
                "accepting": m.accepting.load(Ordering::Relaxed),
                "connections": m.connections.load(Ordering::Relaxed),
                "authenticated": m.authenticated.load(Ordering::Relaxed),
            })
        })
        .collect();
    // A store that cannot write makes the node unready: durable publications are
    // refused until it recovers.
    let store_ok = s.store.as_ref().is_none_or(|st| st.state.healthy());
    // In maintenance new connections are turned away: send them elsewhere.
    let maintenance = s
        .maintenance
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    let ready = s.engine.ready() && store_ok && !maintenance;
    let store = s.store.as_ref().map(|st| {
        json!({
            "path": st.path,
            "writing": st.state.healthy(),
            "circuit": if st.state.healthy() { "closed" } else { "open" },
            "backlog": st.state.backlog(),
            "commits": st.stats.commits.load(Ordering::Relaxed),
            "failures": st.stats.failures.load(Ordering::Relaxed),
        })
    });
    let body = json!({
        "status": if ready {
            "ready"
        } else if maintenance {
            "maintenance"
        } else if store_ok {
            "not_ready"
        } else {
            "store_unavailable"
        },
        "maintenance": maintenance,
        "backend": s.engine.backend(),
        "backend_fallback": s.engine.backend_fallback(),
        "connections": s.engine.connections(),
        "shards": shards,
        "store": store,
    });
    (ready, body)
}

async fn metrics_text(State(s): State<Arc<AdminState>>) -> Response {
    // Connections by state and queue depths: each shard counts its own (one pass over
    // its connections per scrape); a shard too busy to answer is left out.
    let census = s
        .engine
        .admin(None, |done| switchboard_engine::control::AdminOp::Census {
            done,
        })
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(
            &s.engine,
            &s.auth,
            &s.api,
            s.store.as_ref(),
            &s.alerts,
            &census,
        ),
    )
        .into_response()
}

/// Why an API request is refused before its body is read.
pub(crate) enum KeyRefusal {
    Disabled,
    Missing,
    Invalid,
    Scope(&'static str),
}

impl KeyRefusal {
    pub(crate) fn response(self) -> Response {
        match self {
            KeyRefusal::Disabled => error(
                StatusCode::FORBIDDEN,
                "api_disabled",
                "the server API is disabled: set admin.api_key",
            ),
            KeyRefusal::Missing => {
                error(StatusCode::UNAUTHORIZED, "unauthorized", "missing API key")
            }
            KeyRefusal::Invalid => {
                error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key")
            }
            KeyRefusal::Scope(scope) => error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("this API key lacks the '{scope}' scope"),
            ),
        }
    }
}

/// A server API key: its name and scopes.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Who uses it.
    pub name: String,
    /// The key.
    pub key: String,
    /// Its scopes (`*`: all).
    pub scopes: Vec<String>,
}

/// The scope a server API request needs.
fn scope_of(method: &axum::http::Method, path: &str) -> &'static str {
    use axum::http::Method;
    let users = path.starts_with("/api/users/") || path.starts_with("/api/connections/");
    match *method {
        Method::GET | Method::HEAD => "read",
        _ if users => "users",
        _ if path.starts_with("/api/send") || path.starts_with("/api/notifications") => "send",
        _ => "publish",
    }
}

/// The server API's key check for `/api/*`: a known key with the scope the route
/// needs, named in the request's log span.
async fn api_scopes(
    State(s): State<Arc<AdminState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/api/") || path == "/api/openapi.json" {
        return next.run(req).await;
    }
    let scope = scope_of(req.method(), path);
    match key_of(&s, req.headers()) {
        Ok(k) if k.scopes.iter().any(|have| have == "*" || have == scope) => {
            tracing::debug!(key = %k.name, scope, "server API key accepted");
            next.run(req).await
        }
        Ok(k) => {
            tracing::warn!(target: "security", key = %k.name, scope, "API key without the scope");
            s.api.refused.fetch_add(1, Ordering::Relaxed);
            KeyRefusal::Scope(scope).response()
        }
        Err(r) => {
            if !matches!(r, KeyRefusal::Disabled) {
                tracing::warn!(target: "security", "server API request with a missing or unknown key");
            }
            s.api.refused.fetch_add(1, Ordering::Relaxed);
            r.response()
        }
    }
}

/// The key check as a response to send back when it fails.
pub(crate) fn check(s: &AdminState, headers: &HeaderMap) -> Result<(), Response> {
    check_key(s, headers).map_err(KeyRefusal::response)
}

fn check_key(s: &AdminState, headers: &HeaderMap) -> Result<(), KeyRefusal> {
    key_of(s, headers).map(|_| ())
}

/// The API key a request carries, if it is one of ours.
pub(crate) fn key_of<'a>(s: &'a AdminState, headers: &HeaderMap) -> Result<&'a ApiKey, KeyRefusal> {
    if s.api_keys.is_empty() {
        return Err(KeyRefusal::Disabled);
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let Some(given) = given else {
        return Err(KeyRefusal::Missing);
    };
    let given = given.trim().as_bytes();
    // Compare with every key (constant time each), so timing says nothing of which.
    let mut found = None;
    for k in &s.api_keys {
        if constant_time_eq(given, k.key.as_bytes()) {
            found = Some(k);
        }
    }
    found.ok_or(KeyRefusal::Invalid)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stored value (one MessagePack or JSON value, as published) as JSON. Stored
/// values were validated when published, so a failure here cannot happen; it would
/// show as null rather than fail the whole response.
fn as_json(format: Format, raw: &[u8]) -> serde_json::Value {
    match format {
        Format::Json => serde_json::from_slice(raw),
        Format::MsgPack => rmp_serde::from_slice(raw).map_err(serde::de::Error::custom),
    }
    .unwrap_or(serde_json::Value::Null)
}

/// Query of `GET /api/history`.
#[derive(Deserialize)]
struct HistoryQuery {
    channel: String,
    #[serde(default)]
    since: u64,
    #[serde(default = "default_limit")]
    limit: u32,
    #[serde(default)]
    reverse: bool,
}

fn default_limit() -> u32 {
    100
}

/// `GET /api/history?channel=…&since=…&limit=…&reverse=…`: a channel's retained
/// publications, as the `history` command returns them, with payloads as JSON.
async fn history(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match checked_query(
        &s,
        &headers,
        query,
        "?channel=NAME[&since=OFFSET][&limit=N][&reverse=true]",
    ) {
        Ok(q) => q,
        Err(r) => return r,
    };
    history_of(&s, &q.channel, q.since, q.limit, q.reverse)
        .await
        .unwrap_or_else(|r| r)
}

/// A channel's retained publications as the server API shows them (`GET /api/history`,
/// a user's inbox).
pub(crate) async fn history_of(
    s: &AdminState,
    channel: &str,
    since: u64,
    limit: u32,
    reverse: bool,
) -> Result<Response, Response> {
    let reply = owner_reply(s.engine.history(channel, since, limit, reverse)).await?;
    let mut publications = Vec::with_capacity(reply.publications.len());
    for e in &reply.publications {
        let mut p = json!({"offset": e.offset, "data": as_json(e.format, &e.data)});
        if let Some(meta) = &e.meta {
            p["meta"] = as_json(e.format, meta);
        }
        if let Some(from) = &e.from {
            p["from"] = json!(&**from);
        }
        publications.push(p);
    }
    Ok(Json(json!({
        "channel": channel,
        "epoch": reply.top.epoch_hex().as_str(),
        "offset": reply.top.offset,
        "publications": publications,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    /// Idempotency key: a retry within the dedupe window is not delivered again.
    #[serde(borrow, default)]
    key: Option<std::borrow::Cow<'a, str>>,
    /// Opaque metadata carried with the publication.
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
}

/// Check the key and read a JSON body of type `T` (with the handler's refusal counted).
async fn read_body(s: &AdminState, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    if let Err(r) = check_key(s, headers) {
        return Err(r.response());
    }
    axum::body::to_bytes(body, s.max_body_bytes)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("body exceeds {} bytes", s.max_body_bytes),
            )
        })
}

/// Check the key, read the body and parse it as `T` (400 naming `expected` if not).
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    s: &AdminState,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<T, Response> {
    let bytes = read_body(s, headers, body).await?;
    parse_body(&bytes, expected)
}

/// Parse a JSON body as `T`; a 400 naming the JSON path of the bad field (`users[2]`,
/// `data`) and what was expected.
fn parse_body<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    expected: &str,
) -> Result<T, Response> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "" } else { &path };
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "code": "bad_request",
                "field": field,
                "message": format!("expected {expected}: {}", e.inner()),
            }})),
        )
            .into_response()
    })
}

fn check_api_key(key: Option<&str>) -> Result<(), Response> {
    if key.is_some_and(|k| k.is_empty() || k.len() > switchboard_protocol::envelope::MAX_KEY_BYTES)
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            "key: must be 1 to 128 bytes",
        ));
    }
    Ok(())
}

/// Sequence one publication through its channel's owner shard and wait for its
/// position (or the refusal, as the HTTP error the API documents).
async fn sequence(
    s: &AdminState,
    channel: &str,
    data: &RawValue,
    meta: Option<&RawValue>,
    key: Option<&str>,
    from: Option<Arc<str>>,
) -> Result<(Position, bool), Response> {
    let payload = Payload {
        format: Format::Json,
        raw: data.get().as_bytes(),
    };
    let meta = meta.map(|m| Payload {
        format: Format::Json,
        raw: m.get().as_bytes(),
    });
    let outcome = match s.engine.publish_from(channel, payload, meta, key, from) {
        Ok(ticket) => match tokio::time::timeout(std::time::Duration::from_secs(5), ticket).await {
            Ok(Ok(Ok(position))) => Ok(position),
            Ok(Ok(Err(why))) => {
                return Err(match why.code {
                    ErrorCode::Overloaded => {
                        error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", &why.message)
                    }
                    ErrorCode::Unavailable => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        &why.message,
                    ),
                    _ => error(StatusCode::BAD_REQUEST, "invalid_payload", &why.message),
                })
            }
            // The owner shard dropped the request (it stopped) or did not answer.
            Ok(Err(_)) | Err(_) => Err(PublishError::Overloaded),
        },
        Err(e) => Err(e),
    };
    outcome.map_err(|e| match e {
        PublishError::InvalidChannel => error(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            "invalid channel name",
        ),
        PublishError::Payload(m) => error(StatusCode::BAD_REQUEST, "invalid_payload", &m),
        e @ PublishError::Overloaded => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            &e.to_string(),
        ),
        e => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    })
}

fn position_json(position: Position, duplicate: bool) -> serde_json::Value {
    let mut body = json!({"epoch": position.epoch_hex().as_str(), "offset": position.offset});
    if duplicate {
        body["duplicate"] = json!(true);
    }
    body
}

async fn publish(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_body(&s, &headers, body).await?;
        let req: PublishBody<'_> = parse_body(&bytes, "{\"channel\": string, \"data\": any JSON}")?;
        check_api_key(req.key.as_deref())?;
        let (position, duplicate) = sequence(
            &s,
            &req.channel,
            req.data,
            req.meta,
            req.key.as_deref(),
            None,
        )
        .await?;
        let mut body = position_json(position, duplicate);
        body["ok"] = json!(true);
        Ok::<_, Response>(Json(body).into_response())
    }
    .await;
    counted(&s, result, 1)
}

/// Count the outcome: `n` publications, or one refusal.
fn counted(s: &AdminState, result: Result<Response, Response>, n: u64) -> Response {
    match result {
        Ok(r) => {
            s.api.publications.fetch_add(n, Ordering::Relaxed);
            r
        }
        Err(r) => {
            s.api.refused.fetch_add(1, Ordering::Relaxed);
            r
        }
    }
}

/// Body of `POST /api/send`.
#[derive(Deserialize)]
struct SendBody<'a> {
    /// One recipient…
    #[serde(borrow, default)]
    user: Option<std::borrow::Cow<'a, str>>,
    /// …or several.
    #[serde(default)]
    users: Option<Vec<String>>,
    #[serde(borrow)]
    data: &'a RawValue,
    /// Message id: a retry within the dedupe window is not delivered again.
    #[serde(borrow, default)]
    key: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
    /// Sender shown to recipients (default: none, a system message).
    #[serde(borrow, default)]
    from: Option<std::borrow::Cow<'a, str>>,
}

/// Most recipients of one `POST /api/send`.
const MAX_RECIPIENTS: usize = 1000;

/// `POST /api/send`: a direct message into one or more users' inboxes.
async fn send(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
    let mut sent = 0u64;
    let result = async {
        let bytes = read_body(&s, &headers, body).await?;
        let req: SendBody<'_> = parse_body(
            &bytes,
            "{\"user\": string or \"users\": [string], \"data\": any JSON}",
        )?;
        check_api_key(req.key.as_deref())?;
        let users: Vec<String> = match (req.user, req.users) {
            (Some(u), None) => vec![u.into_owned()],
            (None, Some(list)) if !list.is_empty() && list.len() <= MAX_RECIPIENTS => list,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("users: give 'user', or 'users' with 1 to {MAX_RECIPIENTS} ids"),
                ))
            }
        };
        let from: Option<Arc<str>> = req.from.as_deref().map(Arc::from);
        let mut results = Vec::with_capacity(users.len());
        for user in &users {
            let Some(channel) = s.engine.inbox_channel(user) else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    if s.engine.inbox_channel("x").is_none() {
                        "inbox_disabled"
                    } else {
                        "invalid_user"
                    },
                    &format!("users: cannot send to {user:?} (inboxes off or invalid id)"),
                ));
            };
            let r = sequence(
                &s,
                &channel,
                req.data,
                req.meta,
                req.key.as_deref(),
                from.clone(),
            )
            .await;
            results.push(match r {
                Ok((position, duplicate)) => {
                    sent += 1;
                    let mut v = position_json(position, duplicate);
                    v["user"] = json!(user);
                    v
                }
                Err(resp) => {
                    // One recipient's failure does not undo the others: report each.
                    let status = resp.status().as_u16();
                    json!({"user": user, "error": {"status": status}})
                }
            });
        }
        Ok(Json(json!({"ok": true, "results": results})).into_response())
    }
    .await;
    counted(&s, result, sent)
}

/// Check the API key, then the query string (`expected` says what it should be).
pub(crate) fn checked_query<T>(
    s: &AdminState,
    headers: &HeaderMap,
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
    expected: &str,
) -> Result<T, Response> {
    check_key(s, headers).map_err(KeyRefusal::response)?;
    query.map(|q| q.0).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("expected {expected}: {e}"),
        )
    })
}

/// Wait for what a channel's owner shard answers, or the HTTP error for why there is
/// no answer (invalid channel, full inbox, no answer within 5 s).
async fn owner_reply<T>(
    asked: Result<tokio::sync::oneshot::Receiver<T>, PublishError>,
) -> Result<T, Response> {
    let ticket = match asked {
        Ok(t) => t,
        Err(PublishError::InvalidChannel) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_channel",
                "invalid channel name",
            ))
        }
        Err(e) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                &e.to_string(),
            ))
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), ticket).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the channel's shard did not answer",
        )),
    }
}

/// Query of `GET /api/receipts`.
#[derive(Deserialize)]
struct ChannelQuery {
    channel: String,
}

/// `GET /api/receipts?channel=…`: who has received and read the channel up to where.
async fn receipts(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ChannelQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match checked_query(&s, &headers, query, "?channel=NAME") {
        Ok(q) => q,
        Err(r) => return r,
    };
    match owner_reply(s.engine.receipts(&q.channel)).await {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

/// Query of `GET /api/presence`.
#[derive(Deserialize)]
struct PresenceQuery {
    channel: String,
    #[serde(default = "yes")]
    members: bool,
}

fn yes() -> bool {
    true
}

/// `GET /api/presence?channel=…[&members=false]`: who is on a channel.
async fn presence(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match checked_query(&s, &headers, query, "?channel=NAME[&members=false]") {
        Ok(q) => q,
        Err(r) => return r,
    };
    match owner_reply(s.engine.presence(&q.channel, q.members)).await {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

/// Body of `POST /api/schedule`.
#[derive(Deserialize)]
struct ScheduleBody<'a> {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
    /// Unix milliseconds…
    #[serde(default)]
    at: Option<u64>,
    /// …or milliseconds from now.
    #[serde(default)]
    delay_ms: Option<u64>,
    /// Sender shown for a direct message.
    #[serde(default)]
    from: Option<String>,
}

/// `POST /api/schedule`: publish to a channel or send to a user later.
async fn schedule(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_body(&s, &headers, body).await?;
        let req: ScheduleBody<'_> = parse_body(
            &bytes,
            "{\"channel\" or \"user\": string, \"data\": any JSON, \"at\" or \"delay_ms\": integer}",
        )?;
        let bad = |field: &str, message: &str| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("{field}: {message}"),
            )
        };
        let (channel, from) = match (req.channel, req.user) {
            (Some(c), None) => {
                if !switchboard_protocol::envelope::valid_channel(&c) {
                    return Err(bad("channel", "invalid channel name"));
                }
                (c, None)
            }
            (None, Some(u)) => match s.engine.inbox_channel(&u) {
                Some(c) => (c, req.from.map(Arc::<str>::from)),
                None => return Err(bad("user", "inboxes are off or the id is invalid")),
            },
            _ => return Err(bad("channel", "give exactly one of 'channel' and 'user'")),
        };
        let now = crate::schedule::now_ms();
        let due_ms = match (req.at, req.delay_ms) {
            (Some(at), None) => at,
            (None, Some(d)) => now.saturating_add(d),
            _ => return Err(bad("at", "give exactly one of 'at' and 'delay_ms'")),
        };
        let job = switchboard_engine::auth::ScheduleJob {
            channel,
            from,
            format: Format::Json,
            data: bytes::Bytes::copy_from_slice(req.data.get().as_bytes()),
            meta: req
                .meta
                .map(|m| bytes::Bytes::copy_from_slice(m.get().as_bytes())),
            due_ms,
            owner: Arc::from(API_OWNER),
        };
        let (id, at) = s.scheduler.add(job).await.map_err(|e| {
            error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e)
        })?;
        Ok(Json(json!({"ok": true, "schedule": id, "at": at})).into_response())
    }
    .await;
    result.unwrap_or_else(|r| r)
}

/// Query of `GET /api/schedule`.
#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/schedule[?all=true]`: pending scheduled messages (or the latest 1,000 of
/// every state).
async fn list_scheduled(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = check_key(&s, &headers) {
        return r.response();
    }
    let all = query.map(|q| q.0.all).unwrap_or(false);
    match s.scheduler.list(!all).await {
        Ok(list) => Json(json!({"scheduled": list})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e),
    }
}

/// `DELETE /api/schedule/{id}`: cancel a pending scheduled message.
async fn unschedule(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    path: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    if let Err(r) = check_key(&s, &headers) {
        return r.response();
    }
    let Ok(axum::extract::Path(id)) = path else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "id: expected an integer",
        );
    };
    match s.scheduler.cancel(id).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(CancelError::NotFound) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such scheduled message",
        ),
        Err(CancelError::NotPending(state)) => error(
            StatusCode::CONFLICT,
            "not_pending",
            &format!("the scheduled message is already {state}"),
        ),
        Err(CancelError::Store(e)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e)
        }
    }
}

/// Body of `POST /api/users/{user}/subscribe` and `…/unsubscribe`.
#[derive(Deserialize)]
struct UserSubscriptionBody {
    channel: String,
    /// Recover from this position (subscribe only).
    #[serde(default)]
    since: Option<SinceBody>,
}

#[derive(Deserialize)]
struct SinceBody {
    epoch: String,
    offset: u64,
}

/// `POST /api/users/{user}/subscribe`: subscribe every connection of the user.
async fn user_subscribe(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    user_subscription(&s, &headers, &path.0, body, true).await
}

/// `POST /api/users/{user}/unsubscribe`: unsubscribe every connection of the user.
async fn user_unsubscribe(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    user_subscription(&s, &headers, &path.0, body, false).await
}

async fn user_subscription(
    s: &AdminState,
    headers: &HeaderMap,
    user: &str,
    body: Body,
    join: bool,
) -> Response {
    let result = async {
        let req: UserSubscriptionBody = json_body(
            s,
            headers,
            body,
            "{\"channel\": string, \"since\"?: {\"epoch\", \"offset\"}}",
        )
        .await?;
        let since = match req.since {
            None => None,
            Some(p) => Some(Position {
                epoch: Position::parse_epoch(&p.epoch).ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "since.epoch: expected 16 hex digits",
                    )
                })?,
                offset: p.offset,
            }),
        };
        let answers = match s.engine.user_subscription(user, &req.channel, join, since) {
            Ok(a) => a,
            Err(PublishError::InvalidChannel) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_channel",
                    "channel: invalid channel name",
                ))
            }
            Err(e) => {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    &e.to_string(),
                ))
            }
        };
        let mut connections = 0;
        for rx in answers {
            match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
                Ok(Ok(n)) => connections += n,
                _ => {
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "a shard did not answer",
                    ))
                }
            }
        }
        Ok(Json(json!({"ok": true, "connections": connections})).into_response())
    }
    .await;
    result.unwrap_or_else(|r| r)
}

/// Body of `POST /api/notifications`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationBody {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    users: Option<Vec<String>>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    key: Option<String>,
}

fn refusal(r: NotifyRefusal) -> Response {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "store_unavailable",
    };
    error(status, code, &r.message)
}

/// `POST /api/notifications`: create a notification for one user, many users or a
/// topic's subscribers (or update the one with the same `key`), store and push it.
async fn create_notification(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let expected = "{\"user\" | \"users\" | \"topic\", \"kind\"?: string, \"data\"?: any JSON, \"key\"?: string}";
        let req: NotificationBody = json_body(&s, &headers, body, expected).await?;
        let to = match (req.user, req.users, req.topic) {
            (Some(u), None, None) => Recipients::Users(vec![u]),
            (None, Some(u), None) => Recipients::Users(u),
            (None, None, Some(t)) => Recipients::Topic(t),
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "user: give exactly one of 'user', 'users' and 'topic'",
                ))
            }
        };
        let n = NewNotification {
            to,
            kind: req.kind.unwrap_or_else(|| "message".into()),
            data: req.data,
            key: req.key,
        };
        if let Err(m) = crate::notify::check(&n) {
            return Err(error(StatusCode::BAD_REQUEST, "bad_request", &m));
        }
        let created = s.notifier.create(n).await.map_err(refusal)?;
        Ok(Json(json!({
            "ok": true,
            "id": created.id,
            "recipients": created.recipients,
            "updated": created.updated,
        }))
        .into_response())
    }
    .await;
    result.unwrap_or_else(|r| r)
}

/// Query of `GET /api/notifications`.
#[derive(Deserialize)]
struct NotificationsQuery {
    user: String,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    unread: bool,
}

/// `GET /api/notifications?user=U[&limit=N&before=ID&unread=true]`: a user's
/// notifications, newest first, and the unread count.
async fn list_notifications(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: Result<
        axum::extract::Query<NotificationsQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    let q = match checked_query(
        &s,
        &headers,
        query,
        "?user=ID[&limit=N&before=ID&unread=true]",
    ) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    match s.notifier.list(q.user, limit, q.before, q.unread).await {
        Ok(l) => Json(l).into_response(),
        Err(r) => refusal(r),
    }
}

/// Body of `POST /api/notifications/read`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    user: String,
    #[serde(default)]
    notification: Option<u64>,
    #[serde(default)]
    all: bool,
}

/// `POST /api/notifications/read`: mark one (or all) of a user's notifications read.
async fn read_notifications(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let req: ReadBody = json_body(
            &s,
            &headers,
            body,
            "{\"user\": string, \"notification\": id | \"all\": true}",
        )
        .await?;
        let id = match (req.notification, req.all) {
            (Some(id), false) => Some(id),
            (None, true) => None,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "notification: give 'notification' (an id) or 'all': true",
                ))
            }
        };
        let unread = s.notifier.read(req.user, id).await.map_err(refusal)?;
        Ok(Json(json!({"ok": true, "unread": unread})).into_response())
    }
    .await;
    result.unwrap_or_else(|r| r)
}

/// Body of `POST /api/users/{user}/topics`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsBody {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    unsubscribe: Vec<String>,
}

/// `POST /api/users/{user}/topics`: subscribe a user to notification topics (any
/// topic: the key is trusted) or unsubscribe; answers the user's topics.
async fn user_topics(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let expected = "{\"subscribe\"?: [topic], \"unsubscribe\"?: [topic]}";
        let req: TopicsBody = json_body(&s, &headers, body, expected).await?;
        let user = path.0;
        if !crate::notify::valid_user_id(&user) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "user: 1 to 128 bytes",
            ));
        }
        let topics = s
            .notifier
            .topics(user, req.subscribe, req.unsubscribe)
            .await
            .map_err(refusal)?;
        Ok(Json(json!({"ok": true, "topics": topics})).into_response())
    }
    .await;
    result.unwrap_or_else(|r| r)
}

/// `GET /api/calls`: every active call, its state and participants.
async fn active_calls(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_key(&s, &headers) {
        return r.response();
    }
    Json(json!({"calls": s.calls.active().await})).into_response()
}

/// Query of `GET /api/calls/log`.
#[derive(Deserialize)]
struct CallLogQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/calls/log[?user=U&limit=N]`: the call log, newest first.
async fn call_log(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<CallLogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match checked_query(&s, &headers, query, "[?user=ID&limit=N]") {
        Ok(q) => q,
        Err(r) => return r,
    };
    match s.calls.log(q.user, q.limit.unwrap_or(100)).await {
        Ok(calls) => Json(json!({ "calls": calls })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e),
    }
}
