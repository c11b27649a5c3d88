//! The server API's notification routes: create (with coalescing keys), list, mark
//! read.
//!
//! Owns these routes and their validation. Does not own notifications (the
//! notification worker, `crate::notify`).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::error;
use super::requests::{checked_query, json_body};
use super::state::HttpState;
use crate::notify::{NewNotification, Recipients, Refusal as NotifyRefusal};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route(
            "/api/notifications",
            post(create_notification).get(list_notifications),
        )
        .route("/api/notifications/read", post(read_notifications))
}
/// Body of `POST /api/notifications`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NotificationBody {
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

pub(super) fn refusal(r: NotifyRefusal) -> Response {
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
pub(super) async fn create_notification(
    State(s): State<Arc<HttpState>>,
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
pub(super) struct NotificationsQuery {
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
pub(super) async fn list_notifications(
    State(s): State<Arc<HttpState>>,
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
pub(super) struct ReadBody {
    user: String,
    #[serde(default)]
    notification: Option<u64>,
    #[serde(default)]
    all: bool,
}

/// `POST /api/notifications/read`: mark one (or all) of a user's notifications read.
pub(super) async fn read_notifications(
    State(s): State<Arc<HttpState>>,
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
