//! The server API's messaging routes for backends (API keys with scopes): publish,
//! history, send, receipts, presence, scheduled messages, calls.
//!
//! Owns these routes and their bodies' validation. Does not own the actions (the
//! engine, the scheduler, the call worker).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::{error, parse_body};
use super::requests::{check_key, checked_query, read_body};
use super::state::HttpState;
use crate::schedule::{CancelError, API_OWNER};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchboard_protocol::history::{Page, PageFields};
use switchboard_protocol::{ErrorCode, Format, Payload, Position};

/// The routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/api/publish", post(publish))
        .route("/api/history", get(history))
        .route("/api/send", post(send))
        .route("/api/receipts", get(receipts))
        .route("/api/presence", get(presence))
        .route("/api/schedule", post(schedule).get(list_scheduled))
        .route("/api/schedule/{id}", delete(unschedule))
        .route("/api/calls", get(active_calls))
        .route("/api/calls/log", get(call_log))
}
/// A stored value (one MessagePack or JSON value, as published) as JSON. Stored
/// values were validated when published, so a failure here cannot happen; it would
/// show as null rather than fail the whole response.
pub(super) fn as_json(format: Format, raw: &[u8]) -> serde_json::Value {
    crate::store::data_requests::payload_json(format, raw)
}

/// Query of `GET /api/history`: the `history` command's fields.
#[derive(Deserialize)]
pub(super) struct HistoryQuery {
    channel: String,
    since: Option<u64>,
    after: Option<u64>,
    before: Option<u64>,
    epoch: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    limit: Option<u64>,
    reverse: Option<bool>,
    cursor: Option<String>,
}

/// `GET /api/history?channel=…[&after=…|&before=…][&from_ms=…&to_ms=…][&epoch=…]
/// [&limit=…][&reverse=true][&cursor=…]`: a page of a channel's publications, as the
/// `history` command returns it, with payloads as JSON.
pub(super) async fn history(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match checked_query(
        &s,
        &headers,
        query,
        "?channel=NAME[&after=OFFSET][&before=OFFSET][&from_ms=MS][&to_ms=MS][&epoch=HEX][&limit=N][&reverse=true][&cursor=TEXT]",
    ) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let fields = PageFields {
        since: q.since,
        after: q.after,
        before: q.before,
        epoch: q.epoch.as_deref(),
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        limit: q.limit,
        reverse: q.reverse,
        cursor: q.cursor.as_deref(),
    };
    let page = match fields.page(&q.channel) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    history_of(&s, &q.channel, page).await.unwrap_or_else(|r| r)
}

/// A page of a channel's publications as the server API shows them (`GET /api/history`,
/// a user's inbox).
pub(crate) async fn history_of(
    s: &HttpState,
    channel: &str,
    page: Page,
) -> Result<Response, Response> {
    let reply = owner_reply(s.engine.history(channel, page)).await?;
    if let Some((code, why)) = &reply.refused {
        let status = match code {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Overloaded | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let kind = match code {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            _ => "bad_request",
        };
        return Err(error(status, kind, why));
    }
    let mut publications = Vec::with_capacity(reply.publications.len());
    for e in &reply.publications {
        let mut p = json!({"offset": e.offset, "data": as_json(e.format, &e.data)});
        if let Some(meta) = &e.meta {
            p["meta"] = as_json(e.format, meta);
        }
        if let Some(from) = &e.from {
            p["from"] = json!(&**from);
        }
        if let Some(event) = &e.event {
            p["event"] = json!(&**event);
        }
        if let Some(r) = e.revises {
            p[if r.delete { "delete" } else { "edit" }] = json!(r.target);
        }
        if let Some(r) = e.revised {
            p[if r.deleted { "deleted_ms" } else { "edited_ms" }] = json!(r.at_ms);
        }
        publications.push(p);
    }
    let mut body = json!({
        "channel": channel,
        "epoch": reply.top.epoch_hex().as_str(),
        "offset": reply.top.offset,
        "publications": publications,
    });
    if let Some(cursor) = &reply.cursor {
        body["cursor"] = json!(&**cursor);
    }
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
pub(super) struct PublishBody<'a> {
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
    /// The event Socket.IO subscribers get it as (`docs/SOCKETIO.md`).
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
}

/// The edge check of `data` and `meta` (see `Payload::validate`): a 400
/// `invalid_payload` naming the field, before anything is sent or stored.
pub(super) fn valid_payloads(data: &RawValue, meta: Option<&RawValue>) -> Result<(), Response> {
    for (field, raw) in [("data", Some(data)), ("meta", meta)] {
        let Some(raw) = raw else { continue };
        let payload = Payload {
            format: Format::Json,
            raw: raw.get().as_bytes(),
        };
        if let Err(fault) = payload.validate() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_payload",
                &format!("{field}: {fault}"),
            ));
        }
    }
    Ok(())
}

