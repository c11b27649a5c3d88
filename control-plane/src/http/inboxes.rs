//! A user's inbox for backends (server API, `users` scope): its pending messages, its
//! devices' cursors and what each has not acknowledged, and clearing it — every
//! device's cursor moved to the latest message, so nothing is pending (audited as
//! `inbox.clear`).
//!
//! Owns these routes. Does not own the cursors (the inbox's owner shard keeps them,
//! `engine::marks`).

// The handlers' helpers return the HTTP error as `Err(Response)` to be sent as is; it is
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use super::errors::{error, invalid};
use super::requests::checked_query;
use super::state::HttpState;
use super::users::{actor, checked_user};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use switchboard_engine::marks::InboxState;

/// The routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route(
            "/api/users/{user}/inbox",
            get(user_inbox).delete(clear_inbox),
        )
        .route("/api/users/{user}/inbox/stats", get(inbox_stats))
}

#[derive(Deserialize)]
pub(super) struct InboxQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/users/{user}/inbox[?since=OFFSET&limit=N]`: the user's inbox messages after
/// `since` (a device's cursor: what it has not acknowledged), oldest first.
pub(super) async fn user_inbox(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
    query: Result<axum::extract::Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match checked_query(&s, &headers, query, "[?since=OFFSET&limit=N]") {
        Ok(q) => q,
        Err(r) => return r,
    };
    let Some(channel) = s.engine.inbox_channel(&path.0) else {
        return invalid("user", "inboxes are off or the user id is invalid");
    };
    let page = switchboard_protocol::history::Page {
        after: q.since,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
        ..Default::default()
    };
    super::server_api::history_of(&s, &channel, page)
        .await
        .unwrap_or_else(|r| r)
}

/// The `{user}` of the route (key checked) and its inbox from its owner shard
/// (`clear`: cursors moved first).
async fn state_of(
    s: &HttpState,
    headers: &HeaderMap,
    path: axum::extract::Path<String>,
    clear: bool,
) -> Result<(String, InboxState), Response> {
    let user = checked_user(s, headers, path)?;
    let rx = s.engine.inbox_state(&user, clear).map_err(|e| match e {
        switchboard_engine::Error::InvalidChannel => {
            invalid("user", "inboxes are off or the user id is invalid")
        }
        _ => super::errors::overloaded(),
    })?;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(state)) => Ok((user, state)),
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the inbox's shard did not answer",
        )),
    }
}

/// `GET /api/users/{user}/inbox/stats`: `{channel, epoch, offset, devices: [{device,
/// offset, epoch, pending}], cleared: 0}`.
pub(super) async fn inbox_stats(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
) -> Response {
    match state_of(&s, &headers, path, false).await {
        Ok((_, state)) => Json(state).into_response(),
        Err(r) => r,
    }
}

/// `DELETE /api/users/{user}/inbox`: every device's cursor to the latest message; the
/// stats as they were, and how many devices it moved. Audited (`inbox.clear`).
pub(super) async fn clear_inbox(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    path: axum::extract::Path<String>,
) -> Response {
    let (user, state) = match state_of(&s, &headers, path, true).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let pending: u64 = state.devices.iter().map(|d| d.pending).sum();
    let detail = json!({"channel": state.channel, "offset": state.offset,
                        "devices": state.cleared, "pending": pending});
    let _ = s.audit.record(
        &actor(&s, &headers),
        "inbox.clear",
        Some(&user),
        "ok",
        &detail,
    );
    Json(state).into_response()
}
