//! The admin and server HTTP API (axum): health, metrics, publish.
//!
//! Owns the routes and their JSON error shape: every failure is
//! `{"error": {"code": "...", "message": "..."}}` with a matching HTTP status.
//! Does not own the engine or auth; it holds handles to them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_engine::{EngineHandle, PublishError};
use switchboard_protocol::{ErrorCode, Format, Payload};

use crate::auth::AuthStats;
use crate::metrics::{self, ApiStats};
use crate::store::StoreStats;
use switchboard_engine::journal::JournalState;

/// What the handlers share.
#[derive(Debug)]
pub struct AdminState {
    /// The running shards.
    pub engine: Arc<EngineHandle>,
    /// Key required by `/api/*`; `None` disables the API.
    pub api_key: Option<String>,
    /// Auth worker counters.
    pub auth: Arc<AuthStats>,
    /// API counters.
    pub api: ApiStats,
    /// Body size limit, in bytes.
    pub max_body_bytes: usize,
    /// The store's writer: path, backlog and health, counters.
    pub store: Option<StoreView>,
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
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
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
            })
        })
        .collect();
    // A store that cannot write makes the node unready: durable publications are
    // refused until it recovers.
    let store_ok = s.store.as_ref().is_none_or(|st| st.state.healthy());
    let ready = s.engine.ready() && store_ok;
    let store = s.store.as_ref().map(|st| {
        json!({
            "path": st.path,
            "writing": st.state.healthy(),
            "backlog": st.state.backlog(),
            "commits": st.stats.commits.load(Ordering::Relaxed),
            "failures": st.stats.failures.load(Ordering::Relaxed),
        })
    });
    let body = json!({
        "status": if ready { "ready" } else if store_ok { "not_ready" } else { "store_unavailable" },
        "backend": s.engine.backend(),
        "backend_fallback": s.engine.backend_fallback(),
        "connections": s.engine.connections(),
        "shards": shards,
        "store": store,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&s.engine, &s.auth, &s.api, s.store.as_ref()),
    )
        .into_response()
}

/// Why an API request is refused before its body is read.
enum KeyRefusal {
    Disabled,
    Missing,
    Invalid,
}

impl KeyRefusal {
    fn response(self) -> Response {
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
        }
    }
}

fn check_key(s: &AdminState, headers: &HeaderMap) -> Result<(), KeyRefusal> {
    let Some(expected) = &s.api_key else {
        return Err(KeyRefusal::Disabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match given {
        None => Err(KeyRefusal::Missing),
        Some(k) if constant_time_eq(k.trim().as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(KeyRefusal::Invalid),
    }
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
    if let Err(r) = check_key(&s, &headers) {
        return r.response();
    }
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("expected ?channel=NAME[&since=OFFSET][&limit=N][&reverse=true]: {e}"),
            )
        }
    };
    let ticket = match s.engine.history(&q.channel, q.since, q.limit, q.reverse) {
        Ok(t) => t,
        Err(PublishError::InvalidChannel) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_channel",
                "invalid channel name",
            )
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                &e.to_string(),
            )
        }
    };
    let reply = match tokio::time::timeout(std::time::Duration::from_secs(5), ticket).await {
        Ok(Ok(r)) => r,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the channel's shard did not answer",
            )
        }
    };
    let mut publications = Vec::with_capacity(reply.publications.len());
    for e in &reply.publications {
        let mut p = json!({"offset": e.offset, "data": as_json(e.format, &e.data)});
        if let Some(meta) = &e.meta {
            p["meta"] = as_json(e.format, meta);
        }
        publications.push(p);
    }
    Json(json!({
        "channel": q.channel,
        "epoch": reply.top.epoch_hex().as_str(),
        "offset": reply.top.offset,
        "publications": publications,
    }))
    .into_response()
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

async fn publish(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: Body) -> Response {
    let refused = |r: Response| {
        s.api.refused.fetch_add(1, Ordering::Relaxed);
        r
    };
    if let Err(r) = check_key(&s, &headers) {
        return refused(r.response());
    }
    let bytes: Bytes = match axum::body::to_bytes(body, s.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return refused(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("body exceeds {} bytes", s.max_body_bytes),
            ))
        }
    };
    let req: PublishBody<'_> = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return refused(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("expected {{\"channel\": string, \"data\": any JSON}}: {e}"),
            ))
        }
    };
    let payload = Payload {
        format: Format::Json,
        raw: req.data.get().as_bytes(),
    };
    if req
        .key
        .as_deref()
        .is_some_and(|k| k.is_empty() || k.len() > switchboard_protocol::envelope::MAX_KEY_BYTES)
    {
        return refused(error(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            "key: must be 1 to 128 bytes",
        ));
    }
    let meta = req.meta.map(|m| Payload {
        format: Format::Json,
        raw: m.get().as_bytes(),
    });
    let outcome = match s
        .engine
        .publish(&req.channel, payload, meta, req.key.as_deref())
    {
        Ok(ticket) => match tokio::time::timeout(std::time::Duration::from_secs(5), ticket).await {
            Ok(Ok(Ok(position))) => Ok(position),
            Ok(Ok(Err(why))) => {
                return match why.code {
                    ErrorCode::Overloaded => refused(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        &why.message,
                    )),
                    ErrorCode::Unavailable => refused(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        &why.message,
                    )),
                    _ => refused(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_payload",
                        &why.message,
                    )),
                }
            }
            // The owner shard dropped the request (it stopped) or did not answer.
            Ok(Err(_)) | Err(_) => Err(PublishError::Overloaded),
        },
        Err(e) => Err(e),
    };
    match outcome {
        Ok((position, duplicate)) => {
            s.api.publications.fetch_add(1, Ordering::Relaxed);
            let mut body = json!({"ok": true, "epoch": position.epoch_hex().as_str(), "offset": position.offset});
            if duplicate {
                body["duplicate"] = json!(true);
            }
            Json(body).into_response()
        }
        Err(PublishError::InvalidChannel) => refused(error(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            "invalid channel name",
        )),
        Err(PublishError::Payload(m)) => {
            refused(error(StatusCode::BAD_REQUEST, "invalid_payload", &m))
        }
        Err(e @ PublishError::Overloaded) => refused(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            &e.to_string(),
        )),
        Err(e) => refused(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        )),
    }
}