/// Sequence one publication through its channel's owner shard and wait for its
/// position (or the refusal, as the HTTP error the API documents).
pub(super) async fn sequence(
    s: &HttpState,
    channel: &str,
    data: &RawValue,
    meta: Option<&RawValue>,
    key: Option<&str>,
    from: Option<Arc<str>>,
    event: Option<Arc<str>>,
) -> Result<(Position, bool), Response> {
    let payload = Payload {
        format: Format::Json,
        raw: data.get().as_bytes(),
    };
    let meta = meta.map(|m| Payload {
        format: Format::Json,
        raw: m.get().as_bytes(),
    });
    settle(
        s.engine
            .publish_event(channel, payload, meta, key, from, event),
    )
    .await
}

/// Wait for a publication's position (5 s at most) and say what went wrong as the server
/// API does.
pub(super) async fn settle(
    asked: Result<switchboard_engine::PublishTicket, switchboard_engine::Error>,
) -> Result<(Position, bool), Response> {
    let outcome = match asked {
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
                    ErrorCode::NotFound => error(StatusCode::NOT_FOUND, "not_found", &why.message),
                    ErrorCode::Conflict => error(StatusCode::CONFLICT, "conflict", &why.message),
                    ErrorCode::PermissionDenied => {
                        error(StatusCode::FORBIDDEN, "forbidden", &why.message)
                    }
                    // A full inbox or capped channel: the recipient's limit, not the
                    // caller's rate; retry after older messages go.
                    ErrorCode::LimitExceeded => error(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "channel_full",
                        &why.message,
                    ),
                    _ => error(StatusCode::BAD_REQUEST, "invalid_payload", &why.message),
                });
            }
            // The owner shard dropped the request (it stopped) or did not answer.
            Ok(Err(_)) | Err(_) => Err(switchboard_engine::Error::Overloaded),
        },
        Err(e) => Err(e),
    };
    outcome.map_err(|e| match e {
        switchboard_engine::Error::InvalidChannel => error(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            "invalid channel name",
        ),
        switchboard_engine::Error::Payload(m) => {
            error(StatusCode::BAD_REQUEST, "invalid_payload", &m)
        }
        e @ switchboard_engine::Error::Overloaded => error(
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

pub(super) fn position_json(position: Position, duplicate: bool) -> serde_json::Value {
    let mut body = json!({"epoch": position.epoch_hex().as_str(), "offset": position.offset});
    if duplicate {
        body["duplicate"] = json!(true);
    }
    body
}

pub(super) async fn publish(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let bytes = read_body(&s, &headers, body).await?;
        let req: PublishBody<'_> = parse_body(&bytes, "{\"channel\": string, \"data\": any JSON}")?;
        check_api_key(req.key.as_deref())?;
        let event = check_event(req.event.as_deref())?;
        let (position, duplicate) = sequence(
            &s,
            &req.channel,
            req.data,
            req.meta,
            req.key.as_deref(),
            None,
            event,
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
pub(super) fn counted(s: &HttpState, result: Result<Response, Response>, n: u64) -> Response {
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
pub(super) struct SendBody<'a> {
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
pub(super) const MAX_RECIPIENTS: usize = 1000;

/// `POST /api/send`: a direct message into one or more users' inboxes.
pub(super) async fn send(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut sent = 0u64;
    let result = async {
        let bytes = read_body(&s, &headers, body).await?;
        let req: SendBody<'_> = parse_body(
            &bytes,
            "{\"user\": string or \"users\": [string], \"data\": any JSON}",
        )?;
        check_api_key(req.key.as_deref())?;
        valid_payloads(req.data, req.meta)?;
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
                None,
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
                    // One recipient's failure does not undo the others: report each,
                    // with the code and message its own request would have had.
                    let status = resp.status().as_u16();
                    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
                        .await
                        .unwrap_or_default();
                    let mut why = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .map(|mut v| v["error"].take())
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    why["status"] = json!(status);
                    json!({"user": user, "error": why})
                }
            });
        }
        Ok(Json(json!({"ok": true, "results": results})).into_response())
    }
    .await;
    counted(&s, result, sent)
}

/// Wait for what a channel's owner shard answers, or the HTTP error for why there is
/// no answer (invalid channel, full inbox, no answer within 5 s).
pub(super) async fn owner_reply<T>(
    asked: Result<tokio::sync::oneshot::Receiver<T>, switchboard_engine::Error>,
) -> Result<T, Response> {
    let ticket = match asked {
        Ok(t) => t,
        Err(switchboard_engine::Error::InvalidChannel) => {
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
pub(super) struct ChannelQuery {
    channel: String,
}

/// `GET /api/receipts?channel=…`: who has received and read the channel up to where.
pub(super) async fn receipts(
    State(s): State<Arc<HttpState>>,
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
pub(super) struct PresenceQuery {
    channel: String,
    #[serde(default = "yes")]
    members: bool,
}

pub(super) fn yes() -> bool {
    true
}

/// `GET /api/presence?channel=…[&members=false]`: who is on a channel.
pub(super) async fn presence(
    State(s): State<Arc<HttpState>>,
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
pub(super) struct ScheduleBody<'a> {
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
pub(super) async fn schedule(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
        let now = crate::clock::now_ms();
        let due_ms = match (req.at, req.delay_ms) {
            (Some(at), None) => at,
            (None, Some(d)) => now.saturating_add(d),
            _ => return Err(bad("at", "give exactly one of 'at' and 'delay_ms'")),
        };
        valid_payloads(req.data, req.meta)?;
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
pub(super) struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/schedule[?all=true]`: pending scheduled messages (or the latest 1,000 of
/// every state).
pub(super) async fn list_scheduled(
    State(s): State<Arc<HttpState>>,
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
pub(super) async fn unschedule(
    State(s): State<Arc<HttpState>>,
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

/// `GET /api/calls`: every active call, its state and participants.
pub(super) async fn active_calls(State(s): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_key(&s, &headers) {
        return r.response();
    }
    Json(json!({"calls": s.calls.active().await})).into_response()
}

/// Query of `GET /api/calls/log`.
#[derive(Deserialize)]
pub(super) struct CallLogQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/calls/log[?user=U&limit=N]`: the call log, newest first.
pub(super) async fn call_log(
    State(s): State<Arc<HttpState>>,
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

/// A publication's `event`: 1 to 64 printable bytes, not a name the Socket.IO client
/// keeps for itself (`connect`, `disconnect`, …).
pub(super) fn check_event(event: Option<&str>) -> Result<Option<Arc<str>>, Response> {
    let Some(event) = event else {
        return Ok(None);
    };
    let reserved = switchboard_protocol::socketio::RESERVED_EVENTS.contains(&event);
    if event.is_empty() || event.len() > 64 || event.chars().any(char::is_control) || reserved {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            "event: 1 to 64 bytes without control characters, not a Socket.IO reserved name",
        ));
    }
    Ok(Some(Arc::from(event)))
}

pub(super) fn check_api_key(key: Option<&str>) -> Result<(), Response> {
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
